"""All of auth's SQL.

Of billing's users auth knows only what billing's views show (migration 0016b): whether each
is disabled (`user_standing`) and when that changed (`user_standing_changes`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb


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
    web: bool = False


_KEY_COLUMNS = """
    k.id, k.user_id, k.name, k.hint, k.models, k.credit_limit,
    coalesce(floor(extract(epoch FROM k.expires_at))::bigint, 0), k.rpm, k.tpm, k.ips::text[],
    k.revoked_at IS NOT NULL, extract(epoch FROM k.created_at)::bigint, u.disabled, k.web
"""


async def find_key(conn: AsyncConnection, key_hash: bytes) -> KeyRow | None:
    cur = await conn.execute(
        f"SELECT {_KEY_COLUMNS} FROM api_keys k JOIN user_standing u ON u.user_id = k.user_id WHERE k.key_hash = %s",
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
        SELECT {_KEY_COLUMNS} FROM k JOIN user_standing u ON u.user_id = k.user_id
        """,
        {"uid": user_id, "hash": key_hash, "hint": hint, "name": name, "models": models, "limit": credit_limit,
         "exp": expires_at, "rpm": rpm, "tpm": tpm, "ips": ips},
    )
    return KeyRow(*await cur.fetchone())


async def list_keys(conn: AsyncConnection, user_id: int) -> list[KeyRow]:
    cur = await conn.execute(
        f"SELECT {_KEY_COLUMNS} FROM api_keys k JOIN user_standing u ON u.user_id = k.user_id"
        " WHERE k.user_id = %s ORDER BY k.id",
        (user_id,),
    )
    return [KeyRow(*row) for row in await cur.fetchall()]


async def revoke_key(conn: AsyncConnection, key_id: int, user_id: int = 0) -> bool:
    """Revoke a key (only one of `user_id`'s, and not its chat key, when given); False when there is none."""
    cur = await conn.execute(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())"
        " WHERE id = %(kid)s AND (%(uid)s = 0 OR (user_id = %(uid)s AND NOT web)) RETURNING id",
        {"kid": key_id, "uid": user_id},
    )
    return await cur.fetchone() is not None


async def web_key(conn: AsyncConnection, user_id: int, key_hash: bytes, hint: str) -> KeyRow | None:
    """The user's chat key, made now with `key_hash` if it has none; None when there is no such user."""
    await conn.execute(
        """
        INSERT INTO api_keys (user_id, key_hash, hint, name, web)
        SELECT user_id, %(hash)s, %(hint)s, 'chat page', true FROM user_standing WHERE user_id = %(uid)s
        ON CONFLICT (user_id) WHERE web AND revoked_at IS NULL DO NOTHING
        """,
        {"uid": user_id, "hash": key_hash, "hint": hint},
    )
    cur = await conn.execute(
        f"SELECT {_KEY_COLUMNS} FROM api_keys k JOIN user_standing u ON u.user_id = k.user_id"
        " WHERE k.user_id = %s AND k.web AND k.revoked_at IS NULL",
        (user_id,),
    )
    row = await cur.fetchone()
    return KeyRow(*row) if row else None


# --- console accounts and sessions ---------------------------------------------------


@dataclass(frozen=True)
class AccountRow:
    id: int
    email: str
    password_hash: str
    user_id: int | None   # None while its registration is unfinished
    role: str
    created: int
    pending_age_s: float  # seconds since it was made (matters only while unfinished)
    user_disabled: bool
    email_verified: bool = False
    verification_pending: bool = False  # not verified, and the sign-up bonus waits for it


_ACCOUNT_COLUMNS = """
    a.id, a.email, a.password_hash, a.user_id, a.role, extract(epoch FROM a.created_at)::bigint,
    extract(epoch FROM now() - a.created_at)::float8,
    coalesce(u.disabled, false), a.email_verified_at IS NOT NULL,
    a.bonus_on_verify AND a.email_verified_at IS NULL
"""


async def insert_account(conn: AsyncConnection, email: str, password_hash: str,
                         bonus_on_verify: bool = False) -> AccountRow | None:
    """A new, unfinished account; None when the email is taken."""
    cur = await conn.execute(
        f"""
        WITH a AS (
            INSERT INTO accounts (email, password_hash, bonus_on_verify) VALUES (%s, %s, %s)
            ON CONFLICT (lower(email)) DO NOTHING
            RETURNING *
        )
        SELECT {_ACCOUNT_COLUMNS} FROM a LEFT JOIN user_standing u ON u.user_id = a.user_id
        """,
        (email, password_hash, bonus_on_verify),
    )
    row = await cur.fetchone()
    return AccountRow(*row) if row else None


