"""Responses with `background: true` (queued, finished server-side, billed the same) and their cancel."""
from __future__ import annotations

import asyncio
import json
import secrets
import signal
from decimal import Decimal
from typing import Any

import openai
import psycopg
import pytest
import requests
from aiohttp import web

from chatkore.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from tests import mock_upstream as up
from tests import openai_tokens
from tests.test_responses_api import _upstream_usage
from tests.world import Tenant, World
from tools.stack import wait_until

KINDS = ["native", "chat"]


def _served(world: World, kind: str) -> tuple[str, str]:
    if kind == "native":
        return world.served_model(prompt=1.5, completion=2, settings={"responses_api": "native"})
    return world.served_model(prompt=1.5, completion=2)


def _charge(prompt_tokens: int, completion_tokens: int) -> Decimal:
    micro = (prompt_tokens * Decimal("1.5") + completion_tokens * Decimal(2)) * 1000
    return Decimal(int(-(-micro // 1))) / 1_000_000


def _until_disconnected() -> up.Behavior:
    """Take the request and answer nothing until chatkore hangs up (counted as a disconnect)."""

    async def behave(request: web.Request, body: dict[str, Any], path: str) -> web.StreamResponse:
        state = request[up.STATE]
        while request.transport is not None and not request.transport.is_closing():
            await asyncio.sleep(0.02)
        state.disconnects += 1
        return web.Response(status=499)

    return behave


def _settled(world: World, t: Tenant) -> dict[str, Any]:
    rows = wait_until(lambda: world.usage(t.user_id), 20, "the background response's usage row")
    assert len(rows) == 1, rows
    return rows[0]


@pytest.mark.parametrize("kind", KINDS)
def test_a_background_response_is_queued_then_completes_and_is_billed_the_same(world: World, kind: str) -> None:
    model, tag = _served(world, kind)
    t = world.tenant(credits=100)
    queued = t.client.responses.create(model=model, input="Say this is a test!", background=True)
    assert queued.status in ("queued", "in_progress") and queued.background is True
    assert queued.id.startswith("resp_") and queued.model == model and queued.output == []
    done = wait_until(lambda: (r := t.client.responses.retrieve(queued.id)).status == "completed" and r, 30,
                      "the background response to complete")
    assert done.background is True and done.id == queued.id
    assert "This is a test! You said: Say this is a test!" in done.output_text
    assert done.usage is not None
    assert (done.usage.input_tokens, done.usage.output_tokens) == _upstream_usage(
        world, tag, kind, model, "This is a test! You said: Say this is a test!")
    sent = world.mock.received(tag)
    assert len(sent) == 1 and "background" not in sent[0].body  # the upstream answered a plain call
    row = _settled(world, t)
    assert row["status"] == "complete"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (done.usage.input_tokens, done.usage.output_tokens)
    expected = _charge(done.usage.input_tokens, done.usage.output_tokens)
    assert Decimal(str(row["credits"])) == expected
    wait_until(lambda: world.held(t.user_id) == 0, 10, "the hold to close")
    assert world.balance(t.user_id) == 100 - expected
    # It continues a conversation like any stored response; cancelling it now changes nothing.
    follow = t.client.responses.create(model=model, input="And again", previous_response_id=done.id)
    assert follow.status == "completed"
    assert t.client.responses.cancel(done.id).status == "completed"
    assert world.verify()["ok"]


def test_cancel_stops_a_running_background_response_and_it_pays_the_prompt(world: World) -> None:
    model, tag = _served(world, "chat")
    world.mock.script(tag, _until_disconnected())
    t = world.tenant(credits=100)
    queued = t.client.responses.create(model=model, input="Think about this for a long while.", background=True)
    wait_until(lambda: world.mock.received(tag), 20, "the request to reach the upstream")
    assert t.client.responses.retrieve(queued.id).status == "in_progress"
    assert world.held(t.user_id) > 0
    cancelled = t.client.responses.cancel(queued.id)
    assert cancelled.status == "cancelled" and cancelled.id == queued.id
    wait_until(lambda: world.mock.state(tag).disconnects == 1, 20, "the upstream call to be dropped")
    row = _settled(world, t)
    said = [{"role": "user", "content": "Think about this for a long while."}]
    assert world.mock.received(tag)[-1].body["messages"] == said
    assert row["status"] == "client_gone" and row["completion_tokens"] == 0
    assert row["prompt_tokens"] == openai_tokens.chat_prompt_tokens(said, model)  # counted by chatkore
    assert Decimal(str(row["credits"])) == _charge(row["prompt_tokens"], 0)
    wait_until(lambda: world.held(t.user_id) == 0, 10, "the hold to close")
    assert world.balance(t.user_id) == 100 - Decimal(str(row["credits"]))
    assert t.client.responses.retrieve(queued.id).status == "cancelled"
    assert t.client.responses.cancel(queued.id).status == "cancelled"  # again: as it stands
    assert world.verify()["ok"]


def test_a_failed_background_response_says_so_and_costs_nothing(world: World) -> None:
    model, tag = _served(world, "chat")
    world.mock.always(tag, up.fail(500))
    t = world.tenant(credits=100)
    queued = t.client.responses.create(model=model, input="x", background=True)
    failed = wait_until(lambda: (r := t.client.responses.retrieve(queued.id)).status == "failed" and r, 30,
                        "the background response to fail")
    assert failed.error is not None and failed.error.code == "upstream_error"
    row = _settled(world, t)
    assert row["status"] == "upstream_error" and Decimal(str(row["credits"])) == 0
    assert world.balance(t.user_id) == 100 and world.held(t.user_id) == 0 and world.verify()["ok"]


def test_what_cannot_be_run_or_cancelled_in_the_background_is_refused(world: World) -> None:
    model, tag = _served(world, "chat")
    t = world.tenant(credits=100)
    other = world.tenant(credits=100)
    auth = {"Authorization": f"Bearer {t.key}"}
    for body, param in [({"background": True, "store": False}, "background"),
                        ({"background": True, "stream": True}, "stream"),
                        ({"background": "yes"}, "background")]:
        resp = requests.post(world.url + "/v1/responses", json={"model": model, "input": "x", **body}, headers=auth,
                             timeout=30)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == param, (body, resp.text)
    assert world.mock.received(tag) == [] and world.usage(t.user_id) == []
    plain = t.client.responses.create(model=model, input="not in the background")
    with pytest.raises(openai.BadRequestError):
        t.client.responses.cancel(plain.id)
    queued = t.client.responses.create(model=model, input="mine", background=True)
    with pytest.raises(openai.NotFoundError):
        other.client.responses.cancel(queued.id)  # another user's: not found
    with pytest.raises(openai.NotFoundError):
        t.client.responses.cancel(f"resp_{secrets.token_hex(8)}")
    wait_until(lambda: t.client.responses.retrieve(queued.id).status == "completed", 30, "the response to finish")
    wait_until(lambda: world.held(t.user_id) == 0, 10, "the hold to close")
    assert world.balance(other.user_id) == 100 and world.verify()["ok"]


def test_a_retried_background_call_runs_once(world: World) -> None:
    """The edge repeats a Relay whose replica it lost (same request id, the next try number): the
    response is run by its first try only, which keeps its hold and settles it."""
    model, tag = _served(world, "chat")
    held = world.mock.gate()  # the first try's upstream call stays in flight until both tries are in
    world.mock.script(tag, up.ok(gate=held))
    t = world.tenant(credits=100)
    request_id = "req_" + secrets.token_hex(12)
    body = json.dumps({"model": model, "input": "Say this is a test!", "background": True}).encode()

    def relay(try_number: int) -> dict[str, Any]:
        message = inference_pb2.RelayRequest(
            caller=common_pb2.Caller(user_id=t.user_id, key_id=t.key_id, request_id=request_id),
            endpoint=inference_pb2.RESPONSES, model=model, body=body, try_number=try_number)
        with world.stack.grpc_channel("inference", "edge") as channel:
            return json.loads(inference_pb2_grpc.InferenceStub(channel).Relay(message, timeout=30).body)

    try:
        first = relay(1)
        wait_until(lambda: held.arrived == 1, 20, "the first try to reach the upstream")
        again = relay(2)
        assert held.passed == 0  # the first try's call was still in flight
    finally:
        held.open()
    assert again["id"] == first["id"] == "resp_" + request_id.removeprefix("req_")
    assert again["status"] == "in_progress"  # the stored response as it stands: its upstream call held
    done = wait_until(lambda: (r := t.client.responses.retrieve(first["id"])).status == "completed" and r, 30,
                      "the background response to complete")
    assert len(world.mock.received(tag)) == 1  # one runner, one upstream call
    row = _settled(world, t)
    assert row["status"] == "complete" and row["request_id"] == request_id
    assert Decimal(str(row["credits"])) == _charge(done.usage.input_tokens, done.usage.output_tokens)
    wait_until(lambda: world.held(t.user_id) == 0, 10, "the hold to close")
    assert world.balance(t.user_id) == 100 - Decimal(str(row["credits"])) and world.verify()["ok"]


def test_a_background_response_the_server_stops_is_a_server_failure_and_free(make_stack, mock) -> None:
    stack = make_stack(name="background-shutdown", env={"CHATKORE_GRACE_S": "1"})
    w = World(stack, mock)
    model, tag = _served(w, "chat")
    w.mock.script(tag, _until_disconnected())
    t = w.tenant(credits=100)
    queued = t.client.responses.create(model=model, input="Think about this for a long while.", background=True)
    wait_until(lambda: w.mock.received(tag), 20, "the request to reach the upstream")
    assert w.held(t.user_id) > 0

    stack.signal("inference", signal.SIGTERM)  # past its grace the response is stopped by the server
    assert stack.procs["inference"].wait(30) == 0
    assert w.mock.state(tag).disconnects == 1
    with psycopg.connect(stack.database_url) as conn:
        status, error = conn.execute("SELECT response->>'status', response->'error' FROM responses WHERE id = %s",
                                     (queued.id,)).fetchone()
    assert status == "failed" and error["code"] == "server_error"
    row = wait_until(lambda: w.usage(t.user_id), 20, "the usage row")[0]
    assert row["status"] == "server_error" and Decimal(str(row["credits"])) == 0
    assert row["prompt_tokens"] == 0 and row["completion_tokens"] == 0  # the client is charged nothing
    with psycopg.connect(stack.database_url) as conn:
        unbilled = conn.execute("SELECT unbilled_tokens FROM requests WHERE request_id = %s",
                                (row["request_id"],)).fetchone()[0]
    assert unbilled > 0  # what the upstream may bill is counted for the operator
    assert w.balance(t.user_id) == 100 and w.held(t.user_id) == 0 and w.verify()["ok"]
