"""Fuzzing the whole API from its OpenAPI document (edge/openapi.json) with schemathesis.

Every operation gets schema-valid and schema-invalid requests, sent with a real API key
or the admin key to a stack of its own (the admin API is fuzzed too, so it may add users,
channels and prices there). Each answer must be no 5xx, documented, OpenAI-shaped when it
is an error, and in time; and a rejected request must leave every balance, hold and
ledger entry exactly as it was.
"""
from __future__ import annotations

import json
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, assume, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import ARTIFACTS
from tests.world import Tenant, World
from tools.stack import wait_until

DOCUMENT = Path(__file__).resolve().parents[2] / "edge" / "openapi.json"
SCHEMA = schemathesis.openapi.from_path(str(DOCUMENT))
# The document also describes the console's session API, the payment providers' callbacks and the
# pages (tests/test_openapi.py holds it to every route the edge registers); they are not fuzzed
# here: this fuzzer signs in with a key, never a session, so all but their public calls would end
# at 401 (test_accounts, test_payments and the web tests drive them).
UNFUZZED_TAGS = {"console", "payments", "pages"}
OPERATIONS = [op for op in (result.ok() for result in SCHEMA.get_all_operations())
              if not set(op.tags or ()) & UNFUZZED_TAGS]
EXAMPLES_PER_MODE = 50   # per operation, valid and invalid each: ~2,800 requests in all
SERVED = ["gpt-3.5-turbo", "gpt-3.5-turbo-instruct", "text-embedding-ada-002"]
# A request unanswered this long hangs. Generous: a valid call may ask for 20 choices of
# dozens of prompts, streamed, on a machine other test runs share.
HANG_S = 60
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@dataclass
class Target:
    world: World
    tenant: Tenant
    channel_id: int
    db: psycopg.Connection
    upstream_url: str
    calls: int = 0
    runs: int = 0
    statuses: Counter[str] = field(default_factory=Counter)  # "POST /v1/chat/completions 200" -> count

    def books(self) -> tuple[Any, ...]:
        """Everything a request could change about money: balances, holds, the ledger."""
        return (
            self.db.execute("SELECT coalesce(max(id), 0), count(*) FROM ledger").fetchone(),
            self.db.execute("SELECT count(*), coalesce(sum(balance), 0), coalesce(sum(held), 0) FROM users").fetchone(),
            self.db.execute("SELECT count(*), count(*) FILTER (WHERE state = 'held') FROM requests").fetchone(),
            self.db.execute("SELECT count(*) FROM topups").fetchone(),
            self.db.execute("SELECT count(*) FROM redeem_codes").fetchone(),
            self.db.execute("SELECT coalesce(sum(spent), 0), coalesce(sum(held), 0) FROM key_spend").fetchone(),
        )


@pytest.fixture(scope="module")
def target(make_stack, mock) -> Iterator[Target]:
    world = World(make_stack(name="fuzz", env={"CHATKORE_AUTH_FAILURES_PER_MIN": "0"}), mock)
    channel_id, tag = world.channel(SERVED, tag="fuzz")
    tenant = world.tenant(credits=1000)
    with psycopg.connect(world.stack.database_url, autocommit=True) as db:
        t = Target(world, tenant, channel_id, db, mock.base_url(tag))
        yield t
    report = world.verify()
    assert report["ok"] and report["open_holds"] == 0, report
    (ARTIFACTS / "fuzz-statuses.json").write_text(json.dumps(dict(sorted(t.statuses.items())), indent=1))
    if t.runs == len(RUNS):  # the whole run, not a -k selection: it must have been a real one
        assert t.calls >= 2000, f"only {t.calls} requests were generated"
        relayed = sum(n for k, n in t.statuses.items() if k.startswith("POST /v1/") and k.endswith(" 200"))
        assert relayed >= 50, f"only {relayed} generated calls reached the upstream and were billed"


