"""All of inference's SQL: the channels table, and stored Responses API responses."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb


@dataclass(frozen=True)
class ChannelRow:
    id: int
    name: str
    type: str
    base_url: str
    api_key_enc: bytes
    key_hint: str
    models: list[str]
    model_map: dict[str, str]
    priority: int
    weight: int
    enabled: bool
    settings: dict[str, Any]
    created: int
    updated: float


_COLUMNS = """id, name, type, base_url, api_key_enc, key_hint, models, model_map, priority, weight, enabled,
    settings, extract(epoch FROM created_at)::bigint, extract(epoch FROM updated_at)::float8"""

# Columns an update may set, and how each is passed to SQL.
UPDATABLE = ("name", "type", "base_url", "api_key_enc", "key_hint", "models", "model_map", "priority", "weight",
             "enabled", "settings")


def _param(column: str, value: Any) -> Any:
    return Jsonb(value) if column in ("model_map", "settings") else value


async def list_channels(conn: AsyncConnection) -> list[ChannelRow]:
    cur = await conn.execute(f"SELECT {_COLUMNS} FROM channels ORDER BY id")
    return [ChannelRow(*row) for row in await cur.fetchall()]


async def get_channel(conn: AsyncConnection, channel_id: int) -> ChannelRow | None:
    cur = await conn.execute(f"SELECT {_COLUMNS} FROM channels WHERE id = %s", (channel_id,))
    row = await cur.fetchone()
    return ChannelRow(*row) if row else None


async def insert_channel(conn: AsyncConnection, values: dict[str, Any]) -> ChannelRow:
    cur = await conn.execute(
        f"""
        INSERT INTO channels (name, type, base_url, api_key_enc, key_hint, models, model_map, priority, weight,
                              enabled, settings)
        VALUES (%(name)s, %(type)s, %(base_url)s, %(api_key_enc)s, %(key_hint)s, %(models)s, %(model_map)s,
                %(priority)s, %(weight)s, %(enabled)s, %(settings)s)
        RETURNING {_COLUMNS}
        """,
        {k: _param(k, v) for k, v in values.items()},
    )
    return ChannelRow(*await cur.fetchone())


async def update_channel(conn: AsyncConnection, channel_id: int, values: dict[str, Any],
                         no_key: bytes) -> ChannelRow | None:
    """Apply a partial update. A new `base_url` or `type` without a new key replaces the stored key
    by `no_key` (the empty key, sealed): a key is never sent to a destination it was not entered for.
    Decided in the one statement, so a concurrent update cannot slip a key past it."""
    # Every column is always written: the ones not being changed keep their value
    # through COALESCE on a NULL parameter, so the statement text never varies.
    params = {k: _param(k, values[k]) if k in values else None for k in UPDATABLE}
    params["id"] = channel_id
    params["no_key"] = no_key
    cur = await conn.execute(
        f"""
        UPDATE channels SET
            name = COALESCE(%(name)s, name), type = COALESCE(%(type)s, type),
            base_url = COALESCE(%(base_url)s, base_url),
            api_key_enc = CASE
                WHEN %(api_key_enc)s::bytea IS NOT NULL THEN %(api_key_enc)s::bytea
                WHEN %(base_url)s::text IS DISTINCT FROM NULL AND %(base_url)s::text <> base_url
                     OR %(type)s::text IS DISTINCT FROM NULL AND %(type)s::text <> type THEN %(no_key)s::bytea
                ELSE api_key_enc END,
            key_hint = CASE
                WHEN %(key_hint)s::text IS NOT NULL THEN %(key_hint)s::text
                WHEN %(base_url)s::text IS DISTINCT FROM NULL AND %(base_url)s::text <> base_url
                     OR %(type)s::text IS DISTINCT FROM NULL AND %(type)s::text <> type THEN ''
                ELSE key_hint END,
            models = COALESCE(%(models)s, models),
            model_map = COALESCE(%(model_map)s, model_map), priority = COALESCE(%(priority)s, priority),
            weight = COALESCE(%(weight)s, weight), enabled = COALESCE(%(enabled)s, enabled),
            settings = COALESCE(%(settings)s, settings), updated_at = now()
        WHERE id = %(id)s
        RETURNING {_COLUMNS}
        """,
        params,
    )
    row = await cur.fetchone()
    return ChannelRow(*row) if row else None


async def delete_channel(conn: AsyncConnection, channel_id: int) -> bool:
    cur = await conn.execute("DELETE FROM channels WHERE id = %s RETURNING id", (channel_id,))
    return await cur.fetchone() is not None


async def channels_fingerprint(conn: AsyncConnection) -> tuple[int, float]:
    """Changes whenever a channel is added, changed or removed: a cheap poll."""
    cur = await conn.execute(
        "SELECT count(*), coalesce(max(extract(epoch FROM updated_at)), 0)::float8 + coalesce(sum(id), 0)"
        " FROM channels"
    )
    row = await cur.fetchone()
    return int(row[0]), float(row[1])


# --- model aliases ------------------------------------------------------------------------


async def list_aliases(conn: AsyncConnection) -> dict[str, str]:
    cur = await conn.execute("SELECT name, target FROM model_aliases ORDER BY name")
    return {name: target for name, target in await cur.fetchall()}


async def set_alias(conn: AsyncConnection, name: str, target: str) -> None:
    await conn.execute(
        """
        INSERT INTO model_aliases (name, target) VALUES (%s, %s)
        ON CONFLICT (name) DO UPDATE SET target = excluded.target, updated_at = now()
        """,
        (name, target),
    )


async def delete_alias(conn: AsyncConnection, name: str) -> bool:
    cur = await conn.execute("DELETE FROM model_aliases WHERE name = %s", (name,))
    return cur.rowcount > 0


async def aliases_fingerprint(conn: AsyncConnection) -> str:
    """Changes whenever an alias is added, changed or removed."""
    cur = await conn.execute("SELECT coalesce(md5(string_agg(name || '=' || target, ',' ORDER BY name)), '')"
                             " FROM model_aliases")
    row = await cur.fetchone()
    return str(row[0])


# --- stored Responses API responses (each its user's only) ---------------------------


async def insert_response(conn: AsyncConnection, response_id: str, user_id: int, model: str,
                          items: list[dict[str, Any]], response: dict[str, Any]) -> bool:
    """Store a response; False when one of that id was there already (a retried call)."""
    cur = await conn.execute(
        "INSERT INTO responses (id, user_id, model, input, response) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (id) DO NOTHING RETURNING id",
        (response_id, user_id, model, Jsonb(items), Jsonb(response)),
    )
    return await cur.fetchone() is not None


async def get_response(conn: AsyncConnection, user_id: int,
                       response_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
    cur = await conn.execute("SELECT input, response FROM responses WHERE id = %s AND user_id = %s",
                             (response_id, user_id))
    row = await cur.fetchone()
    return (row[0], row[1]) if row else None


async def delete_response(conn: AsyncConnection, user_id: int, response_id: str) -> bool:
    cur = await conn.execute("DELETE FROM responses WHERE id = %s AND user_id = %s RETURNING id",
                             (response_id, user_id))
    return await cur.fetchone() is not None


async def update_response(conn: AsyncConnection, response_id: str, response: dict[str, Any]) -> bool:
    """A background response's new state, unless its user cancelled it meanwhile (a cancel stands)."""
    cur = await conn.execute(
        "UPDATE responses SET response = %s WHERE id = %s AND response->>'status' IN ('queued', 'in_progress')"
        " RETURNING id", (Jsonb(response), response_id))
    return await cur.fetchone() is not None


async def response_status(conn: AsyncConnection, response_id: str) -> str | None:
    cur = await conn.execute("SELECT response->>'status' FROM responses WHERE id = %s", (response_id,))
    row = await cur.fetchone()
    return row[0] if row else None


async def cancel_response(conn: AsyncConnection, user_id: int, response_id: str) -> dict[str, Any] | None:
    """Mark the user's running background response cancelled; the response as it now stands."""
    cur = await conn.execute(
        "UPDATE responses SET response = jsonb_set(response, '{status}', '\"cancelled\"')"
        " WHERE id = %s AND user_id = %s AND response->>'status' IN ('queued', 'in_progress')"
        " AND response->>'background' = 'true' RETURNING response", (response_id, user_id))
    row = await cur.fetchone()
    return row[0] if row else None
