"""Stored responses: kept per user in PostgreSQL for previous_response_id and GET /v1/responses/{id}."""
from __future__ import annotations

import logging
from typing import Any

from psycopg_pool import AsyncConnectionPool

from services.inference import store
from services.inference.errors import InvalidRequest, NotFound
from services.inference.responses.reply import item_id

log = logging.getLogger(__name__)

MAX_ITEMS_PAGE = 100


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id[:100]}' not found.", param="response_id")


def _with_ids(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Input items as listed back: each with an id, as OpenAI lists them."""
    out = []
    for item in items:
        if not isinstance(item.get("id"), str):
            prefix = "msg" if item.get("type", "message") == "message" else "item"
            item = {"id": item_id(prefix), **item}
        out.append(item)
    return out


class ResponseBook:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def keep(self, *, user_id: int, model: str, items: list[dict[str, Any]], response: dict[str, Any]) -> bool:
        """Store a response; False when one of its id was stored already (a retried call)."""
        async with self._pool.connection() as conn:
            return await store.insert_response(conn, response["id"], user_id, model, _with_ids(items), response)

    async def finish(self, response_id: str, response: dict[str, Any]) -> bool:
        """A background response's new state (in progress, or how it ended); False if it was cancelled."""
        async with self._pool.connection() as conn:
            return await store.update_response(conn, response_id, response)

    async def status(self, response_id: str) -> str | None:
        async with self._pool.connection() as conn:
            return await store.response_status(conn, response_id)

    async def cancel(self, user_id: int, response_id: str) -> dict[str, Any]:
        """Cancel the user's background response while it runs; one that has ended is answered as it is."""
        async with self._pool.connection() as conn:
            cancelled = await store.cancel_response(conn, user_id, response_id)
            if cancelled is not None:
                return cancelled
            found = await store.get_response(conn, user_id, response_id)
        if found is None:
            raise _not_found(response_id)
        if found[1].get("background") is not True:
            raise InvalidRequest("Only responses created with background=true can be cancelled.",
                                 param="response_id")
        return found[1]

    async def conversation(self, user_id: int, response_id: str) -> list[dict[str, Any]] | None:
        """What the model saw and said in that response: the next turn's history."""
        async with self._pool.connection() as conn:
            found = await store.get_response(conn, user_id, response_id)
        if found is None:
            return None
        items, response = found
        output = response.get("output")
        return items + [o for o in output if isinstance(o, dict)] if isinstance(output, list) else items

    async def get(self, user_id: int, response_id: str) -> dict[str, Any]:
        async with self._pool.connection() as conn:
            found = await store.get_response(conn, user_id, response_id)
        if found is None:
            raise _not_found(response_id)
        return found[1]

    async def delete(self, user_id: int, response_id: str) -> dict[str, Any]:
        async with self._pool.connection() as conn:
            if not await store.delete_response(conn, user_id, response_id):
                raise _not_found(response_id)
        return {"id": response_id, "object": "response", "deleted": True}

    async def input_items(self, user_id: int, response_id: str, *, after: str, limit: int,
                          ascending: bool) -> dict[str, Any]:
        async with self._pool.connection() as conn:
            found = await store.get_response(conn, user_id, response_id)
        if found is None:
            raise _not_found(response_id)
        items = found[0] if ascending else list(reversed(found[0]))
        if after:
            ids = [i.get("id") for i in items]
            items = items[ids.index(after) + 1:] if after in ids else []
        limit = min(max(limit or 20, 1), MAX_ITEMS_PAGE)
        page = items[:limit]
        return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}
