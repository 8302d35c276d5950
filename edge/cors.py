"""CORS on /v1 only: browser front-ends call the API from their own origin with a key.

/api and /admin never answer CORS: they work by a session cookie or the admin key, and a
page on another origin must not be able to use either. No `Access-Control-Allow-Credentials`
anywhere: /v1 is called with a key in a header, never with cookies.
"""
from __future__ import annotations

from aiohttp import web

from edge.middleware import normalize_path
from edge.state import CONFIG

# Request headers a cross-origin client may send: exact names, and prefixes (openai-*, x-stainless-*).
ALLOWED_HEADERS = frozenset({"authorization", "content-type", "x-api-key", "anthropic-version", "anthropic-beta",
                             "accept", "x-request-id"})
ALLOWED_PREFIXES = ("openai-", "x-stainless-", "anthropic-")
METHODS = "GET, POST, DELETE, OPTIONS"
# Response headers a page may read: ids, limits, the budget cap and the retry hints.
EXPOSED = ", ".join((
    "x-request-id", "retry-after", "x-should-retry", "x-chatkore-max-tokens", "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens", "x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"))
MAX_AGE_S = "86400"


def _applies(request: web.Request) -> bool:
    path = normalize_path(request.path)
    return path == "/v1" or path.startswith("/v1/")


def _allowed_origin(request: web.Request) -> str | None:
    """What Access-Control-Allow-Origin says to this request, if anything."""
    origin = request.headers.get("Origin")
    if not origin or not _applies(request):
        return None
    origins = request.app[CONFIG].cors_origins
    if "*" in origins:
        return "*"
    return origin if origin.rstrip("/") in origins else None


def _allowed_headers(requested: str) -> str:
    names = [h.strip().lower() for h in requested.split(",") if h.strip()]
    return ", ".join(n for n in names if n in ALLOWED_HEADERS or n.startswith(ALLOWED_PREFIXES))


@web.middleware
async def preflight(request: web.Request, handler: web.RequestHandler) -> web.StreamResponse:
    """OPTIONS on /v1 is a preflight, answered here: no route takes OPTIONS."""
    if request.method != "OPTIONS" or not _applies(request):
        return await handler(request)
    response = web.Response(status=204)
    allowed = _allowed_origin(request)
    if allowed is not None:
        response.headers["Access-Control-Allow-Methods"] = METHODS
        requested = request.headers.get("Access-Control-Request-Headers", "")
        headers = _allowed_headers(requested) if requested else ", ".join(sorted(ALLOWED_HEADERS))
        if headers:
            response.headers["Access-Control-Allow-Headers"] = headers
        response.headers["Access-Control-Max-Age"] = MAX_AGE_S
    return response


async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every /v1 answer to an allowed origin says so (streams and errors too)."""
    allowed = _allowed_origin(request)
    if allowed is None:
        return
    response.headers["Access-Control-Allow-Origin"] = allowed
    if allowed != "*":
        response.headers.add("Vary", "Origin")
    if request.method != "OPTIONS":
        response.headers["Access-Control-Expose-Headers"] = EXPOSED
