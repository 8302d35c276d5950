"""The audit log of admin and operator changes: kept in PostgreSQL, bounded in what one entry holds."""
from __future__ import annotations

import json
from typing import Any

from psycopg_pool import AsyncConnectionPool

from services.auth import store
from services.auth.errors import InvalidRequest
from services.auth.store import AuditRow

MAX_DETAILS_BYTES = 16 * 1024
MAX_PAGE = 500


def _clip(text: str, limit: int) -> str:
    return text[:limit]


class AuditLog:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def record(self, *, actor: str, action: str, target: str, status: int, address: str,
                     details_json: str) -> AuditRow:
        if not actor or not action:
            raise InvalidRequest("An audit entry names its actor and its action.")
        try:
            details: Any = json.loads(details_json or "{}")
        except ValueError:
            raise InvalidRequest("'details_json' must be a JSON object.") from None
        if not isinstance(details, dict) or len(details_json) > MAX_DETAILS_BYTES:
            raise InvalidRequest(f"'details_json' must be a JSON object of at most {MAX_DETAILS_BYTES} bytes.")
        async with self._pool.connection() as conn:
            return await store.insert_audit(conn, actor=_clip(actor, 300), action=_clip(action, 300),
                                            target=_clip(target, 200), status=status, address=_clip(address, 64),
                                            details=details)

    async def list(self, limit: int, before_id: int) -> list[AuditRow]:
        async with self._pool.connection() as conn:
            return await store.list_audit(conn, max(1, min(limit or 100, MAX_PAGE)), max(0, before_id))
