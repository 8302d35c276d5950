"""The operator's notice on every page: an announcement and a contact line, kept as plain
text (control characters out, lengths bounded); the pages put it in as text, never as HTML."""
from __future__ import annotations

import time
import unicodedata

from psycopg_pool import AsyncConnectionPool

from services.auth import store
from services.auth.errors import InvalidRequest

ANNOUNCEMENT_MAX = 2000
CONTACT_MAX = 300


def plain(text: str, limit: int, param: str, *, lines: bool) -> str:
    """`text` without control characters (newlines kept in an announcement), trimmed; refused
    when longer than `limit`."""
    kept = "".join(c for c in text if (c == "\n" and lines) or unicodedata.category(c)[0] != "C")
    kept = "\n".join(line.rstrip() for line in kept.strip().split("\n"))
    if len(kept) > limit:
        raise InvalidRequest(f"'{param}' may have at most {limit} characters", param=param, code="too_long")
    return kept


class Notices:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def get(self) -> tuple[str, str, int, str]:
        async with self._pool.connection() as conn:
            return await store.get_notice(conn)

    async def set(self, announcement: str, contact: str, by: str) -> tuple[str, str, int, str]:
        announcement = plain(announcement, ANNOUNCEMENT_MAX, "announcement", lines=True)
        contact = plain(contact, CONTACT_MAX, "contact", lines=False)
        async with self._pool.connection() as conn:
            await store.set_notice(conn, announcement, contact, by[:200])
        return announcement, contact, int(time.time()), by[:200]
