"""Graceful shutdown: a process told to stop (SIGTERM, as Kubernetes does) takes no new work
but lets the streams in flight finish, settles them, then exits."""
from __future__ import annotations

import json
import signal
import socket

import psycopg
import pytest
import requests

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


def _usage_row(stack: Stack, request_id: str) -> tuple[str, str, int]:
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute("SELECT state, status, completion_tokens FROM requests WHERE request_id = %s",
                           (request_id,)).fetchone()
    return row


def _slow_stream(w: World, tag: str, model: str, key: str) -> requests.Response:
    w.mock.always(tag, up.ok(pieces=PIECES, delay_s=0.1))  # about two seconds of stream
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
    with stack.process_with(process, {"CHATKORE_GRACE_S": "20"}):
        resp = _slow_stream(w, tag, model, t.key)
        lines = resp.iter_lines()
        first = [next(line for line in lines if line)]  # the stream is running

        stack.signal(process, signal.SIGTERM)
        # It stops taking connections at once...
        port = stack.http_port if process == "edge" else stack.ports[process]
        wait_until(lambda: _refuses_connections(port), 5, f"{process} to stop accepting connections")
        # ...but the stream in flight runs to its end.
        events = first + [line for line in lines if line]
        assert events[-1] == b"data: [DONE]"
        assert not [e for e in events if b'"error"' in e]
        assert _text(events) == expected and len(expected) > 20
        assert stack.procs[process].wait(30) == 0

    state, status, completion_tokens = _usage_row(stack, resp.headers["x-request-id"])
    assert (state, status) == ("settled", "complete") and completion_tokens > 0