async def find_account(conn: AsyncConnection, email: str) -> AccountRow | None:
    cur = await conn.execute(
        f"SELECT {_ACCOUNT_COLUMNS} FROM accounts a LEFT JOIN user_standing u ON u.user_id = a.user_id"
        " WHERE lower(a.email) = lower(%s)",
        (email,),
    )
    row = await cur.fetchone()
    return AccountRow(*row) if row else None


async def restart_registration(conn: AsyncConnection, account_id: int, password_hash: str) -> bool:
    """Give an unfinished account a new password (a stale sign-up being done again)."""
    cur = await conn.execute(
        "UPDATE accounts SET password_hash = %s WHERE id = %s AND user_id IS NULL RETURNING id",
        (password_hash, account_id),
    )
    return await cur.fetchone() is not None


async def attach_user(conn: AsyncConnection, account_id: int, user_id: int) -> AccountRow | None:
    """Finish a registration: the account now owns `user_id` (the same one again is fine)."""
    cur = await conn.execute(
        f"""
        WITH a AS (
            UPDATE accounts SET user_id = %(uid)s
            WHERE id = %(aid)s AND (user_id IS NULL OR user_id = %(uid)s)
            RETURNING *
        )
        SELECT {_ACCOUNT_COLUMNS} FROM a LEFT JOIN user_standing u ON u.user_id = a.user_id
        """,
        {"aid": account_id, "uid": user_id},
    )
    row = await cur.fetchone()
    return AccountRow(*row) if row else None


async def sign_in_locked(conn: AsyncConnection, email: str, address: str) -> bool:
    """Whether `address` is locked out of signing in as `email` (lower-cased)."""
    cur = await conn.execute(
        "SELECT locked_until > now() FROM login_failures WHERE email = %s AND address = %s", (email, address))
    row = await cur.fetchone()
    return bool(row and row[0])


async def record_failed_login(conn: AsyncConnection, email: str, address: str, limit: int, lock_s: int) -> None:
    """Count a wrong password for (email, address); the `limit`-th in a row, each within `lock_s` of the
    last, locks that pair for `lock_s`. Pairs quiet for longer are forgotten."""
    await conn.execute(
        """
        WITH counted AS (
            INSERT INTO login_failures AS f (email, address, failures, locked_until)
            VALUES (%(email)s, %(address)s, 1,
                    CASE WHEN %(limit)s <= 1 THEN now() + make_interval(secs => %(lock)s) END)
            ON CONFLICT (email, address) DO UPDATE SET
                failures = CASE WHEN f.last_failed_at < now() - make_interval(secs => %(lock)s) THEN 1
                                ELSE f.failures + 1 END,
                locked_until = CASE WHEN f.last_failed_at >= now() - make_interval(secs => %(lock)s)
                                         AND f.failures + 1 >= %(limit)s
                                    THEN now() + make_interval(secs => %(lock)s) ELSE f.locked_until END,
                last_failed_at = now()
            RETURNING 1
        )
        DELETE FROM login_failures
        WHERE last_failed_at < now() - make_interval(secs => %(lock)s)
          AND (locked_until IS NULL OR locked_until < now())
          AND (email, address) <> (%(email)s, %(address)s)  -- the row just counted (one change per row)
        """,
        {"email": email, "address": address, "limit": limit, "lock": lock_s},
    )


async def clear_failed_logins(conn: AsyncConnection, email: str, address: str) -> None:
    await conn.execute("DELETE FROM login_failures WHERE email = %s AND address = %s", (email, address))


async def record_login(conn: AsyncConnection, account_id: int, new_hash: str | None) -> None:
    await conn.execute(
        "UPDATE accounts SET password_hash = coalesce(%s, password_hash) WHERE id = %s",
        (new_hash, account_id),
    )


async def set_role(conn: AsyncConnection, user_id: int, role: str) -> AccountRow | None:
    cur = await conn.execute(
        f"""
        WITH a AS (UPDATE accounts SET role = %s WHERE user_id = %s RETURNING *)
        SELECT {_ACCOUNT_COLUMNS} FROM a LEFT JOIN user_standing u ON u.user_id = a.user_id
        """,
        (role, user_id),
    )
    row = await cur.fetchone()
    return AccountRow(*row) if row else None


async def accounts_of(conn: AsyncConnection, user_ids: list[int]) -> list[AccountRow]:
    cur = await conn.execute(
        f"SELECT {_ACCOUNT_COLUMNS} FROM accounts a LEFT JOIN user_standing u ON u.user_id = a.user_id"
        " WHERE a.user_id = ANY(%s) ORDER BY a.user_id",
        (user_ids,),
    )
    return [AccountRow(*row) for row in await cur.fetchall()]


