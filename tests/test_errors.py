"""Every row of DESIGN §4's error table, through the SDK or raw HTTP; none changes a balance."""
from __future__ import annotations

import json
import time

import openai
import pytest
import requests

from tests import mock_upstream as up
from tests.world import World
from tools.stack import wait_until

MSG = [{"role": "user", "content": "hello"}]


def _post(world: World, key: str | None, body: bytes | dict, path: str = "/v1/chat/completions",
          headers: dict | None = None) -> requests.Response:
    h = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(world.url + path, data=data, headers=h, timeout=60)


def _error(resp: requests.Response) -> dict:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert resp.headers.get("x-request-id", "").startswith("req_")
    return body["error"]


# --- 401 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("auth", [None, "Bearer sk-" + "x" * 48, "Basic abc", "Bearer", "sk-nope"])
def test_missing_or_unknown_key(world: World, auth: str | None) -> None:
    headers = {"Authorization": auth} if auth else {}
    resp = _post(world, None, {"model": "gpt-3.5-turbo", "messages": MSG}, headers=headers)
    assert resp.status_code == 401
    err = _error(resp)
    assert err["type"] == "invalid_request_error" and err["code"] == "invalid_api_key"


def test_unknown_and_revoked_keys_answer_alike(world: World) -> None:
    t = world.tenant()
    assert t.client.models.list()
    world.admin("DELETE", f"/admin/v1/keys/{t.key_id}", expect=204)
    started = time.monotonic()
    wait_until(lambda: _post(world, t.key, {"model": "gpt-3.5-turbo", "messages": MSG}).status_code == 401, 1.0,
               "the revoked key to stop working")
    assert time.monotonic() - started < 1.0
    revoked = _error(_post(world, t.key, {"model": "gpt-3.5-turbo", "messages": MSG}))
    unknown = _error(_post(world, t.key[:-4] + "abcd", {"model": "gpt-3.5-turbo", "messages": MSG}))
    assert revoked == unknown


def test_expired_key(world: World) -> None:
    t = world.tenant(expires_at=int(time.time()) + 2)
    assert t.client.models.list()
    wait_until(lambda: _post(world, t.key, {"model": "gpt-3.5-turbo", "messages": MSG}).status_code == 401, 10,
               "the key to expire")
    with pytest.raises(openai.AuthenticationError) as err:
        t.client.chat.completions.create(model="gpt-3.5-turbo", messages=MSG)
    assert err.value.code == "invalid_api_key"


def test_iso_expiry_and_ip_allowlist(world: World) -> None:
    t = world.tenant(expires_at="2099-01-01T00:00:00Z", ips=["10.0.0.0/8"])
    with pytest.raises(openai.AuthenticationError):
        t.client.models.list()  # we call from 127.0.0.1
    ok = world.tenant(ips=["127.0.0.0/8", "::1/128"])
    assert ok.client.models.list()


# --- 402 ----------------------------------------------------------------------------------


def test_empty_balance_is_402_and_not_retried(world: World) -> None:
    t = world.tenant(credits=0)
    resp = _post(world, t.key, {"model": "gpt-3.5-turbo", "messages": MSG})
    assert resp.status_code == 402
    assert resp.headers["x-should-retry"] == "false"
    err = _error(resp)
    assert err["type"] == "insufficient_quota" and err["code"] == "insufficient_quota"
    client = world.client(t.key, max_retries=3)
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(model="gpt-3.5-turbo", messages=MSG)
    assert exc.value.status_code == 402
    assert world.held(t.user_id) == 0 and world.usage(t.user_id) == []


def test_key_credit_limit_is_the_same_402(world: World) -> None:
    model, _ = world.served_model(prompt=1000, completion=1000)  # 1 credit per token
    t = world.tenant(credits=100, credit_limit=30)
    t.client.chat.completions.create(model=model, messages=MSG, max_tokens=5)
    spent = 100 - world.balance(t.user_id)
    assert 0 < spent <= 30
    with pytest.raises(openai.APIStatusError) as exc:
        for _ in range(10):
            t.client.chat.completions.create(model=model, messages=MSG, max_tokens=5)
    assert exc.value.status_code == 402 and exc.value.body["code"] == "insufficient_quota"
    assert 100 - world.balance(t.user_id) <= 30


# --- 404 / 400 / 413 -------------------------------------------------------------------------