def _aim(case: schemathesis.Case, t: Target) -> None:
    """Keep generated data inside this machine and the run meaningful."""
    body = case.body if isinstance(case.body, dict) else None
    if body is not None:
        url = body.get("base_url")
        if isinstance(url, str) and url.lower().startswith(("http://", "https://")):
            body["base_url"] = t.upstream_url  # a channel never points off this machine
        if body.get("type") in ("azure", "anthropic"):
            body["type"] = "openai"  # the scripted upstream speaks OpenAI's wire format
        model = body.get("model")
        if isinstance(model, str) and zlib.crc32(model.encode("utf-8", "replace")) % 2:
            body["model"] = SERVED[zlib.crc32(model.encode("utf-8", "replace")) % 3]  # half reach the upstream
    ids = {k: v for k, v in (case.path_parameters or {}).items() if k == "id"}
    # The run's own key and channel stay usable; every other id is fair game.
    assume(not (case.path.startswith("/admin/v1/keys/") and ids.get("id") == t.tenant.key_id))
    assume(not (case.path.startswith("/admin/v1/channels/") and ids.get("id") == t.channel_id))
    assume(not (case.path == "/admin/v1/users/{id}" and case.method.upper() == "PATCH"
                and ids.get("id") == t.tenant.user_id))


def _header(response: schemathesis.Response, name: str) -> str:
    values = response.headers.get(name.lower()) or [""]
    return values[0]


def _assert_error_shape(response: schemathesis.Response, path: str) -> None:
    assert _header(response, "x-request-id").startswith("req_"), response.headers
    assert _header(response, "content-type").startswith("application/json"), response.headers
    body = response.json()
    if path.startswith("/v1/messages") and response.status_code not in (405, 431):
        # Anthropic's Messages API answers in Anthropic's shape (405 and 431 come before its handler).
        assert set(body) == {"type", "error"} and body["type"] == "error", body
        assert set(body["error"]) == {"type", "message"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        return
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["error"]["code"] is None or isinstance(body["error"]["code"], str)


def _exercise(case: schemathesis.Case, t: Target) -> None:
    _aim(case, t)
    key = t.world.stack.admin_key if case.path.startswith("/admin/") else t.tenant.key
    # An earlier case's settlement follows its reply (issue 16): the books are compared once it landed.
    wait_until(lambda: t.books()[2][1] == 0, 30, "the earlier cases' holds to settle")
    before = t.books()
    response = case.call(base_url=t.world.url, headers={"Authorization": f"Bearer {key}"},
                         timeout=HANG_S)
    t.calls += 1
    t.statuses[f"{case.method.upper()} {case.path} {response.status_code}"] += 1
    case.validate_response(response, checks=CHECKS)
    if response.status_code >= 400:
        _assert_error_shape(response, case.path)
        after = t.books()
        assert after == before, f"a rejected request ({response.status_code}) changed the books: {before} -> {after}"


def _has_input(op: schemathesis.APIOperation) -> bool:
    return bool(len(op.path_parameters) or len(op.query) or len(op.headers) or len(op.body))


RUNS = [(op, GenerationMode.POSITIVE) for op in OPERATIONS] + [
    (op, GenerationMode.NEGATIVE) for op in OPERATIONS if _has_input(op)]  # invalid data needs some input


@pytest.mark.parametrize("operation, mode", RUNS, ids=[f"{m.value}-{op.label}" for op, m in RUNS])
def test_fuzz(target: Target, operation: schemathesis.APIOperation, mode: GenerationMode) -> None:
    strategy = operation.as_strategy(generation_mode=mode)

    @settings(max_examples=EXAMPLES_PER_MODE, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        _exercise(case, target)

    run()
    target.runs += 1


def test_served_document_is_the_one_fuzzed(target: Target) -> None:
    resp = requests.get(target.world.url + "/openapi.json", timeout=10)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
    assert resp.json() == json.loads(DOCUMENT.read_text())
    routes = {(m.upper(), p) for p, ops in resp.json()["paths"].items() for m in ops}
    assert ("POST", "/v1/chat/completions") in routes and ("GET", "/admin/v1/ledger/verify") in routes
