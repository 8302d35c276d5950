"""Console passwords: argon2id through argon2-cffi, off the event loop and bounded in memory."""
from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# argon2-cffi's defaults (RFC 9106's low-memory profile: 3 passes over 64 MiB) are the
# slow part of a sign-in on purpose; a few at a time keep memory bounded under a flood.
_HASHER = PasswordHasher()
_AT_ONCE = asyncio.Semaphore(4)
# Verified against when the email is unknown, so a wrong email costs what a wrong password does.
_DUMMY = _HASHER.hash("chatkore: no such account")

MIN_LENGTH = 8
MAX_LENGTH = 1024


async def hash_password(password: str) -> str:
    async with _AT_ONCE:
        return await asyncio.to_thread(_HASHER.hash, password)


async def verify(stored: str | None, password: str) -> bool:
    """True when `password` matches `stored`; None stands for an unknown account (always False)."""
    async with _AT_ONCE:
        try:
            return await asyncio.to_thread(_HASHER.verify, stored or _DUMMY, password) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


def needs_rehash(stored: str) -> bool:
    """True when `stored` was made with weaker settings than today's."""
    try:
        return _HASHER.check_needs_rehash(stored)
    except InvalidHashError:
        return True