def test_unknown_model(world: World) -> None:
    t = world.tenant()
    resp = _post(world, t.key, {"model": "gpt-9-ultra", "messages": MSG})
    assert resp.status_code == 404
    err = _error(resp)
    assert err["code"] == "model_not_found" and err["type"] == "invalid_request_error"


@pytest.mark.parametrize("body, param", [
    (b"{not json", None),
    (b"[1, 2]", None),
    ({"messages": MSG}, "model"),
    ({"model": "gpt-3.5-turbo"}, "messages"),
    ({"model": "gpt-3.5-turbo", "messages": "hi"}, "messages"),
    ({"model": "gpt-3.5-turbo", "messages": []}, "messages"),
    ({"model": "gpt-3.5-turbo", "messages": [{"content": "x"}]}, "messages[0].role"),
    ({"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": "gpt-3.5-turbo", "messages": MSG, "temperature": 3}, "temperature"),
    ({"model": "gpt-3.5-turbo", "messages": MSG, "temperature": "hot"}, "temperature"),
    ({"model": "gpt-3.5-turbo", "messages": MSG, "max_tokens": 0}, "max_tokens"),
    ({"model": "gpt-3.5-turbo", "messages": MSG, "n": 0}, "n"),
    ({"model": "gpt-3.5-turbo", "messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"model": "gpt-3.5-turbo", "messages": MSG, "stream_options": {"include_usage": True}}, "stream_options"),
    ({"model": "gpt-3.5-turbo", "messages": MSG, "tools": [{"type": "function"}]}, "tools[0].function"),
])
def test_bad_chat_input_is_400_and_changes_nothing(world: World, body, param) -> None:
    t = world.tenant()
    resp = _post(world, t.key, body)
    assert resp.status_code == 400, resp.text
    err = _error(resp)
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert world.balance(t.user_id) == 100 and world.held(t.user_id) == 0 and world.usage(t.user_id) == []


@pytest.mark.parametrize("path, body, param", [
    ("/v1/embeddings", {"model": "text-embedding-ada-002"}, "input"),
    ("/v1/embeddings", {"model": "text-embedding-ada-002", "input": ""}, "input"),
    ("/v1/embeddings", {"model": "text-embedding-ada-002", "input": [1, "a"]}, "input"),
    ("/v1/embeddings", {"model": "text-embedding-ada-002", "input": "x", "encoding_format": "hex"},
     "encoding_format"),
    ("/v1/completions", {"model": "gpt-3.5-turbo-instruct"}, "prompt"),
    ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": {"a": 1}}, "prompt"),
    ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "x", "n": 3, "best_of": 2}, "best_of"),
])
def test_bad_input_other_endpoints(world: World, path, body, param) -> None:
    t = world.tenant()
    resp = _post(world, t.key, body, path=path)
    assert resp.status_code == 400 and _error(resp)["param"] == param
    assert world.balance(t.user_id) == 100


