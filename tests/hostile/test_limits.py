"""Limits on what a client sends: each crossed gets a clear OpenAI-shaped error, changes nothing,
and leaves the edge free for everyone else (no stuck worker)."""
from __future__ import annotations

import asyncio
import json
import select
import socket
import time

import pytest
import requests

from tests.hostile import rawhttp
from tests.hostile.conftest import TIGHT_ENV
from tests.world import Tenant, World
from tools.stack import wait_until

MSG = [{"role": "user", "content": "hello"}]
HEADER_TIMEOUT_S = float(TIGHT_ENV["CHATKORE_HEADER_TIMEOUT_S"])
BODY_TIMEOUT_S = float(TIGHT_ENV["CHATKORE_BODY_TIMEOUT_S"])


def _error(resp_json: dict) -> dict:
    assert set(resp_json) == {"error"} and set(resp_json["error"]) == {"message", "type", "param", "code"}, resp_json
    return resp_json["error"]


def _post(world: World, key: str, data: bytes | dict, path: str = "/v1/chat/completions") -> requests.Response:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return requests.post(world.url + path, data=raw, timeout=30,
                         headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})


def _untouched(world: World, t: Tenant) -> None:
    assert world.balance(t.user_id) == 100 and world.held(t.user_id) == 0 and world.usage(t.user_id) == []


@pytest.fixture(scope="module")
def served(tight: World) -> str:
    model, _ = tight.served_model()
    return model


def _lists(depth: int) -> list:
    value: list = ["leaf"]
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize("body, param, code", [
    # Depth: the body is level 1, so 16 lists inside it reach level 17 (CHATKORE_MAX_JSON_DEPTH=16).
    (lambda m: {"model": m, "messages": MSG, "metadata": _lists(16)}, "metadata" + "[0]" * 15, "nesting_too_deep"),
    (lambda m: {"model": m, "messages": MSG * 51}, "messages", "array_above_max_length"),
    (lambda m: {"model": m, "messages": [{"role": "user", "content": "x" * 5001}]}, "messages[0].content",
     "string_above_max_length"),
    (lambda m: {"model": m, "messages": MSG, "x" * 5001: 1}, "x" * 5001, "string_above_max_length"),
    (lambda m: {"model": m, "messages": MSG, "max_tokens": 2**40}, "max_tokens", "integer_above_max_value"),
])
def test_shape_limits_are_400(tight: World, served: str, body, param, code) -> None:
    t = tight.tenant()
    resp = _post(tight, t.key, body(served))
    assert resp.status_code == 400, resp.text
    err = _error(resp.json())
    assert (err["param"], err["code"], err["type"]) == (param, code, "invalid_request_error")
    _untouched(tight, t)


