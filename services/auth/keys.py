"""Auth's domain: issuing, checking and revoking API keys; the admin key."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from dataclasses import dataclass

import psycopg
from psycopg_pool import AsyncConnectionPool

from services.auth import store
from services.auth.errors import InvalidApiKey, InvalidRequest, NotFound, PermissionDenied
from services.auth.store import KeyRow
from services.common.config import Secret

log = logging.getLogger(__name__)

KEY_PREFIX = "sk-"
FEED_PAGE = 1000      # changes read at once; more means the caller should start over
FEED_KEEP_S = 3600    # how long the change feed remembers
_WRONG_KEY = ("Incorrect API key provided. You can find your API key in the chatkore console, or ask the"
              " operator for one.")


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def new_key() -> str:
    # 36 random bytes -> 48 url-safe characters: 288 bits, beyond any brute force.
    return KEY_PREFIX + secrets.token_urlsafe(36)


def hint_of(key: str) -> str:
    return f"{key[:7]}...{key[-4:]}"


@dataclass(frozen=True)
class KeySpec:
    user_id: int
    name: str
    models: list[str]
    credit_limit: int
    expires_at: int
    rpm: int
    tpm: int
    ips: list[str]


def _validate(spec: KeySpec) -> list[str]:
    """Check a new key's settings; returns its address list in canonical form."""
    if len(spec.name) > 200:
        raise InvalidRequest("'name' must be at most 200 characters", param="name")
    if len(spec.models) > 500 or any(not m or len(m) > 200 for m in spec.models):
        raise InvalidRequest("'models' must be a list of model names", param="models")
    if spec.credit_limit < 0:
        raise InvalidRequest("'credit_limit' cannot be negative", param="credit_limit")
    if spec.rpm < 0 or spec.tpm < 0:
        raise InvalidRequest("'rpm' and 'tpm' cannot be negative", param="rpm" if spec.rpm < 0 else "tpm")
    if spec.expires_at and spec.expires_at <= time.time():
        raise InvalidRequest("'expires_at' must be in the future", param="expires_at")
    if len(spec.ips) > 100:
        raise InvalidRequest("'ips' may list at most 100 networks", param="ips")
    networks = []
    for ip in spec.ips:
        try:
            networks.append(str(ipaddress.ip_network(ip, strict=False)))
        except ValueError:
            raise InvalidRequest(f"'ips' has an invalid network: {ip[:60]!r}", param="ips") from None
    return networks


def _address_allowed(ips: list[str], client_ip: str) -> bool:
    if not ips:
        return True
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in ipaddress.ip_network(net) for net in ips)


class Keys:
    def __init__(self, pool: AsyncConnectionPool, admin_key: Secret) -> None:
        self._pool = pool
        self._admin_key = admin_key.reveal().encode()

    async def authenticate(self, api_key: str, client_ip: str) -> KeyRow:
        # Unknown, revoked, expired and disabled answer the same words after the same
        # work (one hash, one indexed lookup), so the reply says nothing about which.
        digest = key_hash(api_key[:512])
        async with self._pool.connection() as conn:
            row = await store.find_key(conn, digest)
        now = time.time()
        if (
            row is None
            or not api_key.startswith(KEY_PREFIX)
            or row.revoked
            or row.user_disabled
            or row.web  # the chat page's key has no plaintext anyone holds; only a session reaches it
            or (row.expires_at and row.expires_at <= now)
        ):
            raise InvalidApiKey(_WRONG_KEY)
        if not _address_allowed(row.ips, client_ip):
            raise InvalidApiKey("This API key may not be used from your address.")
        return row

    def authorize_admin(self, bearer: str) -> None:
        if not self._admin_key or not hmac.compare_digest(bearer.encode("utf-8", "surrogatepass"), self._admin_key):
            raise PermissionDenied("A valid admin key is required.")

    async def create(self, spec: KeySpec) -> tuple[KeyRow, str]:
        ips = _validate(spec)
        key = new_key()
        async with self._pool.connection() as conn:
            try:
                row = await store.insert_key(
                    conn, user_id=spec.user_id, key_hash=key_hash(key), hint=hint_of(key), name=spec.name,
                    models=spec.models, credit_limit=spec.credit_limit, expires_at=spec.expires_at,
                    rpm=spec.rpm, tpm=spec.tpm, ips=ips,
                )
            except psycopg.errors.ForeignKeyViolation:
                raise NotFound(f"No user with id {spec.user_id}") from None
        return row, key

    async def list(self, user_id: int) -> list[KeyRow]:
        async with self._pool.connection() as conn:
            return await store.list_keys(conn, user_id)

    async def changes(self, after: int) -> tuple[int, list[tuple[int, int, int]], bool]:
        """(latest position, changes as (id, key id, user id), reset) of the key change feed."""
        async with self._pool.connection() as conn:
            await store.note_standing_changes(conn, FEED_KEEP_S)
            oldest, latest = await store.key_feed_bounds(conn)
            if after <= 0 or after < oldest or after > latest:
                return latest, [], after > 0
            rows = await store.key_changes(conn, after, FEED_PAGE)
        if len(rows) == FEED_PAGE:  # more than a caller should sift through: start over
            return latest, [], True
        return max(latest, after), [(i, k or 0, u or 0) for i, k, u in rows], False

    async def prune_changes_forever(self) -> None:
        """Keep the feed short: a caller an hour behind starts over anyway."""
        while True:
            try:
                async with self._pool.connection() as conn:
                    await store.prune_key_changes(conn, FEED_KEEP_S)
            except Exception as exc:  # the database may be away; try next round
                log.warning("pruning key changes failed: %s", exc)
            await asyncio.sleep(60)

    async def revoke(self, key_id: int, user_id: int = 0) -> None:
        """Revoke a key; with `user_id`, only one of that user's (another's answers as if missing)."""
        async with self._pool.connection() as conn:
            if not await store.revoke_key(conn, key_id, user_id):
                raise NotFound(f"No API key with id {key_id}")

    async def web_key(self, user_id: int) -> KeyRow:
        """The user's chat-page key; its plaintext is thrown away at once, so no bearer can use it."""
        key = new_key()
        async with self._pool.connection() as conn:
            row = await store.web_key(conn, user_id, key_hash(key), "chat page")
        if row is None:
            raise NotFound(f"No user with id {user_id}")
        return row
