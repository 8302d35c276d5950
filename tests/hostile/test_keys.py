"""Key security: wrong keys all answer alike, guessing is rate limited per address."""
from __future__ import annotations

import json
import time
from unittest import mock

import pytest

from services.auth.errors import PermissionDenied
from services.auth.keys import Keys
from services.common.config import Secret
from tests.hostile import rawhttp
from tests.hostile.conftest import TIGHT_ENV
from tests.world import World
from tools.stack import wait_until

MSG = [{"role": "user", "content": "hello"}]
LIMIT = int(TIGHT_ENV["CHATKORE_AUTH_FAILURES_PER_MIN"])


def _chat(world: World, auth: bytes, source: str = "127.0.0.1") -> rawhttp.RawReply:
    body = json.dumps({"model": "gpt-3.5-turbo", "messages": MSG}).encode()
    raw = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Authorization: " + auth + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n"
           b"Connection: close\r\n\r\n" + body)
    return rawhttp.request(world.url, raw, source)


def test_every_wrong_key_answers_alike(world: World) -> None:
    """Unknown, revoked, expired, malformed, mangled or undecodable: one status, one body."""
    revoked = world.tenant()
    world.admin("DELETE", f"/admin/v1/keys/{revoked.key_id}", expect=204)
    expired = world.tenant(expires_at=int(time.time()) + 1)
    valid = world.tenant()
    wait_until(lambda: _chat(world, b"Bearer " + expired.key.encode()).status == 401, 10, "the key to expire")
    candidates = {
        "unknown": b"Bearer sk-" + b"A" * 48,
        "revoked": b"Bearer " + revoked.key.encode(),
        "expired": b"Bearer " + expired.key.encode(),
        "truncated": b"Bearer " + valid.key[:-1].encode(),
        "no prefix": b"Bearer " + valid.key[3:].encode(),
        "bare unknown": b"sk-" + b"B" * 48,
        "not utf-8": b"Bearer sk-\xff\xfe" + b"C" * 40,
        "non-ascii": "Bearer sk-ключ".encode(),
        "admin key as api key": b"Bearer " + world.stack.admin_key.encode(),
    }
    replies = {name: _chat(world, auth) for name, auth in candidates.items()}
    bodies = {name: r.json() for name, r in replies.items()}
    assert {r.status for r in replies.values()} == {401}, {n: r.status for n, r in replies.items()}
    assert all(body == bodies["unknown"] for body in bodies.values()), bodies
    assert bodies["unknown"]["error"]["code"] == "invalid_api_key"
    assert _chat(world, b"Bearer " + valid.key.encode()).status == 200


def test_guessing_keys_is_rate_limited_per_address(tight: World) -> None:
    good = tight.tenant()
    model, _ = tight.served_model()
    body = json.dumps({"model": model, "messages": MSG}).encode()

    def chat(key: str, source: str) -> rawhttp.RawReply:
        return rawhttp.call(tight.url, "POST", "/v1/chat/completions", body=body, source=source,
                            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})

    guesser, bystander = "127.0.0.7", "127.0.0.8"
    for i in range(LIMIT):
        assert chat(f"sk-guess{i:044d}", guesser).status == 401
    blocked = chat("sk-guess-one-more" + "0" * 32, guesser)
    assert blocked.status == 429
    err = blocked.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["type"], err["code"]) == ("requests", "rate_limit_exceeded")
    assert 1 <= int(blocked.headers["retry-after"]) <= 60
    # Blocked means blocked: a right guess from that address learns nothing either.
    assert chat(good.key, guesser).status == 429
    # Other addresses are not affected.
    assert chat(good.key, bystander).status == 200
    assert chat("sk-wrong" + "0" * 40, bystander).status == 401
    # Nothing was charged for the refused calls.
    assert len(tight.usage(good.user_id)) == 1


