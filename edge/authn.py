"""Who is calling: the bearer key, resolved by the auth service and briefly remembered."""
from __future__ import annotations

import asyncio
import time

from aiohttp import web

from chatkore.v1 import auth_pb2, auth_pb2_grpc
from edge.errors import OpenAIError

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


def client_ip(request: web.Request) -> str:
    return request.remote or ""


class KeyCache:
    """Authenticated keys, trusted for `ttl_s` (under a second, so revocation still
    bites everywhere within one). Concurrent look-ups of one key share one call."""

    def __init__(self, stub: auth_pb2_grpc.AuthStub, ttl_s: float, max_entries: int = 100_000) -> None:
        self._stub = stub
        self._ttl_s = ttl_s
        self._max = max_entries
        self._entries: dict[tuple[str, str], tuple[float, auth_pb2.KeyInfo]] = {}
        self._pending: dict[tuple[str, str], asyncio.Future[auth_pb2.KeyInfo]] = {}

    async def resolve(self, key: str, ip: str) -> auth_pb2.KeyInfo:
        slot = (key, ip)
        now = time.monotonic()
        entry = self._entries.get(slot)
        if entry is not None and entry[0] > now:
            return entry[1]
        pending = self._pending.get(slot)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[auth_pb2.KeyInfo] = asyncio.get_running_loop().create_future()
        self._pending[slot] = future
        try:
            info = await self._stub.Authenticate(auth_pb2.AuthenticateRequest(api_key=key, client_ip=ip), timeout=5)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # marks it retrieved when nobody else waits
            raise
        finally:
            self._pending.pop(slot, None)
        future.set_result(info)
        if len(self._entries) >= self._max:
            self._entries.pop(next(iter(self._entries)))
        self._entries[slot] = (time.monotonic() + self._ttl_s, info)
        return info
