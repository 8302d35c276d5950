"""Console passwords: argon2id through argon2-cffi, on threads of their own, bounded in memory.

Each hash holds `memory_kib` while it runs, and at most `at_once` run: the threads of a
pool of that size are the only place one runs. A sign-in whose caller goes away stops
waiting, but its hash runs on to the end in its thread and keeps that slot, so no amount of
cancelling lets more hashes run at once (a semaphore released on cancellation would).
Waiting sign-ins hold only their request. Size `memory_kib × at_once` to the pod's memory
limit, with room for the process itself (README: Security).
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_LENGTH = 8
MAX_LENGTH = 1024

T = TypeVar("T")


class Passwords:
    def __init__(self, *, memory_kib: int, time_cost: int, at_once: int) -> None:
        # Parallelism 4 is argon2-cffi's default: the lanes share the one `memory_kib`.
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=4)
        self._threads = ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="argon2")
        # Verified against when the email is unknown, so a wrong email costs what a wrong password does.
        self._dummy = self._hasher.hash("chatkore: no such account")

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        # Cancelled while queued, the hash never starts; cancelled while running, it finishes in its thread.
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)

    async def hash(self, password: str) -> str:
        return await self._run(self._hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        """True when `password` matches `stored`; None stands for an unknown account (always False)."""
        try:
            return await self._run(self._hasher.verify, stored or self._dummy, password) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        """True when `stored` was made with weaker settings than today's."""
        try:
            return self._hasher.check_needs_rehash(stored)
        except InvalidHashError:
            return True

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
