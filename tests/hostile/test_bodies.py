"""Bodies built to cost the server: a JSON bomb, a big body where a small one belongs, the wrong
Content-Type. Each is refused in OpenAI's shape without being built in memory, while the edge
goes on answering everyone else, and changes nothing."""
from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import grpc
import pytest
import requests

from chatkore.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from services.common.errors import reason_of
from tests.hostile import grpcpeer
from tests.hostile.procwatch import Watch
from tests.world import World

MSG = [{"role": "user", "content": "hello"}]
MB = 1024 * 1024
# ~20 MB of `[{},{},…]`: under CHATKORE_MAX_BODY_MB (20), ~6.8 million objects once parsed (~0.6 GB).
BOMB = b"[" + b"{}," * ((20 * MB - 4096) // 3) + b"{}]"
RSS_GROWTH_LIMIT = 50 * MB
CPU_BUDGET_S = 1.0  # CPU the edge may spend on one bomb; parsing it costs several seconds


def _error(resp: requests.Response) -> dict:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def _chunks(data: bytes, size: int = 256 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


@pytest.mark.parametrize("path", ["/api/login", "/v1/chat/completions"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_json_bomb_is_refused_without_being_built(world: World, path: str, chunked: bool) -> None:
    """Even a key with no credits may send a body; 20 MB of empty objects costs the edge next to nothing."""
    broke = world.tenant(credits=0)
    other = world.tenant()
    answered: list[int] = []
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {broke.key}"}
    with Watch(world.stack.procs["edge"].pid) as edge:
        sent: list[requests.Response] = []
        bomb = threading.Thread(target=lambda: sent.append(requests.post(
            world.url + path, data=_chunks(BOMB) if chunked else BOMB, headers=headers, timeout=60)))
        bomb.start()
        while bomb.is_alive() or not answered:  # the edge answers others meanwhile
            answered.append(requests.get(world.url + "/v1/models", timeout=30,
                                         headers={"Authorization": f"Bearer {other.key}"}).status_code)
        bomb.join()
    resp = sent[0]
    assert resp.status_code == 413, resp.text
    err = _error(resp)
    assert err["code"] == "request_too_large" and err["type"] == "invalid_request_error"
    assert ("64 KB" if path.startswith("/api/") else "100000 JSON objects") in err["message"]
    assert set(answered) == {200}
    assert edge.growth < RSS_GROWTH_LIMIT, f"edge RSS grew by {edge.growth / MB:.0f} MB"
    assert edge.cpu_s < CPU_BUDGET_S, f"the edge spent {edge.cpu_s:.2f} s of CPU on one body"
    assert world.usage(broke.user_id) == [] and world.balance(broke.user_id) == 0


def test_inference_refuses_a_bomb_before_parsing_it(world: World) -> None:
    """Whatever reaches inference (the edge is its only caller) is counted before it is parsed."""
    model, _ = world.served_model()
    t = world.tenant(credits=0)
    message = inference_pb2.RelayRequest(
        caller=common_pb2.Caller(user_id=t.user_id, key_id=t.key_id, request_id="req_bomb_" + model),
        endpoint=inference_pb2.CHAT_COMPLETIONS, model=model, body=BOMB[:-1] + b',{"model": 1}]')

    async def call() -> grpc.aio.AioRpcError:
        channel = grpcpeer.channel(world, "inference")
        try:
            await inference_pb2_grpc.InferenceStub(channel).Relay(message, timeout=60)
        except grpc.aio.AioRpcError as exc:
            return exc
        finally:
            await channel.close()
        raise AssertionError("inference relayed a bomb")

    with Watch(world.stack.procs["inference"].pid) as inference:
        failure = asyncio.run(call())
    assert reason_of(failure) == "REQUEST_TOO_LARGE", failure
    assert "100000 JSON objects" in (failure.details() or "")
    # The 20 MB message itself arrives, through TLS, gRPC and protobuf (a few copies of it, ~100 MB
    # in all); what parsing would have built from it (~0.6 GB of objects) never is.
    assert inference.growth < 8 * len(BOMB), f"inference RSS grew {inference.growth / MB:.0f} MB"
    assert world.usage(t.user_id) == []


def test_a_20_mb_prompt_is_counted_in_bounded_memory(world: World) -> None:
    """A prompt as large as /v1 takes (20 MB of "a a a ...", ten million tokens) is counted before
    its hold without a Python list of its tokens (that list alone was 360 MB: two such prompts at
    once would take inference, ~180 MB before any call, past its 768 Mi limit)."""
    model, _ = world.served_model()
    t = world.tenant()
    half = "a " * (5 * MB - 1024)  # under OpenAI's 10 MiB a string
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": half}] * 2}).encode()
    with Watch(world.stack.procs["inference"].pid) as inference:
        resp = requests.post(world.url + "/v1/chat/completions", data=body, timeout=120, headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {t.key}"})
    assert resp.status_code == 402, resp.text
    assert _error(resp)["code"] == "insufficient_quota"
    # Measured: the message's copies (TLS, gRPC, the Mux envelope, protobuf) ~120 MB, the parsed
    # text 20 MB, the count 4 bytes a token: ~180 MB in all (360 MB when the count was a list of ints).
    assert inference.growth < 10 * len(body), f"inference RSS grew {inference.growth / MB:.0f} MB"
    assert world.usage(t.user_id) == []


@pytest.mark.parametrize("path, cap", [("/api/login", "64 KB"), ("/api/register", "64 KB"),
                                       ("/admin/v1/users", "64 KB")])
def test_small_routes_take_small_bodies(world: World, path: str, cap: str) -> None:
    users = world.verify()["users"]
    body = json.dumps({"name": "n", "email": "a@example.com", "password": "p" * (65 * 1024)}).encode()
    resp = requests.post(world.url + path, data=body, timeout=30, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {world.stack.admin_key}"})
    assert resp.status_code == 413, resp.text
    err = _error(resp)
    assert err["code"] == "request_too_large" and cap in err["message"]
    assert world.verify()["users"] == users


def test_prompts_keep_the_large_cap(world: World) -> None:
    """80 KB of prompt: over the small routes' cap, well within /v1's."""
    model, _ = world.served_model()
    t = world.tenant()
    reply = t.client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x " * 40_000}],
                                             max_tokens=5)
    assert reply.choices[0].message.content


@pytest.mark.parametrize("path", ["/api/login", "/api/register"])
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
def test_sign_in_takes_only_json(world: World, path: str, content_type: str | None) -> None:
    """No login CSRF: a plain HTML form on another site cannot send these."""
    body = json.dumps({"email": "csrf@example.com", "password": "correct horse battery"}).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    resp = requests.post(world.url + path, data=body, headers=headers, timeout=30)
    assert resp.status_code == 415, resp.text
    err = _error(resp)
    assert err["code"] == "unsupported_media_type" and "application/json" in err["message"]
    assert "Set-Cookie" not in resp.headers


def test_admin_takes_only_json(world: World) -> None:
    users = world.verify()["users"]
    resp = requests.post(world.url + "/admin/v1/users", data=b'{"name": "x"}', timeout=30,
                         headers={"Authorization": f"Bearer {world.stack.admin_key}", "Content-Type": "text/plain"})
    assert resp.status_code == 415 and _error(resp)["code"] == "unsupported_media_type"
    resp = requests.post(world.url + "/admin/v1/users", data=b'{"name": "x"}', timeout=30,
                         headers={"Authorization": f"Bearer {world.stack.admin_key}",
                                  "Content-Type": "application/json; charset=utf-8"})
    assert resp.status_code == 201, resp.text
    assert world.verify()["users"] == users + 1


@pytest.mark.parametrize("content_type, status", [
    (None, 200),                                  # fetch/requests with a string body
    ("application/x-www-form-urlencoded", 200),   # curl -d without -H
    ("application/json; charset=utf-8", 200),
    ("text/plain", 415),
    ("multipart/form-data; boundary=x", 415),
])
def test_openai_api_content_types(world: World, content_type: str | None, status: int) -> None:
    model, _ = world.served_model()
    t = world.tenant()
    headers = {"Authorization": f"Bearer {t.key}", **({"Content-Type": content_type} if content_type else {})}
    resp = requests.post(world.url + "/v1/chat/completions", headers=headers, timeout=60,
                         data=json.dumps({"model": model, "messages": MSG}).encode())
    assert resp.status_code == status, resp.text
    if status != 200:
        assert _error(resp)["code"] == "unsupported_media_type"
        assert world.usage(t.user_id) == [] and world.balance(t.user_id) == 100
