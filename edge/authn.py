"""Who is calling: the bearer key, resolved by the auth service and remembered until it changes."""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import time

import grpc
from aiohttp import web

from chatkore.v1 import auth_pb2, auth_pb2_grpc
from edge.errors import OpenAIError

log = logging.getLogger(__name__)

NO_KEY = OpenAIError(
    401,
    "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer"
    " auth (i.e. Authorization: Bearer YOUR_KEY).",
    code="invalid_api_key",
)


def bearer(request: web.Request) -> str:
    """The token of `Authorization: Bearer KEY`, forgiving case and stray whitespace."""
    header = request.headers.get("Authorization", "").strip()
    if not header:
        raise OpenAIError(NO_KEY.status, NO_KEY.message, code=NO_KEY.code)
    parts = header.split(None, 1)
    if len(parts) == 2 and parts[0].lower() == "bearer":
        token = parts[1].strip()
    elif len(parts) == 1 and parts[0].startswith("sk-"):
        token = parts[0]  # a bare key, as some clients send it
    else:
        token = ""
    if not token:
        raise OpenAIError(NO_KEY.status, NO_KEY.message, code=NO_KEY.code)
    if not token.isascii():
        # Keys are ASCII. Other bytes (undecodable ones arrive as lone surrogates, which
        # protobuf refuses) stand for a key that matches nothing: auth rejects it as any other.
        return "sk-not-ascii"
    return token


TRUSTED_PROXIES = web.AppKey("trusted_proxies", tuple)  # EdgeConfig.trusted_proxies


def client_ip(request: web.Request) -> str:
    """The client's address: the connection's peer, or — when that peer is a trusted proxy
    (CHATKORE_TRUSTED_PROXIES) — the nearest address in X-Forwarded-For that is not one.
    Read from the right, where each trusted proxy appended what it saw: entries further left
    come from the client and are ignored, so a client cannot choose its own address."""
    remote = request.remote or ""
    trusted = request.config_dict.get(TRUSTED_PROXIES, ())
    if not trusted:
        return remote
    chain = [h.strip() for line in request.headers.getall("X-Forwarded-For", ()) for h in line.split(",")]
    chain.append(remote)
    address = remote
    for hop in reversed(chain):
        try:
            ip = ipaddress.ip_address(hop)
        except ValueError:
            break  # garbage where an address should be: stop at the last proxy that vouched
        address = str(ip)
        if not any(ip in net for net in trusted):
            break
    return address


