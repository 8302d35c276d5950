"""/openapi.json describes every route the edge serves under /v1, and what those routes answer
matches the schemas it gives (the Responses API and Anthropic's Messages API included)."""
from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest
import requests
from aiohttp import web
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from edge import routes
from edge.state import CONFIG
from tests.world import World

DOC_URI = "urn:chatkore:openapi"
METHODS = ("get", "post", "put", "patch", "delete")


async def _nothing(request: web.Request) -> web.Response:
    return web.Response()


def served_routes(extra: list[tuple[str, str]] = ()) -> set[tuple[str, str]]:
    """(METHOD, path template) of every route edge/routes.py sets up under /v1 (and any extra)."""
    app = web.Application()
    app[CONFIG] = SimpleNamespace(telemetry=SimpleNamespace(metrics_port=0))  # type: ignore[misc]
    routes.setup(app)
    for method, path in extra:
        app.router.add_route(method, path, _nothing)
    out = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method != "HEAD" and (path == "/v1" or path.startswith("/v1/")):
            out.add((route.method, path))
    return out


def undescribed(document: dict[str, Any], served: set[tuple[str, str]]) -> list[str]:
    """Served routes the document lacks, or describes without an answer (or, for a POST, a body
    unless it says it takes none: `x-chatkore-no-body`)."""
    problems = []
    for method, path in sorted(served):
        operation = document["paths"].get(path, {}).get(method.lower())
        if operation is None:
            problems.append(f"{method} {path}: not in the document")
            continue
        ok = operation.get("responses", {}).get("200", {})
        if not ok.get("content"):
            problems.append(f"{method} {path}: no 200 answer with content")
        bodies = operation.get("requestBody", {}).get("content", {})
        if method == "POST" and not operation.get("x-chatkore-no-body") and not any(
                media.get("schema") for media in bodies.values()):
            problems.append(f"{method} {path}: no request body schema (JSON or multipart)")
        for name in re.findall(r"{(\w+)}", path):
            if not any(p.get("in") == "path" and p.get("name") == name for p in operation.get("parameters", ())):
                problems.append(f"{method} {path}: path parameter {name} not described")
    return problems


@pytest.fixture(scope="module")
def document(world: World) -> dict[str, Any]:
    resp = requests.get(world.url + "/openapi.json", timeout=30)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
    return resp.json()


def _validator(document: dict[str, Any], schema_ref: str) -> jsonschema.Draft202012Validator:
    registry = Registry().with_resource(DOC_URI, Resource.from_contents(document,
                                                                        default_specification=DRAFT202012))
    return jsonschema.Draft202012Validator({"$ref": f"{DOC_URI}#/components/schemas/{schema_ref}"},
                                           registry=registry)


def _answer_schema(document: dict[str, Any], method: str, path: str, status: str = "200") -> str:
    answer = document["paths"][path][method]["responses"][status]
    if "$ref" in answer:
        answer = document["components"]["responses"][answer["$ref"].rsplit("/", 1)[1]]
    return answer["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]


def test_every_v1_route_the_edge_serves_is_described(document: dict[str, Any]) -> None:
    served = served_routes()
    for route in [("POST", "/v1/responses"), ("GET", "/v1/responses/{id}"), ("DELETE", "/v1/responses/{id}"),
                  ("GET", "/v1/responses/{id}/input_items"), ("POST", "/v1/messages"),
                  ("POST", "/v1/messages/count_tokens"), ("POST", "/v1/chat/completions")]:
        assert route in served
    assert undescribed(document, served) == []
    # Nothing described under /v1 that the edge does not serve.
    described = {(m.upper(), p) for p, ops in document["paths"].items() if p.startswith("/v1/")
                 for m in ops if m in METHODS}
    assert described == served


def test_a_route_added_without_a_description_is_caught(document: dict[str, Any]) -> None:
    served = served_routes([("POST", "/v1/videos"), ("GET", "/v1/responses/{id}/cancel")])
    assert undescribed(document, served) == ["GET /v1/responses/{id}/cancel: not in the document",
                                             "POST /v1/videos: not in the document"]


def test_every_schema_is_valid_json_schema_and_every_reference_resolves(document: dict[str, Any]) -> None:
    for schema in document["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    for ref in refs:
        assert ref.startswith("#/components/"), ref
        _, _, kind, name = ref.split("/")
        assert name in document["components"][kind], ref


def test_what_the_responses_and_messages_routes_answer_matches_their_schemas(world: World,
                                                                              document: dict[str, Any]) -> None:
    t = world.tenant(credits=100)
    headers = {"Authorization": f"Bearer {t.key}"}
    model, _ = world.served_model(prompt=1.5, completion=2)
    created = requests.post(world.url + "/v1/responses", headers=headers, timeout=60,
                            json={"model": model, "input": "Say this is a test!", "instructions": "Be brief."})
    assert created.status_code == 200, created.text
    _validator(document, _answer_schema(document, "post", "/v1/responses")).validate(created.json())
    rid = created.json()["id"]
    got = requests.get(f"{world.url}/v1/responses/{rid}", headers=headers, timeout=30)
    _validator(document, _answer_schema(document, "get", "/v1/responses/{id}")).validate(got.json())
    items = requests.get(f"{world.url}/v1/responses/{rid}/input_items?order=asc&limit=5", headers=headers, timeout=30)
    _validator(document, _answer_schema(document, "get", "/v1/responses/{id}/input_items")).validate(items.json())
    assert items.json()["data"] and items.json()["has_more"] is False
    gone = requests.delete(f"{world.url}/v1/responses/{rid}", headers=headers, timeout=30)
    _validator(document, _answer_schema(document, "delete", "/v1/responses/{id}")).validate(gone.json())
    missing = requests.get(f"{world.url}/v1/responses/{rid}", headers=headers, timeout=30)
    assert missing.status_code == 404
    _validator(document, _answer_schema(document, "get", "/v1/responses/{id}", "404")).validate(missing.json())

    claude = world.model(prompt=1.5, completion=2, prefix="claude")
    world.channel([claude], type="anthropic")
    body = {"model": claude, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    anthropic = {"x-api-key": t.key, "anthropic-version": "2023-06-01"}
    message = requests.post(world.url + "/v1/messages", headers=anthropic, json=body, timeout=60)
    assert message.status_code == 200, message.text
    _validator(document, _answer_schema(document, "post", "/v1/messages")).validate(message.json())
    count = requests.post(world.url + "/v1/messages/count_tokens", headers=anthropic, timeout=30,
                          json={k: v for k, v in body.items() if k != "max_tokens"})
    _validator(document, _answer_schema(document, "post", "/v1/messages/count_tokens")).validate(count.json())
    refused = requests.post(world.url + "/v1/messages", headers=anthropic, json={**body, "max_tokens": 0}, timeout=30)
    assert refused.status_code == 400
    _validator(document, _answer_schema(document, "post", "/v1/messages", "400")).validate(refused.json())
    broke = world.tenant(credits=0)
    unpaid = requests.post(world.url + "/v1/messages", headers={**anthropic, "x-api-key": broke.key}, json=body,
                           timeout=30)
    assert unpaid.status_code == 402
    _validator(document, _answer_schema(document, "post", "/v1/messages", "402")).validate(unpaid.json())
    # A schema that says nothing would pass all of the above: the error shapes tell each other apart.
    with pytest.raises(jsonschema.ValidationError):
        _validator(document, "AnthropicError").validate(missing.json())
    with pytest.raises(jsonschema.ValidationError):
        _validator(document, "Response").validate(message.json())