def test_body_over_limit_is_413(world: World) -> None:
    t = world.tenant()
    big = json.dumps({"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "x" * (21 * 1024 * 1024)}]})
    resp = _post(world, t.key, big.encode())
    assert resp.status_code == 413
    err = _error(resp)
    assert err["code"] == "request_too_large" and err["type"] == "invalid_request_error"
    assert world.balance(t.user_id) == 100


# --- upstream failures ---------------------------------------------------------------------------


def _model_with_channels(world: World, behaviors: list, **settings) -> tuple[str, list[str]]:
    model = world.model()
    tags = []
    for i, behavior in enumerate(behaviors):
        _, tag = world.channel([model], priority=10 - i, **settings)
        world.mock.always(tag, behavior)
        tags.append(tag)
    return model, tags


def test_every_upstream_failed_is_502(world: World) -> None:
    t = world.tenant()
    model, tags = _model_with_channels(world, [up.fail(500), up.fail(503)])
    resp = _post(world, t.key, {"model": model, "messages": MSG})
    assert resp.status_code == 502
    err = _error(resp)
    assert (err["type"], err["code"]) == ("server_error", "upstream_error")
    assert all(len(world.mock.received(tag)) == 1 for tag in tags)  # both were tried
    assert world.balance(t.user_id) == 100
    wait_until(lambda: world.held(t.user_id) == 0, 5, "the hold to be released")


def test_every_upstream_timed_out_is_504(world: World) -> None:
    t = world.tenant()
    model, _ = _model_with_channels(world, [up.hang(30), up.hang(30)], settings={"timeout_s": 0.5})
    resp = _post(world, t.key, {"model": model, "messages": MSG})
    assert resp.status_code == 504
    assert (_error(resp)["code"]) == "upstream_timeout"
    wait_until(lambda: world.held(t.user_id) == 0, 5, "the hold to be released")
    assert world.balance(t.user_id) == 100


def test_every_upstream_429_is_429_with_retry_after(world: World) -> None:
    t = world.tenant()
    model, _ = _model_with_channels(world, [up.fail(429, "slow down", headers={"retry-after": "7"})])
    resp = _post(world, t.key, {"model": model, "messages": MSG})
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "7"
    err = _error(resp)
    assert (err["type"], err["code"]) == ("requests", "rate_limit_exceeded")


def test_all_channels_cooling_is_503(world: World) -> None:
    t = world.tenant()
    model, tags = _model_with_channels(world, [up.fail(500)])
    for _ in range(2):  # CHATKORE_CHANNEL_FAILURES=2 in tests
        assert _post(world, t.key, {"model": model, "messages": MSG}).status_code == 502
    resp = _post(world, t.key, {"model": model, "messages": MSG})
    assert resp.status_code == 503
    err = _error(resp)
    assert (err["type"], err["code"]) == ("server_error", "no_available_channel")
    assert int(resp.headers["retry-after"]) >= 1
    assert len(world.mock.received(tags[0])) == 2  # the cooling channel was not called


def test_upstream_validation_error_passes_through_scrubbed(world: World) -> None:
    t = world.tenant()
    model = world.model()
    _, tag = world.channel([model])
    leak = f"sk-upstream-{tag}-secret"
    world.mock.always(tag, up.fail(422, f"bad 'foo' for key {leak}", error_type="invalid_request_error",
                                   code="invalid_value", param="foo"))
    resp = _post(world, t.key, {"model": model, "messages": MSG, "foo": 1})
    assert resp.status_code == 422
    err = _error(resp)
    assert err["param"] == "foo" and err["code"] == "invalid_value"
    assert leak not in resp.text and "sk-upstream" not in resp.text
    assert world.mock.received(tag)[-1].body["foo"] == 1  # unknown fields pass through
    wait_until(lambda: world.held(t.user_id) == 0, 5, "the hold to be released")
    assert world.balance(t.user_id) == 100


def test_bad_channel_key_is_never_passed_through(world: World) -> None:
    t = world.tenant()
    model, tags = _model_with_channels(world, [up.fail(401, "Incorrect API key provided: sk-up...xyz"), up.ok()])
    reply = t.client.chat.completions.create(model=model, messages=MSG)
    assert reply.choices[0].message.content
    channels = {c["id"]: c for c in world.admin("GET", "/admin/v1/channels")["data"]}
    bad = next(c for c in channels.values() if c["base_url"].endswith(f"/{tags[0]}/v1"))
    assert bad["health"] == "cooling"
    # Alone, a channel with a bad key gives 502, not the upstream's 401.
    lone, _ = _model_with_channels(world, [up.fail(403, "forbidden")])
    resp = _post(world, t.key, {"model": lone, "messages": MSG})
    assert resp.status_code == 502 and _error(resp)["code"] == "upstream_error"


def test_unknown_route_and_method(world: World) -> None:
    t = world.tenant()
    resp = _post(world, t.key, {}, path="/v1/nothing/here")
    assert resp.status_code == 404 and _error(resp)["code"] == "unknown_url"
    resp = requests.delete(world.url + "/v1/chat/completions", timeout=10)
    assert resp.status_code == 405
    _error(resp)


def test_a_key_in_steady_use_costs_auth_nothing_yet_revocation_bites_within_a_second(world: World) -> None:
    from tests import scrape

    t = world.tenant()
    model, _ = world.served_model()

    def authentications() -> float:
        return scrape.value(scrape.scrape(world.stack, "auth"), "chatkore_grpc_requests_total",
                            method="chatkore.v1.Auth/Authenticate", code="OK")

    t.client.models.list()  # the first call asks auth
    before = authentications()
    for _ in range(30):
        t.client.chat.completions.create(model=model, messages=MSG)
    assert authentications() == before  # remembered by the edge for minutes, not half a second
    world.admin("DELETE", f"/admin/v1/keys/{t.key_id}", expect=204)
    started = time.monotonic()
    wait_until(lambda: _post(world, t.key, {"model": model, "messages": MSG}).status_code == 401, 1.0,
               "the revoked key to stop working")
    assert time.monotonic() - started < 1.0
