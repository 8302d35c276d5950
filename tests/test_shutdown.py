"""Graceful shutdown: a process told to stop (SIGTERM, as Kubernetes does) takes no new work
but lets the streams in flight finish, settles them, then exits."""
from __future__ import annotations

import json
import secrets
import signal
import socket
import threading
import time
from decimal import Decimal

import grpc
import psycopg
import pytest
import requests
from aiohttp import web

from chatkore.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from services.common.mtls import GrpcTls
from tests import mock_media, openai_tokens
from tests import mock_upstream as up
from tests.world import World
from tools.stack import Stack, wait_until

MSG = [{"role": "user", "content": "Say this is a test!"}]
PIECES = 20


def _refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def _usage_row(stack: Stack, request_id: str) -> tuple[str, str, int, int, int]:
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute("SELECT state, status, prompt_tokens, completion_tokens, credits FROM requests"
                           " WHERE request_id = %s", (request_id,)).fetchone()
    return row


def _held_stream(w: World, tag: str, model: str, key: str, rest: up.Gate) -> requests.Response:
    """A stream whose upstream sends the role chunk and one piece of text, then holds the rest
    back at `rest` until the test opens it."""
    w.mock.script(tag, up.ok(pieces=PIECES, gate_each=rest, free_chunks=2))
    resp = requests.post(w.url + "/v1/chat/completions", json={"model": model, "messages": MSG, "stream": True},
                         headers={"Authorization": f"Bearer {key}"}, stream=True, timeout=60)
    assert resp.status_code == 200
    return resp


def _text(events: list[bytes]) -> str:
    chunks = [json.loads(e.removeprefix(b"data: ")) for e in events if e != b"data: [DONE]"]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


def _expected_text(w: World, tag: str, model: str, key: str) -> str:
    """What the stream says when nothing stops (the mock's answer is deterministic)."""
    resp = requests.post(w.url + "/v1/chat/completions", json={"model": model, "messages": MSG, "stream": True},
                         headers={"Authorization": f"Bearer {key}"}, timeout=60)
    return _text([line for line in resp.iter_lines() if line])


