"""The deployment as shipped, checked offline: every overlay renders with kustomize, every
manifest validates against the Kubernetes schemas, checkov finds nothing that is not justified
in the manifests, hadolint passes the Dockerfile, and the manifests say what operators rely on."""
from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement

from tools.stack import ROOT, SERVICES

BIN = Path(sys.executable).parent
CHECKOV = ROOT / ".venv" / "checkov" / "bin" / "checkov"
OVERLAYS = sorted(p.name for p in (ROOT / "deploy" / "k8s" / "overlays").iterdir() if p.is_dir())
# The oldest Kubernetes whose API has everything used here (the preStop `sleep` action is
# on by default from 1.30), and the newest the validator knows.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
GRPC = {"auth": 50051, "billing": 50052, "inference": 50053}
HEALTH_PORT = 50060  # plaintext, gRPC health only: the kubelet's probes have no certificate
# Who calls whom (peers.channel in the code): each call must be let through both ways.
CALLS = {("edge", "auth"), ("edge", "billing"), ("edge", "inference"), ("auth", "billing"), ("inference", "billing")}

# kubernetes-validate knows only Kubernetes' own kinds. The CloudNativePG Cluster is checked
# against the part of its CRD schema that the overlay uses (names and types as in
# postgresql.cnpg.io/v1); an unknown or misspelt field fails.
_QUANTITY = {"type": ["string", "integer"]}
_RESOURCES = {"type": "object", "additionalProperties": False, "properties": {
    "requests": {"type": "object", "additionalProperties": _QUANTITY},
    "limits": {"type": "object", "additionalProperties": _QUANTITY}}}
CNPG_CLUSTER = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "postgresql.cnpg.io/v1"}, "kind": {"const": "Cluster"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {"type": "object", "required": ["instances", "storage"], "additionalProperties": False, "properties": {
            "instances": {"type": "integer", "minimum": 1},
            "imageName": {"type": "string"},
            "primaryUpdateStrategy": {"enum": ["unsupervised", "supervised"]},
            "enableSuperuserAccess": {"type": "boolean"},
            "bootstrap": {"type": "object", "additionalProperties": False, "properties": {
                "initdb": {"type": "object", "additionalProperties": False, "properties": {
                    "database": {"type": "string"}, "owner": {"type": "string"}}}}},
            "postgresql": {"type": "object", "additionalProperties": False, "properties": {
                "parameters": {"type": "object", "additionalProperties": {"type": "string"}}}},
            "storage": {"type": "object", "additionalProperties": False, "required": ["size"], "properties": {
                "size": {"type": "string"}, "storageClass": {"type": "string"}}},
            "resources": _RESOURCES,
        }},
    },
}

# cert-manager's Issuer and Certificate, the fields the base uses (names and types as in
# cert-manager.io/v1); an unknown or misspelt field fails.
_REF = {"type": "object", "additionalProperties": False, "required": ["name", "kind"],
        "properties": {"name": {"type": "string"}, "kind": {"const": "Issuer"}}}
CERT_MANAGER = {
    "Issuer": {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "properties": {
        "spec": {"type": "object", "additionalProperties": False, "minProperties": 1, "maxProperties": 1,
                 "properties": {"selfSigned": {"type": "object", "additionalProperties": False},
                                "ca": {"type": "object", "additionalProperties": False, "required": ["secretName"],
                                       "properties": {"secretName": {"type": "string"}}}}}}},
    "Certificate": {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "properties": {
        "spec": {"type": "object", "additionalProperties": False, "required": ["secretName", "issuerRef", "commonName"],
                 "properties": {
                     "secretName": {"type": "string"}, "commonName": {"type": "string"}, "isCA": {"type": "boolean"},
                     "dnsNames": {"type": "array", "items": {"type": "string"}},
                     "usages": {"type": "array", "items": {"enum": ["server auth", "client auth", "digital signature",
                                                                    "key encipherment", "cert sign"]}},
                     "duration": {"type": "string", "pattern": "^[0-9]+h$"},
                     "renewBefore": {"type": "string", "pattern": "^[0-9]+h$"},
                     "privateKey": {"type": "object", "additionalProperties": False, "properties": {
                         "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]}, "size": {"type": "integer"},
                         "rotationPolicy": {"enum": ["Never", "Always"]}}},
                     "issuerRef": _REF}}}},
}