def test_right_at_the_limits_is_accepted(tight: World, served: str) -> None:
    t = tight.tenant()
    body = {"model": served, "messages": [{"role": "user", "content": "x" * 5000}] + MSG * 49,
            "metadata": _lists(15)}
    resp = _post(tight, t.key, body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"]


def test_depth_that_would_exhaust_the_parser_is_400(tight: World, served: str) -> None:
    # Within the budget of containers (CHATKORE_MAX_JSON_NODES, 100,000; past it: 413, test_bodies.py).
    t = tight.tenant()
    deep = b'{"model": "%s", "messages": [], "x": ' % served.encode() + b"[" * 90_000 + b"]" * 90_000 + b"}"
    resp = _post(tight, t.key, deep)
    assert resp.status_code == 400 and _error(resp.json())["type"] == "invalid_request_error"
    _untouched(tight, t)


@pytest.mark.parametrize("raw, param", [
    (b'{"model": "\\ud800", "messages": [{"role": "user", "content": "hi"}]}', "model"),
    (b'{"model": "M", "messages": [{"role": "user", "content": "a\\udfffb"}]}', "messages[0].content"),
    (b'{"model": "M", "messages": [{"role": "user", "content": "hi"}], "x": 1e999}', "x"),
    (b'{"model": "M", "messages": [{"role": "user", "content": "hi"}], "temperature": -1e999}', "temperature"),
])
def test_unencodable_values_are_400_not_500(tight: World, served: str, raw: bytes, param: str) -> None:
    """A lone surrogate or an infinite number parses, but could never be sent on."""
    t = tight.tenant()
    resp = _post(tight, t.key, raw.replace(b'"M"', json.dumps(served).encode()))
    assert resp.status_code == 400, resp.text
    assert _error(resp.json())["param"] == param
    _untouched(tight, t)


@pytest.mark.parametrize("path, body", [
    ("/admin/v1/users", b'{"name": "\\ud800"}'),
    ("/admin/v1/users", b'{"name": "' + b"n" * 5001 + b'"}'),
    ("/admin/v1/users", b'{"name": "a", "credits": NaN}'),
    ("/admin/v1/users", b'{"name": "a", "x": ' + b"[" * 17 + b"]" * 17 + b"}"),
    ("/admin/v1/channels", b'{"name": "c", "base_url": "http://127.0.0.1:9/v1", "models": ["m"],'
                           b' "settings": {"timeout_s": 1e999}}'),
])
def test_admin_body_limits_are_400(tight: World, path: str, body: bytes) -> None:
    users_before = tight.verify()["users"]
    resp = requests.post(tight.url + path, data=body, timeout=30,
                         headers={"Authorization": f"Bearer {tight.stack.admin_key}",
                                  "Content-Type": "application/json"})
    assert resp.status_code == 400, resp.text
    _error(resp.json())
    assert tight.verify()["users"] == users_before


@pytest.mark.parametrize("raw", [
    b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n",
    b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-" + b"k" * 5000 + b"\r\n\r\n",
    b"GET /v1/models?q=" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
])
def test_oversized_header_or_url_is_431(tight: World, raw: bytes) -> None:
    reply = rawhttp.request(tight.url, raw)
    assert reply.status == 431
    assert reply.headers["content-type"].startswith("application/json")
    assert _error(reply.json())["code"] == "request_header_too_large"
    assert b"kkkk" not in reply.body


def test_garbage_instead_of_http_is_400_in_openai_shape(tight: World) -> None:
    reply = rawhttp.request(tight.url, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    assert reply.status == 400
    assert _error(reply.json())["code"] == "bad_request"


def test_slow_headers_are_cut_off_with_408(tight: World) -> None:
    """Slowloris: a client trickling its headers keeps the connection only HEADER_TIMEOUT_S."""
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"z" * 200
    with rawhttp.connect(tight.url) as sock:
        started = time.monotonic()
        closed = False
        said = b""
        for byte in head:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            closed, said = rawhttp.closed_by_peer(sock, 0.05)
            if closed:
                break
        if not closed:
            closed, said = rawhttp.closed_by_peer(sock, HEADER_TIMEOUT_S + 5)
        elapsed = time.monotonic() - started
    assert closed, "the edge kept a trickling client"
    assert HEADER_TIMEOUT_S - 0.2 <= elapsed <= HEADER_TIMEOUT_S + 5
    assert said.startswith(b"HTTP/1.1 408") and b'"request_timeout"' in said


def test_a_kept_alive_connection_is_not_cut_at_the_header_timeout(tight: World, served: str) -> None:
    """A request whose body arrives apart from its head, then the connection idle between
    requests for longer than HEADER_TIMEOUT_S (well inside keep-alive): the next request on it
    is answered. The edge took the body's bytes for the next head and cut the idle connection
    with an unsolicited 408 - clients reusing it saw the server disconnect under their call
    (the ServerDisconnectedError that test_credits' impatient clients met)."""
    t = tight.tenant()
    body = json.dumps({"model": served, "messages": MSG}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t.key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with rawhttp.connect(tight.url) as sock:
        sock.sendall(head)
        assert rawhttp.closed_by_peer(sock, 0.2) == (False, b"")  # waiting for the body, saying nothing
        sock.sendall(body)
        sock.settimeout(30)
        assert rawhttp.read_reply(sock).status == 200
        assert rawhttp.closed_by_peer(sock, HEADER_TIMEOUT_S + 1) == (False, b"")  # idle, and kept
        sock.sendall(head + body)
        sock.settimeout(30)
        assert rawhttp.read_reply(sock).status == 200
    assert len(tight.usage(t.user_id)) == 2


async def test_a_body_read_apart_from_its_head_is_not_taken_for_the_next_head() -> None:
    """The same, made certain: the edge's protocol on a real socket reads a request's head and
    then its body before the handler has started (two reads in a row, as a busy loop does), and
    the header timer stays disarmed once the request is answered."""
    from aiohttp import web

    from edge.server import EdgeServer

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=f"read {len(await request.read())}")

    loop = asyncio.get_running_loop()
    server = EdgeServer(handler, header_timeout_s=30, max_connections=0)
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    transport, protocol = await loop.connect_accepted_socket(server, ours)
    try:
        protocol.data_received(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
        protocol.data_received(b"hello")
        said = b""
        async with asyncio.timeout(10):
            while not said.endswith(b"read 5"):
                said += await loop.sock_recv(theirs, 4096)
        assert said.startswith(b"HTTP/1.1 200")
        assert protocol._header_timer is None  # idle between requests: keep-alive's business, not this timer's
    finally:
        transport.close()
        theirs.close()
        await server.shutdown(1)


def test_silent_connection_is_cut_off(tight: World) -> None:
    with rawhttp.connect(tight.url) as sock:
        started = time.monotonic()
        closed, said = rawhttp.closed_by_peer(sock, HEADER_TIMEOUT_S + 5)
    assert closed and time.monotonic() - started <= HEADER_TIMEOUT_S + 5
    assert said.startswith(b"HTTP/1.1 408")


def test_slow_body_is_408_and_changes_nothing(tight: World, served: str) -> None:
    t = tight.tenant()
    body = json.dumps({"model": served, "messages": MSG}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t.key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with rawhttp.connect(tight.url) as sock:
        sock.sendall(head)
        started = time.monotonic()
        said = b""
        for byte in body:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            closed, said = rawhttp.closed_by_peer(sock, 0.1)
            if said or closed:
                break
        elapsed = time.monotonic() - started
        assert said, "no answer to a trickled body"
    assert BODY_TIMEOUT_S - 0.2 <= elapsed <= BODY_TIMEOUT_S + 5
    assert said.startswith(b"HTTP/1.1 408")
    reply_body = said.partition(b"\r\n\r\n")[2]
    assert _error(json.loads(reply_body))["code"] == "request_timeout"
    _untouched(tight, t)


def test_edge_serves_others_while_clients_trickle(tight: World, served: str, make_edge) -> None:
    """Fifty stalled connections do not stop a normal call from being answered: it is answered
    while every one of them is still open and unanswered. On an edge of its own whose header
    timeout (30 s) no call could outlast, so the order holds however loaded the machine is."""
    patient = World(make_edge(tight.stack, {"CHATKORE_HEADER_TIMEOUT_S": "30"}, name="patient"), tight.mock)
    t = tight.tenant()
    stalled = [rawhttp.connect(patient.url) for _ in range(50)]
    try:
        for sock in stalled:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        reply = patient.client(t.key).chat.completions.create(model=served, messages=MSG)
        assert reply.choices[0].message.content
        readable, _, _ = select.select(stalled, [], [], 0)
        assert readable == [], f"{len(readable)} stalled connections were answered or cut before the call"
    finally:
        for sock in stalled:
            sock.close()
    # Read through the edge that answered: it waits for the settlements of the calls it answered
    # (they follow the reply; edge/settled.py).
    assert len(patient.usage(t.user_id)) == 1


def test_connections_past_the_limit_get_503_and_the_rest_carry_on(world: World, make_edge, mock) -> None:
    """Past CHATKORE_MAX_CONNECTIONS a new connection is answered 503 in OpenAI's shape and
    closed (before file descriptors run out for everyone); once some close, calls go through."""
    # An edge of its own on the shared stack's services: the cap is the edge's.
    capped = World(make_edge(world.stack, {"CHATKORE_MAX_CONNECTIONS": "10"}, name="capped"), mock)
    t = capped.tenant()
    model, _ = capped.served_model()
    chat = json.dumps({"model": model, "messages": MSG}).encode()
    chat_request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Authorization: Bearer " + t.key.encode() + b"\r\nContent-Length: "
                    + str(len(chat)).encode() + b"\r\n\r\n" + chat)
    held = []
    try:
        for _ in range(20):  # some of the ten may be the test helpers' own keep-alive connections
            sock = rawhttp.connect(capped.url)
            sock.sendall(chat_request)
            reply = rawhttp.read_reply(sock)
            if reply.status != 200:
                break
            held.append(sock)  # kept open, idle, after its answer
        assert 1 <= len(held) <= 10 and reply.status == 503, (len(held), reply.status)
        assert reply.headers["retry-after"] == "1" and reply.headers["connection"] == "close"
        assert _error(reply.json())["code"] == "too_many_connections"
        assert rawhttp.closed_by_peer(sock, 5)[0]
        sock.close()
    finally:
        for s in held:
            s.close()
    paid = capped.balance(t.user_id)
    assert len(capped.usage(t.user_id)) == len(held)  # the refused call was never seen, let alone charged

    def answered() -> bool:
        return rawhttp.request(capped.url, chat_request).status == 200

    wait_until(answered, 10, "a call once connections were freed")
    assert capped.balance(t.user_id) < paid and capped.verify()["ok"]