@pytest.mark.parametrize("process", ["edge", "inference"])
def test_sigterm_lets_a_stream_finish_and_settle(world: World, process: str) -> None:
    # The shared stack: only `process` restarts, with a grace long enough for the stream, and
    # runs again as before once the test is over.
    w, stack = world, world.stack
    model, tag = w.served_model()
    t = w.tenant()
    expected = _expected_text(w, tag, model, t.key)
    rest = w.mock.gate()
    try:
        with stack.process_with(process, {"CHATKORE_GRACE_S": "20"}):
            resp = _held_stream(w, tag, model, t.key, rest)
            lines = resp.iter_lines()
            first = [next(line for line in lines if line)]  # the stream is running...
            wait_until(lambda: rest.arrived == 1, 10, "the upstream to hold the rest of the stream back")

            stack.signal(process, signal.SIGTERM)
            # It stops taking connections at once...
            port = stack.http_port if process == "edge" else stack.ports[process]
            wait_until(lambda: _refuses_connections(port), 5, f"{process} to stop accepting connections")
            assert rest.passed == 0  # ...while the stream is still in flight, held upstream...
            rest.open()
            # ...and the stream in flight runs to its end.
            events = first + [line for line in lines if line]
            assert events[-1] == b"data: [DONE]"
            assert not [e for e in events if b'"error"' in e]
            assert _text(events) == expected and len(expected) > 20
            assert stack.procs[process].wait(30) == 0
    finally:
        rest.open()

    state, status, prompt_tokens, completion_tokens, credits = _usage_row(stack, resp.headers["x-request-id"])
    assert (state, status) == ("settled", "complete")
    assert prompt_tokens == openai_tokens.chat_prompt_tokens(MSG, model)
    assert completion_tokens == openai_tokens.text_tokens(expected, model)
    # World.model's prices: 1.5 and 2.0 credits per 1,000 tokens, in micro-credits rounded up.
    assert credits == -(-(prompt_tokens * 1_500_000 + completion_tokens * 2_000_000) // 1000)


def _settled_row(stack: Stack, request_id: str) -> tuple:
    def row() -> tuple | None:
        with psycopg.connect(stack.database_url) as conn:
            found = conn.execute("SELECT state, status, prompt_tokens, completion_tokens, credits FROM requests"
                                 " WHERE request_id = %s", (request_id,)).fetchone()
        return found if found and found[0] == "settled" else None

    return wait_until(row, 30, "the cut stream to be settled")


@pytest.mark.parametrize("process", ["edge"])
def test_a_stream_past_the_grace_is_cut_and_pays_for_what_was_delivered(world: World, process: str) -> None:
    """SIGTERM with a stream that will not end: after CHATKORE_GRACE_S the process stops anyway,
    exits cleanly, and the stream is charged for what reached the client, to the micro-credit.
    Inference stopped this way is tested on a stack of its own (below)."""
    w, stack = world, world.stack
    model, tag = w.served_model()
    t = w.tenant()
    stuck = w.mock.gate()  # after two pieces of text the upstream says nothing more until the test is over
    w.mock.script(tag, up.ok(pieces=PIECES, gate_each=stuck, free_chunks=3))
    events: list[bytes] = []
    try:
        with stack.process_with(process, {"CHATKORE_GRACE_S": "1"}):
            resp = requests.post(w.url + "/v1/chat/completions", json={"model": model, "messages": MSG,
                                                                       "stream": True},
                                 headers={"Authorization": f"Bearer {t.key}"}, stream=True, timeout=60)
            assert resp.status_code == 200
            lines = resp.iter_lines()
            events += [next(line for line in lines if line) for _ in range(3)]  # the free pieces
            wait_until(lambda: stuck.arrived == 1, 10, "the upstream to hold the rest back")
            stack.signal(process, signal.SIGTERM)
            try:
                events += [line for line in lines if line]
            except requests.exceptions.ChunkedEncodingError:
                assert process == "edge"  # the edge itself went away: the connection ends unfinished
            assert stack.procs[process].wait(30) == 0
            assert stuck.passed == 0  # it was cut while the upstream still held the rest
    finally:
        stuck.open()
    if process == "inference":  # the edge is still there to say what happened, in-band
        assert events[-1] == b"data: [DONE]" and b'"error"' in events[-2]
    else:
        assert b"data: [DONE]" not in events
    delivered = _text([e for e in events if e != b"data: [DONE]" and b'"error"' not in e])
    assert delivered  # two pieces of text reached the client before the cut
    state, status, prompt_tokens, completion_tokens, credits = _settled_row(stack, resp.headers["x-request-id"])
    assert prompt_tokens == openai_tokens.chat_prompt_tokens(MSG, model)
    assert completion_tokens == openai_tokens.text_tokens(delivered, model)
    # World.model's prices: 1.5 and 2.0 credits per 1,000 tokens, in micro-credits rounded up.
    assert credits == -(-(prompt_tokens * 1_500_000 + completion_tokens * 2_000_000) // 1000)
    assert w.held(t.user_id) == 0 and w.balance(t.user_id) == 100 - Decimal(credits) / 1_000_000


CUT_HOLD_TTL_S = 120  # far longer than the test: a hold closed in time was not the sweeper's doing
RELAYED = 4           # text chunks the upstream sends before it holds the rest back


@pytest.fixture(scope="module")
def cut_world(make_stack, mock) -> World:
    """A stack of its own: its inference is stopped by each test (and started again by the next)."""
    return World(make_stack(name="inference-cut", env={"CHATKORE_GRACE_S": "1",
                                                        "CHATKORE_HOLD_TTL_S": str(CUT_HOLD_TTL_S)}), mock)


def _running(stack: Stack, transport: str) -> None:
    """The cut stack's edge and inference up, their calls between the services over multiplexed
    streams (the default) or one plain gRPC call per call (CHATKORE_GRPC_MUX=0)."""
    transport_env = {"CHATKORE_GRPC_MUX": "0"} if transport == "plain" else {}
    for name in ("edge", "inference"):  # the edge's calls to inference, inference's to billing
        if stack.procs[name].poll() is not None or stack.process_env_extra.get(name, {}) != transport_env:
            stack.restart(name, env=transport_env)  # inference was stopped by the test before
    stack.wait_healthy()


@pytest.mark.parametrize("transport", ["mux", "plain"])
def test_inference_past_its_grace_settles_the_cut_stream_before_it_exits(cut_world: World, transport: str) -> None:
    """SIGTERM to inference with a stream that will not end: past CHATKORE_GRACE_S it cuts the
    stream and, before it exits, settles it for what it relayed (not left for the sweeper to
    release for free after the hold's TTL). Calls between the services go over multiplexed streams
    (the default) or one plain gRPC call per call (CHATKORE_GRPC_MUX=0)."""
    w, stack = cut_world, cut_world.stack
    _running(stack, transport)
    model, tag = w.served_model()
    t = w.tenant()
    stuck = w.mock.gate()  # after the role and RELAYED pieces of text the upstream says nothing more
    w.mock.script(tag, up.ok(pieces=PIECES, gate_each=stuck, free_chunks=1 + RELAYED))
    try:
        resp = requests.post(w.url + "/v1/chat/completions", json={"model": model, "messages": MSG, "stream": True},
                             headers={"Authorization": f"Bearer {t.key}"}, stream=True, timeout=60)
        assert resp.status_code == 200
        lines = resp.iter_lines()
        events = [next(line for line in lines if line) for _ in range(1 + RELAYED)]
        wait_until(lambda: stuck.arrived == 1, 10, "the upstream to hold the rest back")
        signalled = time.monotonic()
        stack.signal("inference", signal.SIGTERM)
        events += [line for line in lines if line]  # the edge, still up, ends the stream in-band
        assert stack.procs["inference"].wait(30) == 0
        assert stuck.passed == 0  # it was cut while the upstream still held the rest
    finally:
        stuck.open()
    assert events[-1] == b"data: [DONE]" and b'"error"' in events[-2]
    delivered = _text([e for e in events if e != b"data: [DONE]" and b'"error"' not in e])
    assert delivered

    # Settled before inference exited: no waiting here, and nothing left for the sweeper.
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute("SELECT state, status, prompt_tokens, completion_tokens, credits FROM requests"
                           " WHERE request_id = %s", (resp.headers["x-request-id"],)).fetchone()
    assert row is not None and row[:2] == ("settled", "server_error"), row
    _, _, prompt_tokens, completion_tokens, credits = row
    assert prompt_tokens == openai_tokens.chat_prompt_tokens(MSG, model)
    assert completion_tokens == openai_tokens.text_tokens(delivered, model) > 0
    # World.model's prices: 1.5 and 2.0 credits per 1,000 tokens, in micro-credits rounded up.
    assert credits == -(-(prompt_tokens * 1_500_000 + completion_tokens * 2_000_000) // 1000)
    assert w.held(t.user_id) == 0
    assert time.monotonic() - signalled < CUT_HOLD_TTL_S / 4
    assert w.balance(t.user_id) == 100 - Decimal(credits) / 1_000_000
    assert w.verify()["problems"] == []


@pytest.mark.parametrize("transport", ["mux", "plain"])
def test_an_image_call_cut_past_the_grace_is_free_and_counted_unbilled(cut_world: World, transport: str) -> None:
    """SIGTERM to inference with an image generation the upstream has not answered: past the
    grace it is cut, answered 503, and — the server's failure — settled before inference exits as
    server_error for nothing, the images the upstream may still bill counted unbilled (not charged
    as a client who left, which the client would pay again on its retry)."""
    w, stack = cut_world, cut_world.stack
    _running(stack, transport)
    model = f"img-{secrets.token_hex(4)}"
    w.admin("PUT", f"/admin/v1/prices/{model}", {"prompt": 0, "completion": 0, "units": {"image": 2}})
    _, tag = w.channel([model])
    stuck = w.mock.gate()  # the upstream answers only once the test is over
    w.mock.always(tag, mock_media.images(gate=stuck))
    t = w.tenant()
    answer: list[requests.Response] = []
    caller = threading.Thread(target=lambda: answer.append(requests.post(
        w.url + "/v1/images/generations", json={"model": model, "prompt": "a cat", "n": 3},
        headers={"Authorization": f"Bearer {t.key}"}, timeout=60)))
    caller.start()
    try:
        wait_until(lambda: stuck.arrived == 1, 10, "the image call to reach the upstream")
        assert w.held(t.user_id) == 6  # every image asked for
        stack.signal("inference", signal.SIGTERM)
        assert stack.procs["inference"].wait(30) == 0
        assert stuck.passed == 0  # cut while the upstream still had it
        caller.join(30)
    finally:
        stuck.open()
    assert answer and answer[0].status_code == 503, answer and answer[0].text

    with psycopg.connect(stack.database_url) as conn:  # closed before inference exited, not by the sweeper
        row = conn.execute("SELECT state, status, credits, unbilled_tokens FROM requests WHERE request_id = %s",
                           (answer[0].headers["x-request-id"],)).fetchone()
    assert row == ("released", "server_error", 0, 3), row  # the 3 images the upstream may bill
    assert w.held(t.user_id) == 0 and w.balance(t.user_id) == 100
    assert w.verify()["problems"] == []


def _endless(written: list[int]) -> up.Behavior:
    """A chat stream that never ends: the role, then 8 KB pieces of text for as long as it is read
    (`written` counts them)."""
    text = "lorem ipsum " * 700

    async def behave(request: web.Request, body: dict, path: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        head = {"id": "chatcmpl-endless", "object": "chat.completion.chunk", "created": 0, "model": body["model"]}
        await response.write(b"data: " + json.dumps({**head, "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}).encode() + b"\n\n")
        while True:
            await response.write(b"data: " + json.dumps({**head, "choices": [
                {"index": 0, "delta": {"content": text}, "finish_reason": None}]}).encode() + b"\n\n")
            written.append(1)

    return behave


def test_a_stream_whose_reader_stalled_is_settled_when_cut_over_plain_grpc(cut_world: World) -> None:
    """Plain gRPC (CHATKORE_GRPC_MUX=0) drives a stream as `async for event in handler: await
    write(event)`: a caller that stops reading leaves the call waiting in that write, outside the
    relay's generator, when the shutdown cuts it. The cut still closes the relay's stream, which
    settles it (server_error, paying what was relayed) before inference exits -- not whenever the
    generator is collected, perhaps after the billing channel closed, leaving the hold to the sweeper.
    The caller is a raw gRPC client (as the edge) with a small receive window that never reads past
    the first event."""
    w, stack = cut_world, cut_world.stack
    _running(stack, "plain")
    model, tag = w.served_model()
    written: list[int] = []
    w.mock.script(tag, _endless(written))
    t = w.tenant()
    request_id = "req_" + secrets.token_hex(12)
    request = inference_pb2.RelayRequest(
        caller=common_pb2.Caller(user_id=t.user_id, key_id=t.key_id, request_id=request_id),
        endpoint=inference_pb2.CHAT_COMPLETIONS, model=model, stream=True,
        body=json.dumps({"model": model, "messages": MSG, "stream": True}).encode())
    tls = GrpcTls.from_dir("edge", stack.tls_dir("edge"))
    channel = grpc.secure_channel(stack.target("inference"), tls.channel_credentials(),
                                  options=[("grpc.ssl_target_name_override", "inference"),
                                           ("grpc.http2.bdp_probe", 0)])  # the window stays small
    try:
        events = inference_pb2_grpc.InferenceStub(channel).RelayStream(request, timeout=60)
        assert next(events).chunk  # the role: the stream runs; nothing more is read
        # The writes stop once the unread events fill the window: the upstream is no longer read.
        wait_until(lambda: len(written) > 8, 10, "the upstream to send")
        # "Stopped" is seen from outside as no new piece over 20 polls in a row (1 s); stopping
        # sooner or later changes nothing asserted below, only which state the cut meets.
        seen = {"count": -1, "same": 0}

        def stopped() -> int:
            n = len(written)
            seen["same"] = seen["same"] + 1 if n == seen["count"] else 0
            seen["count"] = n
            return n if seen["same"] >= 20 else 0

        stalled = wait_until(stopped, 20, "the relay to stop reading the upstream (its write to the caller blocked)")
        stack.signal("inference", signal.SIGTERM)
        assert stack.procs["inference"].wait(30) == 0
    finally:
        channel.close()

    with psycopg.connect(stack.database_url) as conn:  # settled before inference exited
        row = conn.execute("SELECT state, status, prompt_tokens, completion_tokens, credits FROM requests"
                           " WHERE request_id = %s", (request_id,)).fetchone()
    assert row is not None and row[:2] == ("settled", "server_error"), (row, stalled)
    _, _, prompt_tokens, completion_tokens, credits = row
    assert prompt_tokens == openai_tokens.chat_prompt_tokens(MSG, model) and completion_tokens > 0
    assert credits == -(-(prompt_tokens * 1_500_000 + completion_tokens * 2_000_000) // 1000)
    assert w.held(t.user_id) == 0 and w.balance(t.user_id) == 100 - Decimal(credits) / 1_000_000
    assert w.verify()["problems"] == []