@cache
def rendered(overlay: str) -> tuple[str, list[dict[str, Any]]]:
    out = subprocess.run([str(BIN / "kubectl"), "kustomize", str(ROOT / "deploy" / "k8s" / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout, [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def _docs(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in rendered(overlay)[1] if d["kind"] == kind}


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["spec"]["template"]["spec"]["containers"]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in container.get("env", [])}


def test_there_is_a_managed_database_overlay_and_a_cloudnativepg_one() -> None:
    assert {"production", "cnpg"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_manifest_validates_offline(overlay: str) -> None:
    docs = rendered(overlay)[1]
    assert len(docs) > 20
    for doc in docs:
        if doc["apiVersion"].startswith("postgresql.cnpg.io/"):
            jsonschema.validate(doc, CNPG_CLUSTER)
            continue
        if doc["apiVersion"] == "cert-manager.io/v1":
            jsonschema.validate(doc, CERT_MANAGER[doc["kind"]])
            assert doc["metadata"].get("namespace") == "chatkore", doc["metadata"]
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)  # raises on any error or unknown field
        assert doc["metadata"].get("namespace") == "chatkore" or doc["kind"] == "Namespace", doc["metadata"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_process_has_its_deployment_probes_and_limits(overlay: str) -> None:
    deployments, services = _docs(overlay, "Deployment"), _docs(overlay, "Service")
    assert set(deployments) == {"auth", "billing", "inference", "edge"}
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"] == {
            "type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        [container] = pod["containers"]
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
        assert security["capabilities"]["drop"] == ["ALL"]
        assert set(container["resources"]) == {"requests", "limits"}
        assert container["lifecycle"]["preStop"]["sleep"]["seconds"] >= 1
        assert container["image"].startswith("ghcr.io/chatkore/") and ":" in container["image"]
        if name == "edge":
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert services[name]["spec"].get("clusterIP") != "None"
        else:
            port = GRPC[name]
            assert container["readinessProbe"]["grpc"] == {"port": HEALTH_PORT}
            assert container["livenessProbe"]["grpc"] == {"port": HEALTH_PORT, "service": "liveness"}
            # Headless, so that dns:///name:port resolves to every replica.
            assert services[name]["spec"]["clusterIP"] == "None"
            assert {p["port"] for p in services[name]["spec"]["ports"]} == {port, 9464}
        grace = pod["terminationGracePeriodSeconds"]
        config = _docs(overlay, "ConfigMap")["chatkore-config"]["data"]
        assert grace > float(config["CHATKORE_GRACE_S"]) + container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert config["CHATKORE_INFERENCE_ADDR"] == "dns:///inference:50053"
    assert config["CHATKORE_HEALTH_LISTEN"] == f"[::]:{HEALTH_PORT}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_process_mounts_its_own_certificate_from_chatkore_ca(overlay: str) -> None:
    """Mutual TLS: a Certificate per process, named for it, from chatkore's own CA Issuer; each
    Deployment mounts its own Secret (and no other) where CHATKORE_GRPC_TLS_DIR points."""
    certificates = {d["spec"]["secretName"]: d for d in _docs(overlay, "Certificate").values()}
    issuers = _docs(overlay, "Issuer")
    config = _docs(overlay, "ConfigMap")["chatkore-config"]["data"]
    for name, deployment in _docs(overlay, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        secrets = [v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v]
        assert secrets == [f"chatkore-{name}-tls"], name
        certificate = certificates[f"chatkore-{name}-tls"]["spec"]
        assert certificate["commonName"] == name and {"server auth", "client auth"} <= set(certificate["usages"])
        assert issuers[certificate["issuerRef"]["name"]]["spec"] == {"ca": {"secretName": "chatkore-ca"}}
        [mount] = _containers(deployment)[0]["volumeMounts"]
        assert mount["mountPath"] == config["CHATKORE_GRPC_TLS_DIR"] and mount["readOnly"]
        assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    assert certificates["chatkore-ca"]["spec"]["isCA"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_referenced_never_written(overlay: str) -> None:
    text, docs = rendered(overlay)
    assert not [d for d in docs if d["kind"] == "Secret"]
    deployments = _docs(overlay, "Deployment")
    database = {"name": "chatkore-pg-app", "key": "uri"} if overlay == "cnpg" else {
        "name": "chatkore-secrets", "key": "database-url"}
    for name in ("auth", "billing", "inference"):
        assert _env(_containers(deployments[name])[0])["DATABASE_URL"] == database
    assert _env(_containers(_docs(overlay, "Job")["chatkore-migrate"])[0])["DATABASE_URL"] == database
    assert _env(_containers(deployments["auth"])[0])["CHATKORE_ADMIN_KEY"] == {
        "name": "chatkore-secrets", "key": "admin-key"}
    assert _env(_containers(deployments["inference"])[0])["CHATKORE_SECRET_KEY"] == {
        "name": "chatkore-secrets", "key": "secret-key"}
    assert "DATABASE_URL" not in _env(_containers(deployments["edge"])[0])
    if overlay == "production":  # rate limits shared by every edge replica, through a managed Redis
        assert _env(_containers(deployments["edge"])[0])["REDIS_URL"] == {"name": "chatkore-secrets",
                                                                            "key": "redis-url"}
        policies = _docs(overlay, "NetworkPolicy")
        assert any(_selects(p, "edge") and 6379 in {port["port"] for port in rule["ports"]}
                   for p in policies.values() for rule in p["spec"].get("egress", []))


PAYMENT_KEYS = {"CHATKORE_ALIPAY_APP_ID": "alipay-app-id", "CHATKORE_ALIPAY_PRIVATE_KEY": "alipay-private-key",
                "CHATKORE_ALIPAY_PUBLIC_KEY": "alipay-public-key", "CHATKORE_STRIPE_SECRET_KEY": "stripe-secret-key",
                "CHATKORE_STRIPE_WEBHOOK_SECRET": "stripe-webhook-secret"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_billing_reads_the_payment_keys_from_their_secret_and_reaches_the_providers(overlay: str) -> None:
    """Billing alone verifies notifications and calls Alipay and Stripe: it reads their keys
    from the optional Secret chatkore-payments (documented by its example) and may open HTTPS
    connections out; no other process sees the keys."""
    deployments = _docs(overlay, "Deployment")
    billing = _env(_containers(deployments["billing"])[0])
    for name, key in PAYMENT_KEYS.items():
        assert billing[name] == {"name": "chatkore-payments", "key": key, "optional": True}, name
    for other in ("auth", "inference", "edge"):
        assert not set(PAYMENT_KEYS) & set(_env(_containers(deployments[other])[0])), other
    assert _docs(overlay, "ConfigMap")["chatkore-config"]["data"]["CHATKORE_PUBLIC_URL"].startswith("https://")
    policies = _docs(overlay, "NetworkPolicy")
    assert any(_selects(p, "billing") and "Egress" in p["spec"]["policyTypes"]
               and {"0.0.0.0/0", "::/0"} <= {peer["ipBlock"]["cidr"] for peer in rule["to"] if "ipBlock" in peer}
               and 443 in {port["port"] for port in rule["ports"]}
               for p in policies.values() for rule in p["spec"].get("egress", []))
    example = yaml.safe_load((ROOT / "deploy" / "k8s" / "payments-secret.example.yaml").read_text())
    assert example["kind"] == "Secret" and example["metadata"]["name"] == "chatkore-payments"
    assert set(example["stringData"]) == set(PAYMENT_KEYS.values())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scaling_disruption_and_the_public_entry(overlay: str) -> None:
    hpas, pdbs = _docs(overlay, "HorizontalPodAutoscaler"), _docs(overlay, "PodDisruptionBudget")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == {"edge", "inference"}
    assert all(h["spec"]["minReplicas"] >= 2 for h in hpas.values())
    assert {p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] for p in pdbs.values()} == {
        "edge", "inference"}
    [ingress] = _docs(overlay, "Ingress").values()
    backends = {p["backend"]["service"]["name"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]}
    assert backends == {"edge"}
    job = _docs(overlay, "Job")["chatkore-migrate"]
    assert _containers(job)[0]["image"].startswith("ghcr.io/chatkore/migrate:")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_keep_all_but_the_edge_inside_and_the_database_for_the_services(overlay: str) -> None:
    policies = _docs(overlay, "NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"} and "ingress" not in deny and "egress" not in deny
    assert set(deny["podSelector"]["matchExpressions"][0]["values"]) == {"auth", "billing", "inference", "edge",
                                                                        "migrate"}
    # Ingress from another namespace: the ingress controller to the edge's port, Prometheus to
    # metrics ports, the operator to PostgreSQL. Nothing else.
    for name, policy in policies.items():
        for rule in policy["spec"].get("ingress", []):
            namespaces = {peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                          for peer in rule["from"] if "namespaceSelector" in peer}
            ports = {p["port"] for p in rule["ports"]}
            if "ingress-nginx" in namespaces:
                assert name == "edge" and ports == {8080}
            if "monitoring" in namespaces:
                assert ports <= {9464, 9187}
            assert namespaces <= {"ingress-nginx", "monitoring", "cnpg-system"}
    # Only database clients may open connections to 5432, and the edge is not one of them.
    to_database = [p for p in policies.values() for rule in p["spec"].get("egress", [])
                   if any(port["port"] == 5432 for port in rule["ports"])]
    assert [p["metadata"]["name"] for p in to_database] == ["database-egress"]
    assert to_database[0]["spec"]["podSelector"] == {"matchLabels": {"chatkore.io/database-client": "true"}}
    for src, dst in CALLS:
        assert _lets_through(policies, src, dst, GRPC[dst]), (src, dst)
    deployments = _docs(overlay, "Deployment")
    clients = {n for n, d in deployments.items()
               if d["spec"]["template"]["metadata"]["labels"].get("chatkore.io/database-client") == "true"}
    assert clients == {"auth", "billing", "inference"}


def _selects(policy: dict[str, Any], name: str) -> bool:
    return policy["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") == name


def _lets_through(policies: dict[str, dict[str, Any]], src: str, dst: str, port: int) -> bool:
    def names(peers: list[dict[str, Any]]) -> set[str]:
        return {p["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") for p in peers
                if "podSelector" in p and "namespaceSelector" not in p}

    inbound = any(src in names(rule["from"]) and port in {p["port"] for p in rule["ports"]}
                  for p in policies.values() if _selects(p, dst) for rule in p["spec"].get("ingress", []))
    outbound = any(dst in names(rule["to"]) and port in {p["port"] for p in rule["ports"]}
                   for p in policies.values() if _selects(p, src) for rule in p["spec"].get("egress", []))
    return inbound and outbound


def test_every_setting_in_the_config_map_is_one_chatkore_reads() -> None:
    code = "\n".join(p.read_text() for d in ("services", "edge") for p in (ROOT / d).rglob("*.py"))
    for overlay in OVERLAYS:
        for key in _docs(overlay, "ConfigMap")["chatkore-config"]["data"]:
            assert f'"{key}"' in code or '"CHATKORE_{' in code and key.endswith("_ADDR"), key


def test_checkov_finds_nothing_unjustified(tmp_path: Path) -> None:
    assert CHECKOV.exists(), "checkov's venv is missing: run `make test` (it installs requirements-checkov.txt)"
    files = []
    for overlay in OVERLAYS:
        path = tmp_path / f"{overlay}.yaml"
        path.write_text(rendered(overlay)[0])
        files += ["-f", str(path)]
    out = subprocess.run([str(CHECKOV), *files, "-f", str(ROOT / "Dockerfile"), "--framework", "kubernetes",
                          "dockerfile", "--compact", "--quiet", "--skip-download"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    scanned = re.findall(r"Passed checks: (\d+), Failed checks: (\d+), Skipped checks: (\d+)", out.stdout)
    assert len(scanned) == 2 and all(int(passed) > 50 and failed == "0" for passed, failed, _ in scanned), out.stdout
    # Every skip says why.
    skips = [v for overlay in OVERLAYS for d in rendered(overlay)[1]
             for k, v in (d["metadata"].get("annotations") or {}).items() if k.startswith("checkov.io/skip")]
    skips += re.findall(r"checkov:skip=(.*)", (ROOT / "Dockerfile").read_text())
    assert skips and all(re.fullmatch(r"CKV2?_\w+[=:] ?\S.{30,}", s) for s in skips), skips


def test_hadolint_passes_the_dockerfile() -> None:
    out = subprocess.run([str(BIN / "hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_dockerfile_has_a_target_per_process_that_the_manifests_run() -> None:
    text = (ROOT / "Dockerfile").read_text()
    targets = dict(re.findall(r'^FROM runtime AS (\w+)\n(?:.*\n)*?CMD \["python", "-m", "([\w.]+)"\]', text, re.M))
    assert targets == {**{name: SERVICES[name] for name in ("auth", "billing", "inference", "edge")},
                       "migrate": "services.migrate"}
    assert re.search(r"^USER 10001:10001$", text, re.M)
    images = {c["image"].split("/")[-1].split(":")[0] for overlay in OVERLAYS for d in rendered(overlay)[1]
              if d["kind"] in ("Deployment", "Job") for c in _containers(d)}
    assert images == set(targets)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _closure(requirements: Path) -> set[str]:
    """The distributions requirements.txt installs: its pins and everything they require."""
    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
    todo = [norm(re.split(r"[\[=<>;\s]", line)[0]) for line in requirements.read_text().splitlines()
            if line.strip() and not line.startswith(("#", "-"))]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # a dependency of another platform
        for req in map(Requirement, requires):
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(norm(req.name))
    return seen


def test_the_image_installs_everything_the_processes_import() -> None:
    """The image has requirements.txt only (no pgserver, no test tools): the code it runs must not
    import anything else, nor the demo upstream, which the image leaves out."""
    installed = _closure(ROOT / "requirements.txt")
    assert "pgserver" not in installed and "pytest" not in installed
    distributions = importlib.metadata.packages_distributions()
    for directory in ("services", "edge"):
        for path in (ROOT / directory).rglob("*.py"):
            if "demo" in path.parts:
                continue
            assert "services.demo" not in path.read_text(), path
            for name in _imports(path) - set(sys.stdlib_module_names) - {"services", "edge", "chatkore"}:
                owners = {re.sub(r"[-_.]+", "-", d).lower() for d in distributions.get(name, [])}
                assert owners & installed, f"{path.relative_to(ROOT)} imports {name}, which the image does not install"
