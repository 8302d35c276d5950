"""The brute-force guard on the shared limiter, on a clock the test turns."""
from __future__ import annotations

import pytest

from edge.config import trusted_networks
from edge.errors import OpenAIError
from edge.guard import AuthGuard, LimiterCounter, SignupLimit, signup_source
from edge.ratelimit import MemoryLimiter
from services.common.config import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _guard(limit: int) -> tuple[AuthGuard, Clock]:
    clock = Clock()
    return AuthGuard(LimiterCounter(MemoryLimiter(clock=clock), limit), limit, clock=clock), clock


async def test_the_limit_th_failure_blocks_until_the_oldest_is_a_minute_old() -> None:
    guard, clock = _guard(3)
    for _ in range(2):
        await guard.failed("10.0.0.1")
        guard.check("10.0.0.1")
        clock.now += 10
    await guard.failed("10.0.0.1")  # the third within a minute
    with pytest.raises(OpenAIError) as refused:
        guard.check("10.0.0.1")
    assert refused.value.status == 429 and refused.value.code == "rate_limit_exceeded"
    assert refused.value.headers["retry-after"] == "40"  # the first failure leaves the window at +60 s
    guard.check("10.0.0.2")  # others are not affected
    clock.now += 40.5
    guard.check("10.0.0.1")


async def test_no_limit_means_no_blocking() -> None:
    guard, _ = _guard(0)
    for _ in range(100):
        await guard.failed("10.0.0.1")
    guard.check("10.0.0.1")


async def test_blocked_addresses_are_bounded() -> None:
    clock = Clock()
    guard = AuthGuard(LimiterCounter(MemoryLimiter(clock=clock), 1), 1, max_blocked=2, clock=clock)
    for address in ("a", "b", "c"):
        await guard.failed(address)
    guard.check("a")  # the oldest was forgotten to make room
    with pytest.raises(OpenAIError):
        guard.check("c")


def test_trusted_proxies_are_parsed_and_a_bad_entry_stops_the_edge() -> None:
    nets = trusted_networks(" 10.0.0.0/8, 192.168.1.7 ,fc00::/7,")
    assert [str(n) for n in nets] == ["10.0.0.0/8", "192.168.1.7/32", "fc00::/7"]
    assert trusted_networks("") == ()
    with pytest.raises(ConfigError, match="'10.0.0.0/33'"):
        trusted_networks("10.0.0.0/8, 10.0.0.0/33")


@pytest.mark.parametrize(("address", "source"), [
    ("203.0.113.7", "203.0.113.7"),
    ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
    ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
    ("::ffff:203.0.113.7", "203.0.113.7"),
    ("not an address", "not an address"),
])
def test_sign_ups_count_ipv6_by_its_64(address: str, source: str) -> None:
    assert signup_source(address) == source


async def test_a_64_shares_one_sign_up_budget() -> None:
    limit = SignupLimit(MemoryLimiter(clock=Clock()), per_hour=2)
    await limit.admit("2001:db8:7:7::1")
    await limit.admit("2001:db8:7:7:ffff::2")
    with pytest.raises(OpenAIError) as refused:
        await limit.admit("2001:db8:7:7:1234:5678:9abc:def0")  # a third address, the same /64
    assert refused.value.status == 429
    await limit.admit("2001:db8:7:8::1")  # the next /64 is someone else
    await limit.admit("198.51.100.1")
