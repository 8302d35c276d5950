"""Brute-force guard: failed authentications counted per source address.

An address that presented `limit` wrong keys (API or admin) within a minute gets
429 on every authenticated call until the oldest failure is a minute old, so
guessing keys costs time even before the keys' 288 bits do.

The counting sits behind `FailureWindow`, a two-method interface, so a shared
store (the Redis-backed limiter, for several edge replicas) can replace the
in-process one without touching the guard.
"""
from __future__ import annotations

import time
from collections import OrderedDict, deque
from typing import Protocol

from edge.errors import OpenAIError

WINDOW_S = 60.0


class FailureWindow(Protocol):
    async def recent(self, subject: str) -> tuple[int, float]:
        """Failures of `subject` in the last minute, and seconds until the oldest of them expires."""

    async def add(self, subject: str) -> None:
        """Count one failure of `subject` now."""


class LocalWindow:
    """A sliding one-minute window per subject, in this process, bounded in memory:
    at most `keep` timestamps per subject and `max_subjects` subjects (oldest dropped)."""

    def __init__(self, keep: int, max_subjects: int = 100_000, window_s: float = WINDOW_S) -> None:
        self._keep = max(1, keep)
        self._max = max_subjects
        self._window_s = window_s
        self._stamps: OrderedDict[str, deque[float]] = OrderedDict()

    def _live(self, subject: str, now: float) -> deque[float] | None:
        stamps = self._stamps.get(subject)
        if stamps is None:
            return None
        while stamps and stamps[0] <= now - self._window_s:
            stamps.popleft()
        if not stamps:
            del self._stamps[subject]
            return None
        return stamps

    async def recent(self, subject: str) -> tuple[int, float]:
        now = time.monotonic()
        stamps = self._live(subject, now)
        if stamps is None:
            return 0, 0.0
        return len(stamps), stamps[0] + self._window_s - now

    async def add(self, subject: str) -> None:
        now = time.monotonic()
        stamps = self._live(subject, now)
        if stamps is None:
            if len(self._stamps) >= self._max:
                self._stamps.popitem(last=False)
            stamps = self._stamps[subject] = deque(maxlen=self._keep)
        stamps.append(now)
        self._stamps.move_to_end(subject)


class AuthGuard:
    def __init__(self, window: FailureWindow, limit: int) -> None:
        self._window = window
        self._limit = limit  # 0 = no limit

    async def check(self, address: str) -> None:
        """429 when `address` failed too often in the last minute."""
        if self._limit <= 0:
            return
        count, wait_s = await self._window.recent(address)
        if count >= self._limit:
            raise OpenAIError(
                429, "Too many failed authentication attempts from your address. Retry after a short wait.",
                type="requests", code="rate_limit_exceeded",
                headers={"retry-after": str(max(1, round(wait_s + 0.5)))},
            )

    async def failed(self, address: str) -> None:
        if self._limit > 0:
            await self._window.add(address)
