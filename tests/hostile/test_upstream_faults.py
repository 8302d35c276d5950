"""A misbehaving upstream: each fault gives the client a correct error or a correct partial
answer, the hold settles right (output delivered is paid for, nothing delivered costs
nothing), and no call, task, connection or hold is left behind."""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

import psycopg
import pytest
import requests

from tests import mock_upstream as up
from tests import openai_tokens
from tests.hostile.conftest import TIGHT_ENV
from tests.world import Tenant, World
from tools.stack import wait_until

MSG = [{"role": "user", "content": "Tell me something long enough to stream in pieces."}]
PROMPT_PRICE, COMPLETION_PRICE = 1.5, 2.0  # credits per 1,000 tokens (World.model's defaults)
MAX_STREAM_S = float(TIGHT_ENV["CHATKORE_MAX_STREAM_S"])


@dataclass
class Reply:
    status: int
    error: dict | None          # the error before the first byte, or the in-band one
    text: str                   # content delivered
    done: bool                  # the stream ended with data: [DONE]
    request_id: str


def _call(world: World, t: Tenant, model: str, *, stream: bool) -> Reply:
    resp = requests.post(world.url + "/v1/chat/completions", timeout=60, stream=stream,
                         headers={"Authorization": f"Bearer {t.key}"},
                         json={"model": model, "messages": MSG, "stream": stream})
    rid = resp.headers["x-request-id"]
    if resp.status_code != 200:
        body = resp.json()
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
        return Reply(resp.status_code, body["error"], "", False, rid)
    if not stream:
        return Reply(200, None, resp.json()["choices"][0]["message"]["content"], False, rid)
    assert resp.headers["content-type"].startswith("text/event-stream")
    text, error, done = "", None, False
    for line in resp.iter_lines():
        if not line.startswith(b"data: "):
            continue
        assert not done, "an event after [DONE]"
        payload = line[6:]
        if payload == b"[DONE]":
            done = True
            continue
        event = json.loads(payload)
        if "error" in event:
            assert set(event["error"]) == {"message", "type", "param", "code"}, event
            error = event["error"]
            continue
        assert error is None, "a chunk after the in-band error"
        for choice in event["choices"]:
            text += choice["delta"].get("content") or ""
    return Reply(200, error, text, done, rid)


def _settled(world: World, t: Tenant, reply: Reply) -> dict:
    """The call's usage row once its hold is closed; the balance moved by exactly its credits."""
    wait_until(lambda: world.held(t.user_id) == 0, 10, "the hold to close")
    rows = [r for r in world.usage(t.user_id) if r["request_id"] == reply.request_id]
    assert len(rows) == 1, world.usage(t.user_id)
    row = rows[0]
    assert world.balance(t.user_id) == 100 - Decimal(str(row["credits"]))
    return row