async def insert_session(conn: AsyncConnection, token_hash: bytes, account_id: int, csrf_token: str,
                         ttl_s: int) -> int:
    """Store a session; returns when it expires (unix seconds). Expired ones are cleared on the way."""
    await conn.execute(
        "DELETE FROM sessions WHERE token_hash IN"
        " (SELECT token_hash FROM sessions WHERE expires_at < now() LIMIT 100)"
    )
    cur = await conn.execute(
        "INSERT INTO sessions (token_hash, account_id, csrf_token, expires_at)"
        " VALUES (%s, %s, %s, now() + make_interval(secs => %s))"
        " RETURNING floor(extract(epoch FROM expires_at))::bigint",
        (token_hash, account_id, csrf_token, ttl_s),
    )
    return (await cur.fetchone())[0]


async def find_session(conn: AsyncConnection, token_hash: bytes) -> tuple[AccountRow, str, int] | None:
    """(account, CSRF token, expiry) of a live session of a finished account."""
    cur = await conn.execute(
        f"""
        SELECT {_ACCOUNT_COLUMNS}, s.csrf_token, floor(extract(epoch FROM s.expires_at))::bigint
        FROM sessions s JOIN accounts a ON a.id = s.account_id LEFT JOIN user_standing u ON u.user_id = a.user_id
        WHERE s.token_hash = %s AND s.expires_at > now() AND a.user_id IS NOT NULL
        """,
        (token_hash,),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    return AccountRow(*row[:-2]), row[-2], row[-1]


async def delete_session(conn: AsyncConnection, token_hash: bytes) -> None:
    await conn.execute("DELETE FROM sessions WHERE token_hash = %s", (token_hash,))


async def note_standing_changes(conn: AsyncConnection, keep_s: int) -> None:
    """Copy the users billing disabled or enabled again into the feed, each once (under its id in
    billing's view); those of the last few seconds are looked at again, as a change may commit
    after a later one. Several auth replicas may copy at once: the unique id keeps one row."""
    await conn.execute(
        """
        INSERT INTO key_changes (user_id, standing_change)
        SELECT s.user_id, s.id FROM user_standing_changes s
        WHERE (s.id > (SELECT coalesce(max(standing_change), 0) FROM key_changes)
               OR s.at > now() - interval '5 seconds')
          AND s.at > now() - make_interval(secs => %s)
        ON CONFLICT (standing_change) DO NOTHING
        """, (keep_s,))


async def key_changes(conn: AsyncConnection, after: int, limit: int) -> list[tuple[int, int | None, int | None]]:
    """Changes after `after`, and those of the last few seconds again: a change whose
    transaction commits after a later one's must not slip past a reader."""
    cur = await conn.execute(
        "SELECT id, key_id, user_id FROM key_changes"
        " WHERE id > %s OR at > now() - interval '5 seconds' ORDER BY id LIMIT %s", (after, limit))
    return [(r[0], r[1], r[2]) for r in await cur.fetchall()]


async def key_feed_bounds(conn: AsyncConnection) -> tuple[int, int]:
    """(the position before the oldest kept change, the latest position) of the feed."""
    cur = await conn.execute(
        "SELECT (SELECT coalesce(min(id) - 1, -1) FROM key_changes),"
        " (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM key_changes_id_seq)")
    oldest, latest = await cur.fetchone()
    return (latest if oldest < 0 else oldest), latest


async def prune_key_changes(conn: AsyncConnection, keep_s: int) -> None:
    await conn.execute("DELETE FROM key_changes WHERE at < now() - make_interval(secs => %s)", (keep_s,))


@dataclass(frozen=True)
class AuditRow:
    id: int
    at: int
    actor: str
    action: str
    target: str
    status: int
    address: str
    details: dict[str, Any]


_AUDIT_COLUMNS = "id, extract(epoch FROM at)::bigint, actor, action, target, status, address, details"


async def insert_audit(conn: AsyncConnection, *, actor: str, action: str, target: str, status: int, address: str,
                       details: dict[str, Any]) -> AuditRow:
    cur = await conn.execute(
        f"""
        INSERT INTO audit_log (actor, action, target, status, address, details)
        VALUES (%s, %s, %s, %s, %s, %s)
        RETURNING {_AUDIT_COLUMNS}
        """,
        (actor, action, target, status, address, Jsonb(details)),
    )
    return AuditRow(*await cur.fetchone())


async def list_audit(conn: AsyncConnection, limit: int, before_id: int) -> list[AuditRow]:
    cur = await conn.execute(
        f"SELECT {_AUDIT_COLUMNS} FROM audit_log WHERE (%(before)s = 0 OR id < %(before)s)"
        " ORDER BY id DESC LIMIT %(limit)s",
        {"before": before_id, "limit": limit},
    )
    return [AuditRow(*row) for row in await cur.fetchall()]


# --- mailed tokens and passwords ----------------------------------------------------------------


async def insert_account_token(conn: AsyncConnection, token_hash: bytes, account_id: int, purpose: str,
                               ttl_s: int) -> None:
    await conn.execute(
        "INSERT INTO account_tokens (token_hash, account_id, purpose, expires_at)"
        " VALUES (%s, %s, %s, now() + make_interval(secs => %s))",
        (token_hash, account_id, purpose, ttl_s),
    )


async def use_account_token(conn: AsyncConnection, token_hash: bytes, purpose: str) -> int | None:
    """The account of a live, unused token, which is used up by this very statement (so two
    uses racing each other cannot both succeed); None for any other token."""
    cur = await conn.execute(
        "UPDATE account_tokens SET used_at = now()"
        " WHERE token_hash = %s AND purpose = %s AND used_at IS NULL AND expires_at > now()"
        " RETURNING account_id",
        (token_hash, purpose),
    )
    row = await cur.fetchone()
    return row[0] if row else None


async def set_password(conn: AsyncConnection, account_id: int, password_hash: str) -> None:
    await conn.execute(
        "UPDATE accounts SET password_hash = %s WHERE id = %s",
        (password_hash, account_id),
    )


async def end_sessions(conn: AsyncConnection, account_id: int, keep: bytes = b"") -> None:
    """Every session of the account ends, but the one whose hash is `keep`."""
    await conn.execute("DELETE FROM sessions WHERE account_id = %s AND token_hash <> %s", (account_id, keep))


# --- verified addresses ----------------------------------------------------------------------


async def account_of_token(conn: AsyncConnection, token_hash: bytes, purpose: str) -> AccountRow | None:
    """The account of a live, unused token (which stays unused)."""
    cur = await conn.execute(
        f"SELECT {_ACCOUNT_COLUMNS} FROM account_tokens t JOIN accounts a ON a.id = t.account_id"
        " LEFT JOIN user_standing u ON u.user_id = a.user_id"
        " WHERE t.token_hash = %s AND t.purpose = %s AND t.used_at IS NULL AND t.expires_at > now()",
        (token_hash, purpose),
    )
    row = await cur.fetchone()
    return AccountRow(*row) if row else None


async def mark_verified(conn: AsyncConnection, account_id: int) -> AccountRow:
    cur = await conn.execute(
        f"""
        WITH a AS (
            UPDATE accounts SET email_verified_at = coalesce(email_verified_at, now()) WHERE id = %s RETURNING *
        )
        SELECT {_ACCOUNT_COLUMNS} FROM a LEFT JOIN user_standing u ON u.user_id = a.user_id
        """,
        (account_id,),
    )
    return AccountRow(*await cur.fetchone())


async def lock_account_by_user(conn: AsyncConnection, user_id: int) -> AccountRow | None:
    """The account of `user_id`, its row locked until the transaction ends (mails asked for at
    once are counted one after the other)."""
    cur = await conn.execute(
        f"SELECT {_ACCOUNT_COLUMNS} FROM accounts a LEFT JOIN user_standing u ON u.user_id = a.user_id"
        " WHERE a.user_id = %s FOR UPDATE OF a",
        (user_id,),
    )
    row = await cur.fetchone()
    return AccountRow(*row) if row else None


async def recent_tokens(conn: AsyncConnection, account_id: int, purpose: str, within_s: int) -> tuple[int, float]:
    """(tokens of `purpose` made in the last `within_s` seconds, seconds since the newest of any age)."""
    cur = await conn.execute(
        "SELECT count(*) FILTER (WHERE created_at > now() - make_interval(secs => %(w)s)),"
        " coalesce(extract(epoch FROM now() - max(created_at))::float8, 1e9)"
        " FROM account_tokens WHERE account_id = %(aid)s AND purpose = %(p)s",
        {"aid": account_id, "p": purpose, "w": within_s},
    )
    count, age = await cur.fetchone()
    return count, age


# --- the operator's notice -------------------------------------------------------------------


async def get_notice(conn: AsyncConnection) -> tuple[str, str, int, str]:
    cur = await conn.execute(
        "SELECT announcement, contact, extract(epoch FROM updated_at)::bigint, updated_by FROM site_notice")
    row = await cur.fetchone()
    return (row[0], row[1], row[2], row[3]) if row else ("", "", 0, "")


async def set_notice(conn: AsyncConnection, announcement: str, contact: str, by: str) -> None:
    await conn.execute(
        "INSERT INTO site_notice (id, announcement, contact, updated_by) VALUES (1, %(a)s, %(c)s, %(by)s)"
        " ON CONFLICT (id) DO UPDATE SET announcement = excluded.announcement, contact = excluded.contact,"
        " updated_by = excluded.updated_by, updated_at = now()",
        {"a": announcement, "c": contact, "by": by},
    )