class KeyCache:
    """Authenticated keys, remembered while nothing about them changes.

    The auth service keeps a feed of key changes (a key revoked, a user disabled); the edge
    polls it every `poll_s` and drops the keys it names at once. An entry is trusted only
    while the feed is current — its last successful poll began under `stale_s` ago — so a
    revocation bites within a second everywhere, and when the feed is down every call asks
    auth, as if there were no cache. Concurrent look-ups of one key share one call.

    A look-up in flight while the feed names its key (or user) answered from before the
    change: it is asked again, and never remembered, or a key revoked meanwhile would stay
    cached for `ttl_s`.
    """

    def __init__(self, stub: auth_pb2_grpc.AuthStub, ttl_s: float, *, poll_s: float = 0.25, stale_s: float = 0.9,
                 max_entries: int = 100_000) -> None:
        self._stub = stub
        self._ttl_s = ttl_s
        self._poll_s = poll_s
        self._stale_s = stale_s
        self._max = max_entries
        self._entries: dict[tuple[str, str], tuple[float, auth_pb2.KeyInfo]] = {}
        self._by_key: dict[int, set[tuple[str, str]]] = {}
        self._by_user: dict[int, set[tuple[str, str]]] = {}
        self._pending: dict[tuple[str, str], asyncio.Future[auth_pb2.KeyInfo]] = {}
        self._fresh_until = 0.0   # monotonic; entries are trusted before it
        self._position = 0        # in the change feed
        self._seen: dict[int, float] = {}  # change ids already applied (the feed repeats recent ones)
        self._epoch = 0           # changes applied so far (resets count as one)
        self._reset_epoch = 0     # the epoch of the last reset
        self._changed_keys: dict[int, int] = {}   # key id -> epoch of its last change (recent ones)
        self._changed_users: dict[int, int] = {}  # user id -> epoch of its last change

    async def resolve(self, key: str, ip: str) -> auth_pb2.KeyInfo:
        slot = (key, ip)
        now = time.monotonic()
        entry = self._entries.get(slot)
        if entry is not None and now < entry[0] and now < self._fresh_until:
            return entry[1]
        pending = self._pending.get(slot)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[auth_pb2.KeyInfo] = asyncio.get_running_loop().create_future()
        self._pending[slot] = future
        try:
            info, current = await self._authenticate(key, ip)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # marks it retrieved when nobody else waits
            raise
        finally:
            self._pending.pop(slot, None)
        future.set_result(info)
        if current:
            self._remember(slot, info)
        return info

    async def _authenticate(self, key: str, ip: str) -> tuple[auth_pb2.KeyInfo, bool]:
        """Auth's answer, and whether it is still current: no change to its key or user applied meanwhile."""
        for _ in range(2):
            started = self._epoch
            info = await self._stub.Authenticate(auth_pb2.AuthenticateRequest(api_key=key, client_ip=ip), timeout=5)
            if not self._changed_since(info, started):
                return info, True
        return info, False  # changing as we ask: answer this once, remember nothing

    def _changed_since(self, info: auth_pb2.KeyInfo, epoch: int) -> bool:
        return (self._reset_epoch > epoch or self._changed_keys.get(info.key_id, 0) > epoch
                or self._changed_users.get(info.user_id, 0) > epoch)

    def _remember(self, slot: tuple[str, str], info: auth_pb2.KeyInfo) -> None:
        ttl = self._ttl_s
        if info.expires_at:  # never past the key's own expiry
            ttl = min(ttl, info.expires_at - time.time())
        if ttl <= 0:
            return
        if len(self._entries) >= self._max:
            self._forget(next(iter(self._entries)))
        self._entries[slot] = (time.monotonic() + ttl, info)
        self._by_key.setdefault(info.key_id, set()).add(slot)
        self._by_user.setdefault(info.user_id, set()).add(slot)

    def _forget(self, slot: tuple[str, str]) -> None:
        entry = self._entries.pop(slot, None)
        if entry is None:
            return
        for index, ident in ((self._by_key, entry[1].key_id), (self._by_user, entry[1].user_id)):
            slots = index.get(ident)
            if slots is not None:
                slots.discard(slot)
                if not slots:
                    del index[ident]

    def _apply(self, reply: auth_pb2.KeyChangesReply) -> None:
        if reply.reset:
            self._entries.clear()
            self._by_key.clear()
            self._by_user.clear()
            self._epoch += 1
            self._reset_epoch = self._epoch
        now = time.monotonic()
        for change in reply.changes:
            if change.id in self._seen:
                continue
            self._seen[change.id] = now
            self._epoch += 1
            if change.key_id:
                index, ident, changed = self._by_key, change.key_id, self._changed_keys
            else:
                index, ident, changed = self._by_user, change.user_id, self._changed_users
            changed[ident] = self._epoch
            for slot in list(index.get(ident, ())):
                self._forget(slot)
        if len(self._seen) > 1000:
            self._seen = {i: t for i, t in self._seen.items() if now - t < 30}
            # Look-ups last at most a few seconds: a change the oldest kept id predates is past caring.
            horizon = self._epoch - len(self._seen)
            self._changed_keys = {k: e for k, e in self._changed_keys.items() if e > horizon}
            self._changed_users = {u: e for u, e in self._changed_users.items() if e > horizon}
        self._position = reply.latest

    async def follow_changes(self) -> None:
        """Poll the key change feed until cancelled (one task per edge process)."""
        while True:
            started = time.monotonic()
            try:
                reply = await self._stub.KeyChanges(auth_pb2.KeyChangesRequest(after=self._position), timeout=2)
            except grpc.aio.AioRpcError as exc:
                log.debug("key change feed unavailable: %s", exc.code().name)
            else:
                self._apply(reply)
                self._fresh_until = started + self._stale_s
            await asyncio.sleep(max(0.0, self._poll_s - (time.monotonic() - started)))
