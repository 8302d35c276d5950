"""Per-key rpm and tpm at the edge: OpenAI's headers, 429s that cost nothing, and one limit
shared by two edge processes through Redis."""
from __future__ import annotations

import re

import openai
import pytest
import requests

from tests import openai_tokens
from tests.console import PASSWORD, ConsoleUser
from tests.world import World
from tools import redis_server
from tools.stack import wait_until

MSG = [{"role": "user", "content": "hello"}]
DURATION = re.compile(r"^(\d+ms|(\d+m)?\d+(\.\d+)?s)$")


def _chat(url: str, key: str, model: str, **extra) -> requests.Response:
    return requests.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                         json={"model": model, "messages": MSG, **extra})


def test_rpm_sixth_request_in_a_minute_is_429(world: World) -> None:
    model, _ = world.served_model()
    t = world.tenant(rpm=5)
    seen = []
    for i in range(5):
        resp = _chat(world.url, t.key, model, stream=i % 2 == 1)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-ratelimit-limit-requests"] == "5"
        assert DURATION.match(resp.headers["x-ratelimit-reset-requests"])
        seen.append(int(resp.headers["x-ratelimit-remaining-requests"]))
    assert seen == [4, 3, 2, 1, 0]
    resp = _chat(world.url, t.key, model)
    assert resp.status_code == 429
    assert resp.json()["error"]["type"] == "requests" and resp.json()["error"]["code"] == "rate_limit_exceeded"
    assert "Limit 5, Used 5, Requested 1" in resp.json()["error"]["message"]
    assert resp.headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(resp.headers["retry-after"]) <= 60 and int(resp.headers["retry-after-ms"]) > 0
    with pytest.raises(openai.RateLimitError) as err:
        t.client.chat.completions.create(model=model, messages=MSG)
    assert err.value.code == "rate_limit_exceeded"
    # The refused calls held and charged nothing.
    assert len(world.usage(t.user_id)) == 5 and world.held(t.user_id) == 0
    # Other keys of the same user have their own window; a key without limits sends no headers.
    other = world.key(t.user_id, rpm=5)
    assert _chat(world.url, other["key"], model).status_code == 200
    unlimited = world.key(t.user_id)
    assert "x-ratelimit-limit-requests" not in _chat(world.url, unlimited["key"], model).headers


def test_tpm_counts_an_estimate_then_the_real_usage(world: World) -> None:
    model, _ = world.served_model()
    t = world.tenant(tpm=1000)
    prompt = [{"role": "user", "content": "x" * 400}]
    # Estimate: 400 characters / 4 + 4 for the message + max_tokens.
    first = _chat(world.url, t.key, model, messages=prompt, max_tokens=200)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-tokens"] == "1000"
    assert first.headers["x-ratelimit-remaining-tokens"] == str(1000 - 304)
    used_a = first.json()["usage"]["total_tokens"]
    # The prompt as OpenAI counts it and the mock's answer ("This is a test! You said: x...x", cut at 200).
    answer_tokens = openai_tokens.text_tokens("This is a test! You said: " + "x" * 400, model)
    assert used_a == openai_tokens.chat_prompt_tokens(prompt, model) + min(200, answer_tokens) < 304
    # The first call's entry now holds its real usage, not its estimate.
    second = _chat(world.url, t.key, model, messages=prompt, max_tokens=200, stream=True)
    assert second.status_code == 200 and second.text.endswith("data: [DONE]\n\n")
    assert second.headers["x-ratelimit-remaining-tokens"] == str(1000 - used_a - 304)
    # Too large for the limit at all, and then too large for what is left.
    huge = _chat(world.url, t.key, model, messages=prompt, max_tokens=900)
    assert huge.status_code == 429 and huge.json()["error"]["type"] == "tokens"
    assert "Request too large" in huge.json()["error"]["message"]
    rows = wait_until(lambda: len(world.usage(t.user_id)) == 2 and world.usage(t.user_id), 5, "both usage rows")
    used_b = rows[0]["prompt_tokens"] + rows[0]["completion_tokens"]
    third = _chat(world.url, t.key, model, messages=prompt, max_tokens=200)
    assert third.status_code == 200
    left = int(third.headers["x-ratelimit-remaining-tokens"])
    assert left == 1000 - used_a - used_b - 304
    left = 1000 - used_a - used_b - third.json()["usage"]["total_tokens"]  # after its true-up
    over = _chat(world.url, t.key, model, messages=prompt, max_tokens=left - 104 + 1)  # one token too many
    assert over.status_code == 429 and over.json()["error"]["type"] == "tokens"
    assert over.json()["error"]["code"] == "rate_limit_exceeded" and int(over.headers["retry-after"]) >= 1
    assert over.headers["x-ratelimit-remaining-tokens"] == str(left)
    exact = _chat(world.url, t.key, model, messages=prompt, max_tokens=left - 104)  # fits exactly
    assert exact.status_code == 200 and exact.headers["x-ratelimit-remaining-tokens"] == "0"
    assert len(world.usage(t.user_id)) == 4


def test_two_edges_share_the_limit_through_redis(world: World, make_edge, redis_servers) -> None:
    # Two edges of their own, with REDIS_URL, on the shared stack's services (the limit is the edge's).
    redis_url = next(iter(redis_servers.values()))
    first, second = (make_edge(world.stack, {"REDIS_URL": redis_url}, name=f"redis-{i}") for i in (1, 2))
    model, _ = world.served_model()
    t = world.tenant(rpm=5)
    urls = [first.url, second.url]
    answers = [_chat(urls[i % 2], t.key, model) for i in range(6)]
    assert [r.status_code for r in answers] == [200] * 5 + [429]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in answers] == ["4", "3", "2", "1", "0", "0"]
    assert _chat(urls[0], t.key, model).status_code == 429  # the edge that took 3 is full too


def test_with_redis_down_signups_are_refused_and_api_limits_fail_open(world: World, make_edge, mock,
                                                                     tmp_path) -> None:
    """Sign-ups carry free credits: with REDIS_URL set and Redis away their limit cannot be
    kept, so they get 503 until it is back. API calls keep flowing, unlimited (README: Rate limits)."""
    redis = redis_server.start(next(iter(redis_server.binaries().values())), tmp_path / "redis")
    try:
        # An edge of its own on the shared stack's services: Redis and the sign-up limit are the edge's.
        stack = make_edge(world.stack, {"REDIS_URL": redis.url, "CHATKORE_SIGNUPS_PER_HOUR": "50"}, name="redis-down")
        w = World(stack, mock)
        model, _ = w.served_model()
        t = w.tenant(rpm=2)
        ConsoleUser(stack.url).register()  # Redis up: a sign-up passes its limit
        redis.stop()
        assert [_chat(stack.url, t.key, model).status_code for _ in range(3)] == [200, 200, 200]  # rpm 2, open
        late = ConsoleUser(stack.url)
        refused = late.call("POST", "/api/register", {"email": late.email, "password": PASSWORD})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "signups_unavailable"
        assert int(refused.headers["retry-after"]) > 0
        login = late.call("POST", "/api/login", {"email": late.email, "password": PASSWORD})
        assert login.status_code == 401  # no account was made
        assert len(w.usage(t.user_id)) == 3
    finally:
        if redis.process.poll() is None:
            redis.stop()
