"""All of auth's SQL."""
from __future__ import annotations

from dataclasses import dataclass

from psycopg import AsyncConnection


@dataclass(frozen=True)
class KeyRow:
    id: int
    user_id: int
    name: str
    hint: str
    models: list[str]
    credit_limit: int
    expires_at: int       # unix seconds, 0 = never
    rpm: int
    tpm: int
    ips: list[str]
    revoked: bool
    created: int
    user_disabled: bool


_KEY_COLUMNS = """
    k.id, k.user_id, k.name, k.hint, k.models, k.credit_limit,
    coalesce(extract(epoch FROM k.expires_at)::bigint, 0), k.rpm, k.tpm, k.ips::text[],
    k.revoked_at IS NOT NULL, extract(epoch FROM k.created_at)::bigint, u.disabled
"""


async def find_key(conn: AsyncConnection, key_hash: bytes) -> KeyRow | None:
    cur = await conn.execute(
        f"SELECT {_KEY_COLUMNS} FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.key_hash = %s",
        (key_hash,),
    )
    row = await cur.fetchone()
    return KeyRow(*row) if row else None


async def insert_key(conn: AsyncConnection, *, user_id: int, key_hash: bytes, hint: str, name: str,
                     models: list[str], credit_limit: int, expires_at: int, rpm: int, tpm: int,
                     ips: list[str]) -> KeyRow:
    cur = await conn.execute(
        f"""
        WITH k AS (
            INSERT INTO api_keys (user_id, key_hash, hint, name, models, credit_limit, expires_at, rpm, tpm, ips)
            VALUES (%(uid)s, %(hash)s, %(hint)s, %(name)s, %(models)s, %(limit)s,
                    CASE WHEN %(exp)s::bigint > 0 THEN to_timestamp(%(exp)s) END,
                    %(rpm)s, %(tpm)s, %(ips)s::cidr[])
            RETURNING *
        )
        SELECT {_KEY_COLUMNS} FROM k JOIN users u ON u.id = k.user_id
        """,
        {"uid": user_id, "hash": key_hash, "hint": hint, "name": name, "models": models, "limit": credit_limit,
         "exp": expires_at, "rpm": rpm, "tpm": tpm, "ips": ips},
    )
    return KeyRow(*await cur.fetchone())


async def list_keys(conn: AsyncConnection, user_id: int) -> list[KeyRow]:
    cur = await conn.execute(
        f"SELECT {_KEY_COLUMNS} FROM api_keys k JOIN users u ON u.id = k.user_id"
        " WHERE k.user_id = %s ORDER BY k.id",
        (user_id,),
    )
    return [KeyRow(*row) for row in await cur.fetchall()]


async def revoke_key(conn: AsyncConnection, key_id: int) -> bool:
    """Revoke a key; False when there is no such key."""
    cur = await conn.execute(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = %s RETURNING id", (key_id,)
    )
    return await cur.fetchone() is not None
