"""Brute-force guard: failed authentications counted per source address.

An address that presents `limit` wrong keys (API or admin) within a minute gets 429
on every authenticated call, the right key included, until its oldest failure is a
minute old: guessing keys costs time even before the keys' 288 bits do.

Failures are counted by the shared rate limiter (`edge.ratelimit`): in this process,
or in Redis for every edge replica when REDIS_URL is set. Only failures touch it; the
check on every call reads a local list of blocked addresses, which a replica fills
the first time it sees a failure from an address that is over the limit everywhere.
"""
from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from edge.errors import OpenAIError
from edge.ratelimit import Limiter, Rule

WINDOW_S = 60.0


class FailureCounter(Protocol):
    async def add(self, subject: str) -> float:
        """Count one failure of `subject` now. Seconds until it may try again, or 0 while under the limit."""


class LimiterCounter:
    """Failures in a sliding one-minute window of the shared limiter."""

    def __init__(self, limiter: Limiter, limit: int, window_s: float = WINDOW_S) -> None:
        self._limiter = limiter
        # A rule one smaller refuses exactly the limit-th failure: that one blocks.
        self._rule = Rule("failures", max(0, limit - 1), window_s=window_s)

    async def add(self, subject: str) -> float:
        verdict = await self._limiter.hit(f"auth-failures:{subject}", [self._rule])
        if verdict.admitted:
            return 0.0
        return max(1.0, verdict.windows[0].retry_after_s)


class AuthGuard:
    def __init__(self, counter: FailureCounter, limit: int, *, max_blocked: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._counter = counter
        self._limit = limit  # 0 = no limit
        self._max_blocked = max_blocked
        self._clock = clock
        self._blocked: OrderedDict[str, float] = OrderedDict()  # address -> blocked until (clock)

    def check(self, address: str) -> None:
        """429 while `address` is blocked."""
        until = self._blocked.get(address)
        if until is None:
            return
        wait = until - self._clock()
        if wait <= 0:
            del self._blocked[address]
            return
        raise OpenAIError(
            429, "Too many failed authentication attempts from your address. Retry after a short wait.",
            type="requests", code="rate_limit_exceeded", headers={"retry-after": str(max(1, math.ceil(wait)))},
        )

    async def failed(self, address: str) -> None:
        if self._limit <= 0:
            return
        wait = await self._counter.add(address)
        if wait > 0:
            if len(self._blocked) >= self._max_blocked:
                self._blocked.popitem(last=False)
            self._blocked[address] = self._clock() + wait
            self._blocked.move_to_end(address)


def signup_source(address: str) -> str:
    """Who a sign-up is counted against: an IPv4 address, or an IPv6 address's /64 (one
    customer's network hands out a whole /64, so single IPv6 addresses cost nothing to rotate)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class SignupLimit:
    """At most `per_hour` console sign-ups from one address (IPv6: one /64) an hour: each
    comes with free credits, so making accounts in bulk must cost time."""

    def __init__(self, limiter: Limiter, per_hour: int) -> None:
        self._limiter = limiter
        self._rule = Rule("signups", per_hour, window_s=3600.0)
        self._on = per_hour > 0

    async def admit(self, address: str) -> None:
        if not self._on:
            return
        verdict = await self._limiter.hit(f"signups:{signup_source(address)}", [self._rule])
        if not verdict.enforced:
            # API limits fail open when Redis is away (a paying call must not fail for it); a sign-up
            # carries free credits, so without its limit it is refused until Redis is back.
            raise OpenAIError(503, "Sign-ups are paused for a moment. Try again shortly.", type="server_error",
                              code="signups_unavailable", headers={"retry-after": "30"})
        if not verdict.admitted:
            wait = max(1, math.ceil(verdict.windows[0].retry_after_s))
            raise OpenAIError(429, "Too many sign-ups from your address. Try again later.", type="requests",
                              code="rate_limit_exceeded", headers={"retry-after": str(wait)})
