"""The examples in the service description we start from, run exactly as written."""
from __future__ import annotations

import json
import socket
import subprocess

import requests

from tests.world import World


def _raw_post(world: World, path: str, headers: list[str], body: dict) -> tuple[int, dict]:
    """HTTP/1.1 written by hand, so header values go out byte for byte."""
    payload = json.dumps(body).encode()
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{world.stack.http_port}", "Content-Type: application/json",
            f"Content-Length: {len(payload)}", "Connection: close", *headers]
    with socket.create_connection(("127.0.0.1", world.stack.http_port), timeout=30) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_raw, _, body_raw = data.partition(b"\r\n\r\n")
    status = int(head_raw.split(b" ", 2)[1])
    return status, json.loads(body_raw)


def test_curl_example(world: World) -> None:
    t = world.tenant()
    body = '{"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "Say this is a test!"}], ' \
           '"temperature": 0.7}'
    out = subprocess.run(
        ["curl", "-s", f"{world.url}/v1/chat/completions", "-H", "Content-Type: application/json",
         "-H", f"Authorization:  Bearer {t.key}", "-d", body],
        capture_output=True, check=True, timeout=60,
    )
    reply = json.loads(out.stdout)
    assert reply["object"] == "chat.completion"
    assert reply["usage"]["prompt_tokens"] == 13
    assert reply["choices"][0]["message"]["role"] == "assistant"


def test_python_requests_example(world: World) -> None:
    t = world.tenant()
    resp = requests.post(f"{world.url}/v1/chat/completions", json={
        "model": "gpt-3.5-turbo",
        "messages": [{"role": "user", "content": "回复这是一个测试"}],
        "temperature": 0,
    }, headers={"Authorization": f"Bearer {t.key}"}, timeout=60)
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"].endswith("回复这是一个测试")


def test_header_forms_from_the_description(world: World) -> None:
    t = world.tenant()
    body = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}]}
    for header in (f"Authorization:  Bearer {t.key}", f"Authorization: \tBearer {t.key}  ",
                   f"Authorization: bearer {t.key}", f"Authorization: BEARER   {t.key}",
                   f"Authorization:  Bearer {t.key}".replace(":  ", ": ")):
        status, reply = _raw_post(world, "/v1/chat/completions", [header], body)
        assert status == 200, (header, reply)
    # `" Bearer KEY"`, as the Python example writes it, with the space on the wire.
    status, _ = _raw_post(world, "/v1/chat/completions", [f"Authorization:  Bearer {t.key}"], body)
    assert status == 200


def test_embeddings_node_example(world: World) -> None:
    t = world.tenant()
    resp = requests.post(f"{world.url}/v1/embeddings", headers={"Authorization": f"Bearer {t.key}"},
                         data=json.dumps({"input": "哈哈哈哈哈", "model": "text-embedding-ada-002"}), timeout=60)
    reply = resp.json()
    assert resp.status_code == 200 and reply["object"] == "list"
    assert len(reply["data"][0]["embedding"]) == 1536
    assert world.balance(t.user_id) == 96  # 4 credits: the embeddings minimum
