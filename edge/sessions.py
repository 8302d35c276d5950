"""Console sessions at the edge: the cookie, CSRF checks, and who may see what.

The cookie carries an opaque token that only the auth service can resolve (HttpOnly,
SameSite=Lax, Secure behind https). Every request that changes something must also carry
the session's CSRF token in `X-CSRF-Token` (a page on another site can make the browser
send the cookie, but cannot read the token), and, when the browser names an Origin, come
from this host.
"""
from __future__ import annotations

import hmac
import time
from urllib.parse import urlsplit

from aiohttp import web

from chatkore.v1 import auth_pb2
from edge.errors import OpenAIError
from edge.state import PEERS

COOKIE = "ck_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
RPC_TIMEOUT_S = 10


def _forbidden(message: str, code: str) -> OpenAIError:
    return OpenAIError(403, message, type="invalid_request_error", code=code)


def no_session() -> OpenAIError:
    return OpenAIError(401, "Please sign in.", code="session_required")


def secure(request: web.Request) -> bool:
    """Behind https (directly, or as a proxy in front of us says): the cookie is then Secure."""
    return request.secure or request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip() == "https"


def check_origin(request: web.Request) -> None:
    """A browser's cross-site request names its Origin: refuse one from another host."""
    origin = request.headers.get("Origin")
    if origin is None:
        return
    if origin == "null" or urlsplit(origin).netloc.lower() != (request.host or "").lower():
        raise _forbidden("Cross-site requests are not allowed.", "csrf_failed")


def has_session(request: web.Request) -> bool:
    return bool(request.cookies.get(COOKIE))


async def resolve(request: web.Request) -> auth_pb2.Session:
    """The caller's session; a change also needs the CSRF token. Raises 401 or 403."""
    token = request.cookies.get(COOKIE, "")
    if not token:
        raise no_session()
    session = await request.app[PEERS].auth.ResolveSession(auth_pb2.ResolveSessionRequest(token=token),
                                                           timeout=RPC_TIMEOUT_S)
    if request.method not in SAFE_METHODS:
        check_origin(request)
        sent = request.headers.get(CSRF_HEADER, "")
        if not sent or not hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
            raise _forbidden("Missing or invalid CSRF token.", "csrf_failed")
    return session


async def operator(request: web.Request) -> auth_pb2.Session:
    session = await resolve(request)
    if session.account.role != "operator":
        raise _forbidden("This needs an operator account.", "operator_required")
    return session


def set_cookie(request: web.Request, response: web.StreamResponse, session: auth_pb2.Session) -> None:
    response.set_cookie(COOKIE, session.token, expires=None, max_age=max(0, session.expires_at - int(time.time())),
                        path="/", httponly=True, samesite="Lax", secure=secure(request))


def clear_cookie(request: web.Request, response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path="/", httponly=True, samesite="Lax", secure=secure(request))
