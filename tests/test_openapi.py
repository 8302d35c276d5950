"""/openapi.json describes every route the edge registers (the OpenAI and Anthropic API, the admin
and operator API, the console's session API, the payment providers' callbacks, the pages and the
operations routes), and nothing it does not; it is a valid OpenAPI 3.1 document (the official
meta-schema, as schemathesis bundles it); and what those routes answer matches the schemas it
gives (the Responses API, Anthropic's Messages API and the console's usage, notice and errors)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest
import requests
from aiohttp import web
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from schemathesis.specs.openapi.definitions import OPENAPI_31

from edge import routes, usage_api
from edge.state import CONFIG
from tests.console import ConsoleUser
from tests.world import World
from tools.stack import wait_until

DOC_URI = "urn:chatkore:openapi"
METHODS = ("get", "post", "put", "patch", "delete")


async def _nothing(request: web.Request) -> web.Response:
    return web.Response()


def served_routes(extra: list[tuple[str, str]] = ()) -> set[tuple[str, str]]:
    """(METHOD, path template) of every route edge/routes.py sets up, the pages' included (and any
    extra), as the edge's router holds them. /metrics is there too: it is served on the edge's own
    port unless CHATKORE_METRICS_PORT moves it. Every route, not only /v1's: a filter here once
    hid the whole console API, the operators' notice and orders, and the providers' callbacks."""
    app = web.Application()
    app[CONFIG] = SimpleNamespace(telemetry=SimpleNamespace(metrics_port=0))  # type: ignore[misc]
    routes.setup(app)
    for method, path in extra:
        app.router.add_route(method, path, _nothing)
    out = set()
    for route in app.router.routes():
        if route.method != "HEAD":  # aiohttp adds one to every GET
            assert route.resource is not None
            out.add((route.method, route.resource.canonical))
    return out


def described_routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m.upper(), p) for p, ops in document["paths"].items() for m in ops if m in METHODS}


def undescribed(document: dict[str, Any], served: set[tuple[str, str]]) -> list[str]:
    """Served routes the document lacks, or describes without a successful answer (with content,
    unless it is a 204 or a redirect), without a body for a POST, PUT or PATCH (unless it says
    it takes none: `x-chatkore-no-body`), without their path parameters, or, outside /v1,
    without saying how they are signed in (the document's default is an API key)."""
    problems = []
    for method, path in sorted(served):
        operation = document["paths"].get(path, {}).get(method.lower())
        if operation is None:
            problems.append(f"{method} {path}: not in the document")
            continue
        answers = {status: answer for status, answer in operation.get("responses", {}).items()
                   if status[0] in "23"}
        if not answers:
            problems.append(f"{method} {path}: no successful answer")
        for status, answer in sorted(answers.items()):
            if status[0] == "2" and status != "204" and not any(
                    media.get("schema") for media in answer.get("content", {}).values()):
                problems.append(f"{method} {path}: no content for its {status} answer")
        bodies = operation.get("requestBody", {}).get("content", {})
        if method in ("POST", "PUT", "PATCH") and not operation.get("x-chatkore-no-body") and not any(
                media.get("schema") for media in bodies.values()):
            problems.append(f"{method} {path}: no request body schema (JSON, form or multipart)")
        for name in re.findall(r"{(\w+)}", path):
            if not any(p.get("in") == "path" and p.get("name") == name for p in operation.get("parameters", ())):
                problems.append(f"{method} {path}: path parameter {name} not described")
        if not path.startswith("/v1/") and "security" not in operation:
            problems.append(f"{method} {path}: no security of its own (the default is an API key)")
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


def test_every_route_the_edge_registers_is_described_and_nothing_else(document: dict[str, Any]) -> None:
    served = served_routes()
    for route in [("POST", "/v1/responses"), ("GET", "/v1/responses/{id}"), ("DELETE", "/v1/responses/{id}"),
                  ("GET", "/v1/responses/{id}/input_items"), ("POST", "/v1/messages"),
                  ("POST", "/v1/messages/count_tokens"), ("POST", "/v1/chat/completions"),
                  ("GET", "/api/usage"), ("GET", "/api/notice"), ("PUT", "/admin/v1/notice"),
                  ("POST", "/payments/stripe/webhook"), ("GET", "/static/{name}"), ("GET", "/openapi.json")]:
        assert route in served
    assert undescribed(document, served) == []
    assert sorted(described_routes(document) - served) == []  # nothing described that is not served


def test_a_route_added_without_a_description_is_caught(document: dict[str, Any]) -> None:
    served = served_routes([("POST", "/v1/videos"), ("GET", "/v1/responses/{id}/cancel"),
                            ("GET", "/api/usage/{id}"), ("PUT", "/admin/v1/notice/{id}"), ("GET", "/robots.txt")])
    assert undescribed(document, served) == [
        "GET /api/usage/{id}: not in the document",
        "GET /robots.txt: not in the document",
        "GET /v1/responses/{id}/cancel: not in the document",
        "POST /v1/videos: not in the document",
        "PUT /admin/v1/notice/{id}: not in the document",
    ]
    # And one described that nothing serves.
    usage = document["paths"]["/api/usage"]
    extra = {**document, "paths": {**document["paths"], "/api/usage.csv": usage}}
    assert described_routes(extra) - served_routes() == {("GET", "/api/usage.csv")}
    # An operation described without what the check needs is caught too.
    bare = {"paths": {"/api/notice": {"get": {"responses": {"200": {"description": "OK"}}}},
                      "/api/redeem": {"post": {"responses": {"204": {"description": "done"}}, "security": []}}}}
    assert undescribed(bare, {("GET", "/api/notice"), ("POST", "/api/redeem")}) == [
        "GET /api/notice: no content for its 200 answer",
        "GET /api/notice: no security of its own (the default is an API key)",
        "POST /api/redeem: no request body schema (JSON, form or multipart)",
    ]


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    """Against the official OpenAPI 3.1 meta-schema (schemathesis carries it): a misspelt
    keyword, a parameter without `in`, an answer without a description all fail here."""
    assert document["openapi"].startswith("3.1.")
    validator = jsonschema.Draft202012Validator(OPENAPI_31)
    assert [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(document)] == []
    broken = json.loads(json.dumps(document))
    broken["paths"]["/api/notice"]["get"]["parameters"] = [{"name": "x", "schema": {"type": "string"}}]
    assert not validator.is_valid(broken)
    ids = [op.get("operationId") for ops in document["paths"].values() for op in ops.values() if isinstance(op, dict)]
    assert len([i for i in ids if i]) == len({i for i in ids if i})


def _query_names(source: str) -> set[str]:
    """The query parameters a module's code reads by name."""
    reader = r"""(?:\bq\.get|query\.get|query_int\(request,|_time\(request,)\(?\s*["'](\w+)["']"""
    return set(re.findall(reader, source))


def test_the_usage_lists_document_every_filter_the_code_reads(document: dict[str, Any]) -> None:
    read = _query_names(Path(usage_api.__file__).read_text())
    assert {"model", "key_id", "status", "since", "until", "request_id", "cursor", "limit", "format"} <= read
    for path, own in (("/api/usage", set()), ("/admin/v1/usage", {"user_id"})):
        operation = document["paths"][path]["get"]
        documented = {p["name"] for p in operation["parameters"] if p["in"] == "query"}
        assert documented == read | own, path
        answer = operation["responses"]["200"]["content"]
        assert set(answer) == {"application/json", "text/csv"}, path  # format=csv: the CSV export


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


def test_what_the_console_and_notice_routes_answer_matches_their_schemas(world: World,
                                                                          document: dict[str, Any]) -> None:
    user = ConsoleUser(world.url).register()
    model, _ = world.served_model(prompt=1.5, completion=2)
    world.admin("POST", f"/admin/v1/users/{user.user_id}/topups", {"credits": 10})
    called = requests.post(world.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {user.first_key}"},
                           json={"model": model, "messages": [{"role": "user", "content": "hi"}]}, timeout=60)
    assert called.status_code == 200, called.text
    me = user.call("GET", "/api/me")
    _validator(document, "Me").validate(me.json())
    rows = wait_until(lambda: user.call("GET", f"/api/usage?model={model}&limit=5").json()["data"], 30,
                      "the call's usage row")
    page = user.call("GET", f"/api/usage?model={model}&limit=5&request_id={rows[0]['request_id']}").json()
    _validator(document, _answer_schema(document, "get", "/api/usage")).validate(page)
    assert [r["request_id"] for r in page["data"]] == [rows[0]["request_id"]]
    exported = user.call("GET", f"/api/usage?model={model}&format=csv")
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    header = exported.text.split("\r\n", 1)[0].split(",")
    assert header == list(document["components"]["schemas"]["UserUsageRow"]["properties"])
    refused = user.call("GET", "/api/usage?status=NOT-A-STATUS")
    assert refused.status_code == 400
    _validator(document, _answer_schema(document, "get", "/api/usage", "400")).validate(refused.json())
    anonymous = requests.get(world.url + "/api/usage", timeout=30)
    assert anonymous.status_code == 401
    _validator(document, _answer_schema(document, "get", "/api/usage", "401")).validate(anonymous.json())

    try:
        saved = world.admin("PUT", "/admin/v1/notice", {"announcement": "Maintenance at 02:00", "contact": "ops@x"})
        _validator(document, "Notice").validate(saved)
        notice = requests.get(world.url + "/api/notice", timeout=30)
        _validator(document, _answer_schema(document, "get", "/api/notice")).validate(notice.json())
        assert notice.json()["announcement"] == "Maintenance at 02:00"
    finally:  # the stack is shared: take it down again
        world.admin("PUT", "/admin/v1/notice", {"announcement": "", "contact": ""})
    with pytest.raises(jsonschema.ValidationError):
        _validator(document, "Notice").validate(me.json())