def _price(prompt_tokens: int, completion_tokens: int) -> Decimal:
    micro = -(-(prompt_tokens * int(PROMPT_PRICE * 1e6) + completion_tokens * int(COMPLETION_PRICE * 1e6)) // 1000)
    return Decimal(micro) / 1_000_000


def _costs_nothing(world: World, t: Tenant, reply: Reply, status: str) -> None:
    row = _settled(world, t, reply)
    assert (row["status"], row["credits"], row["completion_tokens"]) == (status, 0, 0), row


def _pays_for_what_was_delivered(world: World, t: Tenant, reply: Reply, model: str, status: str) -> None:
    row = _settled(world, t, reply)
    assert row["status"] == status, row
    assert reply.text, "nothing was delivered"
    assert row["completion_tokens"] == openai_tokens.text_tokens(reply.text, model), row
    assert row["prompt_tokens"] == openai_tokens.chat_prompt_tokens(MSG, model), row
    assert Decimal(str(row["credits"])) == _price(row["prompt_tokens"], row["completion_tokens"]) > 0


@pytest.fixture
def faulty(tight: World) -> Iterator[tuple[World, Tenant, str, str]]:
    """A tenant and a fresh model served by one scripted channel; afterwards the upstream
    connection must be gone and no call may still be in flight anywhere."""
    model, tag = tight.served_model(PROMPT_PRICE, COMPLETION_PRICE, settings={"timeout_s": 1})
    yield tight, tight.tenant(), model, tag
    wait_until(lambda: tight.mock.state(tag).in_flight == 0, 10, "the upstream connection to close")
    wait_until(lambda: _quiet(tight), 10, "no call in flight")


def _quiet(world: World) -> bool:
    stats = world.admin("GET", "/admin/v1/runtime")
    inference = stats["inference"]
    return (inference["relays_in_flight"], inference["channel_calls_in_flight"], inference["settlements_pending"],
            stats["edge"]["requests_in_flight"]) == (0, 0, 0, 0)


# --- before the first byte: a real HTTP status, and nothing to pay -----------------------------

@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("behavior, status, code, row_status", [
    (up.reset(), 502, "upstream_error", "upstream_error"),
    (up.raw(200, b'{"id": "x", "choices": [{"mess'), 502, "upstream_error", "upstream_error"),
    (up.raw(200, b"<html>502 Bad Gateway</html>", "text/html"), 502, "upstream_error", "upstream_error"),
    (up.raw(200, b'{"error": {"message": "overloaded", "type": "server_error"}}'), 502, "upstream_error",
     "upstream_error"),
    (up.fail(500, "boom"), 502, "upstream_error", "upstream_error"),
    (up.hang(3), 504, "upstream_timeout", "upstream_timeout"),  # the channel's timeout_s is 1
])
def test_fault_before_first_byte(faulty, behavior, status, code, row_status, stream) -> None:
    world, t, model, tag = faulty
    world.mock.script(tag, behavior)
    reply = _call(world, t, model, stream=stream)
    assert (reply.status, reply.error and reply.error["code"]) == (status, code), reply
    _costs_nothing(world, t, reply, row_status)


@pytest.mark.parametrize("action, status, code", [
    ("cut", 502, "upstream_error"),
    # Keep-alive comments and never a chunk: the channel's timeout still applies.
    ("hang", 504, "upstream_timeout"),
])
def test_stream_fails_before_its_first_chunk(faulty, action, status, code) -> None:
    world, t, model, tag = faulty
    world.mock.script(tag, up.stream_then(0, action))
    reply = _call(world, t, model, stream=True)
    assert (reply.status, reply.error["code"]) == (status, code)
    _costs_nothing(world, t, reply, code)


# --- after the first byte: an in-band error, [DONE], and the delivered part paid for -------------

@pytest.mark.parametrize("action, row_status", [
    ("cut", "upstream_error"),       # connection reset mid-stream
    ("garbage", "upstream_error"),   # malformed JSON in an event
    ("error", "upstream_error"),     # an error event in a 200 stream
    ("hang", "upstream_timeout"),    # keep-alive comments forever: cut at CHATKORE_MAX_STREAM_S
    ("endless", "upstream_timeout"),  # chunks forever: cut at CHATKORE_MAX_STREAM_S
])
def test_fault_mid_stream(faulty, action, row_status) -> None:
    world, t, model, tag = faulty
    world.mock.script(tag, up.stream_then(3, action))
    reply = _call(world, t, model, stream=True)
    assert reply.status == 200 and reply.done and reply.error is not None, reply
    assert reply.error["type"] == "server_error"
    assert reply.error["code"] == ("upstream_timeout" if row_status == "upstream_timeout" else "upstream_error")
    assert "scripted" not in reply.error["message"]  # the upstream's own words stay in our logs
    _pays_for_what_was_delivered(world, t, reply, model, row_status)
    if action in ("hang", "endless"):
        wait_until(lambda: world.mock.state(tag).disconnects >= 1, 5, "chatkore to hang up on the upstream")


def test_stream_that_ends_without_done_is_a_partial_answer(faulty) -> None:
    world, t, model, tag = faulty
    world.mock.script(tag, up.stream_then(3, "end"))
    reply = _call(world, t, model, stream=True)
    assert reply.status == 200 and reply.done and reply.error is None
    _pays_for_what_was_delivered(world, t, reply, model, "complete")


def test_slow_but_steady_stream_is_not_cut_early(faulty) -> None:
    """The stream limit bounds the whole stream, not a gap: a stream inside it completes."""
    world, t, model, tag = faulty
    # Each chunk after the first waits at a gate the test opens only once the client holds the
    # chunk before it: a stream paced by its reader, relayed piece by piece, never cut between.
    pace = world.mock.gate()
    world.mock.script(tag, up.ok(pieces=5, gate_each=pace))
    resp = requests.post(world.url + "/v1/chat/completions", timeout=60, stream=True,
                         headers={"Authorization": f"Bearer {t.key}"},
                         json={"model": model, "messages": MSG, "stream": True})
    assert resp.status_code == 200
    events = []
    for line in resp.iter_lines():
        if not line.startswith(b"data: "):
            continue
        events.append(line[6:])
        if events[-1] != b"[DONE]":
            assert pace.passed == len(events) - 1  # the next chunk was still held when this one arrived
            pace.open(1)
    assert events[-1] == b"[DONE]" and not [e for e in events if b'"error"' in e]
    text = "".join(c["delta"].get("content") or "" for e in events[:-1] for c in json.loads(e)["choices"])
    reply = Reply(200, None, text, True, resp.headers["x-request-id"])
    row = _settled(world, t, reply)
    assert row["status"] == "complete" and text == "This is a test! You said: " + MSG[0]["content"]
    assert row["prompt_tokens"] == openai_tokens.chat_prompt_tokens(MSG, model)
    assert row["completion_tokens"] == openai_tokens.text_tokens(text, model)
    assert Decimal(str(row["credits"])) == _price(row["prompt_tokens"], row["completion_tokens"])


# --- afterwards: nothing leaked ------------------------------------------------------------------

def test_no_task_connection_or_hold_leaks(tight: World) -> None:
    """Run every fault again, several times over, and compare the live counts with before."""
    t = tight.tenant(credits=1000)
    model, tag = tight.served_model(PROMPT_PRICE, COMPLETION_PRICE, settings={"timeout_s": 1})
    wait_until(lambda: _quiet(tight), 10, "a quiet stack")
    before = tight.admin("GET", "/admin/v1/runtime")
    connections_before = _database_connections(tight)
    faults = [(up.reset(), False), (up.raw(200, b"{"), False), (up.hang(3), True), (up.stream_then(2, "cut"), True),
              (up.stream_then(2, "garbage"), True), (up.stream_then(2, "endless"), True),
              (up.stream_then(2, "hang"), True), (up.reset(), True)]
    for _ in range(2):
        for fault, stream in faults:
            # A success after each fault keeps the channel from cooling down.
            tight.mock.script(tag, fault, up.ok())
            _call(tight, t, model, stream=stream)
            assert _call(tight, t, model, stream=stream).status == 200
    wait_until(lambda: tight.mock.state(tag).in_flight == 0, 10, "every upstream connection to close")
    wait_until(lambda: _quiet(tight), 10, "no call in flight")
    wait_until(lambda: tight.held(t.user_id) == 0, 10, "every hold to close")
    after = tight.admin("GET", "/admin/v1/runtime")
    # Tasks come and go with connections being torn down; a leak grows with the 32 calls.
    assert after["inference"]["tasks"] <= before["inference"]["tasks"] + 3, (before, after)
    assert after["edge"]["tasks"] <= before["edge"]["tasks"] + 3, (before, after)
    assert _database_connections(tight) <= connections_before + 2
    assert len(tight.usage(t.user_id)) == 32
    assert tight.verify()["ok"]


def _database_connections(world: World) -> int:
    with psycopg.connect(world.stack.database_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                           " AND pid <> pg_backend_pid()").fetchone()
    return int(row[0])