def test_behind_a_trusted_proxy_the_forwarded_address_is_limited_and_cannot_be_chosen(tight: World) -> None:
    """Behind an ingress every call comes from the proxy: X-Forwarded-For names the client,
    but only a trusted proxy's word counts, and only the address that proxy appended."""
    good = tight.tenant()
    model, _ = tight.served_model()
    body = json.dumps({"model": model, "messages": MSG}).encode()

    def chat(key: str, source: str, forwarded: str | None) -> int:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        if forwarded is not None:
            headers["X-Forwarded-For"] = forwarded
        return rawhttp.call(tight.url, "POST", "/v1/chat/completions", body=body, source=source,
                            headers=headers).status

    proxy, inner_proxy = "127.0.0.100", "127.0.0.101"
    guesser, neighbour, direct = "127.0.0.21", "127.0.0.22", "127.0.0.23"
    for i in range(LIMIT):
        assert chat(f"sk-guess{i:044d}", proxy, guesser) == 401
    assert chat(good.key, proxy, guesser) == 429  # the guesser, seen through the proxy, is blocked
    assert chat(good.key, proxy, neighbour) == 200  # its neighbour behind the same proxy is not
    # Two proxies deep: the address the outer one appended, the client's own claim ignored.
    assert chat(good.key, inner_proxy, f"{neighbour}, {guesser}, {proxy}") == 429
    assert chat(good.key, inner_proxy, f"{guesser}, {neighbour}, {proxy}") == 200
    # A client that is not a proxy cannot pin its failures on someone else.
    for i in range(LIMIT):
        assert chat(f"sk-guess{i:044d}", direct, neighbour) == 401
    assert chat(good.key, direct, neighbour) == 429
    assert chat(good.key, proxy, neighbour) == 200
    assert chat(good.key, proxy, "not-an-address") == 200  # garbage: counted against the proxy itself
    assert len(tight.usage(good.user_id)) == 4


def test_guessing_the_admin_key_is_rate_limited(tight: World) -> None:
    source = "127.0.0.9"

    def users(key: str) -> rawhttp.RawReply:
        return rawhttp.call(tight.url, "GET", "/admin/v1/users/1", headers={"Authorization": f"Bearer {key}"},
                            source=source)

    for i in range(LIMIT):
        reply = users(f"ck-admin-guess-{i}")
        assert reply.status == 401 and reply.json()["error"]["code"] == "invalid_api_key"
    reply = users(tight.stack.admin_key)
    assert reply.status == 429 and "retry-after" in reply.headers


def test_missing_key_is_not_a_guess(tight: World) -> None:
    """A client without a key (a browser, a health probe) is told so, however often."""
    source = "127.0.0.10"
    for _ in range(LIMIT + 3):
        assert rawhttp.call(tight.url, "GET", "/v1/models", source=source).status == 401
    t = tight.tenant()
    ok = rawhttp.call(tight.url, "GET", "/v1/models", headers={"Authorization": f"Bearer {t.key}"}, source=source)
    assert ok.status == 200


@pytest.mark.parametrize("presented", ["ck-admin-right", "ck-admin-wrong", "", "ck-admin-righ"])
def test_admin_key_is_compared_in_constant_time(presented: str) -> None:
    keys = Keys(pool=None, admin_key=Secret("ck-admin-right"))  # type: ignore[arg-type]
    with mock.patch("services.auth.keys.hmac.compare_digest", wraps=__import__("hmac").compare_digest) as spy:
        try:
            keys.authorize_admin(presented)
            allowed = True
        except PermissionDenied:  # the refusal itself: any other exception fails the test
            allowed = False
    assert allowed == (presented == "ck-admin-right")
    assert spy.call_count == 1


def _console(tight: World, path: str, body: dict, source: str) -> rawhttp.RawReply:
    return rawhttp.call(tight.url, "POST", path, body=json.dumps(body).encode(), source=source,
                        headers={"Content-Type": "application/json", "Origin": tight.url})


def test_console_signups_are_limited_per_address(tight: World) -> None:
    """Each sign-up comes with free credits: making accounts in bulk from one address is refused."""
    farmer, neighbour = "127.0.0.11", "127.0.0.12"
    for i in range(3):  # CHATKORE_SIGNUPS_PER_HOUR in TIGHT_ENV
        reply = _console(tight, "/api/register", {"email": f"farm{i}-{farmer}@example.com",
                                                  "password": "correct horse battery"}, farmer)
        assert reply.status == 201, reply.body
    refused = _console(tight, "/api/register", {"email": "farm-more@example.com",
                                                "password": "correct horse battery"}, farmer)
    assert refused.status == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) > 60
    ok = _console(tight, "/api/register", {"email": "neighbour@example.com", "password": "correct horse battery"},
                  neighbour)
    assert ok.status == 201


def test_password_guessing_counts_against_the_address(tight: World) -> None:
    source = "127.0.0.13"
    email = "victim@example.com"
    assert _console(tight, "/api/register", {"email": email, "password": "the right password"},
                    "127.0.0.14").status == 201
    for i in range(LIMIT):
        assert _console(tight, "/api/login", {"email": email, "password": f"guess {i} wrong"}, source).status == 401
    blocked = _console(tight, "/api/login", {"email": email, "password": "the right password"}, source)
    assert blocked.status == 429 and "retry-after" in blocked.headers
    assert _console(tight, "/api/login", {"email": email, "password": "the right password"},
                    "127.0.0.14").status == 200
