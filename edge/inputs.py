"""The one place the edge reads a request's body and parameters and holds them to the limits.

Every route reads its body here, so a limit is set once: the size cap of its route (the
OpenAI API under /v1 and the chat page's relay take `CHATKORE_MAX_BODY_MB`, the console's,
operator's and admin's calls a small one), `Content-Type`, the time the body may take to
arrive, and the budget of JSON objects and arrays (`CHATKORE_MAX_JSON_NODES`), counted on
the raw bytes as they arrive, before anything is parsed. Then depth and strings
(`edge.limits.check_shape`). Each refusal is OpenAI's error shape and changes nothing.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, TypeVar

from aiohttp import hdrs, web

from edge.errors import OpenAIError, invalid
from edge.limits import Limits, check_shape
from edge.state import CONFIG
from services.common import jsoncodec

# The request key under which json_body leaves the object it parsed, for the audit log.
AUDITED_BODY = "audited_body"

H = TypeVar("H", bound=Callable[[web.Request], Awaitable[web.StreamResponse]])

# Routes whose bodies are prompts (any size up to CHATKORE_MAX_BODY_MB); every other route's is small.
_LARGE_PREFIXES = ("/v1/",)
_LARGE_ROUTES = frozenset({"/api/chat/completions"})
_JSON = "application/json"
# What curl -d and other hand-written /v1 clients send without -H 'Content-Type: application/json'.
_LENIENT = frozenset({_JSON, "application/x-www-form-urlencoded"})

_NOT_JSON = ("We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP"
             " library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)")


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path


def _is_api(route: str) -> bool:
    """An OpenAI API route: authenticated by a bearer key, never by a cookie."""
    return route.startswith(_LARGE_PREFIXES)


def body_limit(cap: int) -> Callable[[H], H]:
    """Caps a route's bodies at `cap` bytes instead of by its path (a payment provider's webhook)."""
    def mark(handler: H) -> H:
        handler.body_cap = cap  # type: ignore[attr-defined]
        return handler
    return mark


def body_cap(request: web.Request, limits: Limits) -> int:
    declared = getattr(request.match_info.handler, "body_cap", None)
    if declared is not None:
        return declared
    route = _route(request)
    return limits.max_body_bytes if _is_api(route) or route in _LARGE_ROUTES else limits.max_small_body_bytes


def _size(n: int) -> str:
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)} MB"
    if n % 1024 == 0:
        return f"{n // 1024} KB"
    return f"{n} bytes"


def _too_large(cap: int) -> OpenAIError:
    return OpenAIError(413, f"The request body is too large: this endpoint accepts at most {_size(cap)}.",
                       code="request_too_large")


def _too_many_containers(budget: int) -> OpenAIError:
    return OpenAIError(413, f"The request body is too complex: it holds more than {budget} JSON objects and arrays,"
                            " the most this server accepts.", code="request_too_large")


@web.middleware
async def declared_size(request: web.Request, handler: web.RequestHandler) -> web.StreamResponse:
    """A body declared larger than its route's cap is refused before any of it is read, whoever reads it."""
    declared = request.content_length
    if declared is not None:
        cap = body_cap(request, request.app[CONFIG].limits)
        if declared > cap:
            raise _too_large(cap)
    return await handler(request)


def _check_content_type(request: web.Request, route: str) -> None:
    """JSON bodies are labelled so. Only the bearer-key API also takes curl's unlabelled -d: a cookie-
    authenticated route never reads a body a plain HTML form could send from another site."""
    given = request.headers.get(hdrs.CONTENT_TYPE)
    mimetype = request.content_type  # lower case, without parameters
    if _is_api(route) and (given is None or mimetype in _LENIENT):
        return
    if given is not None and mimetype == _JSON:
        return
    shown = (given or "none").split(";")[0].strip()[:60]
    raise OpenAIError(415, f"Unsupported Content-Type '{shown}': send the body as JSON, with"
                           " 'Content-Type: application/json'.", code="unsupported_media_type")


async def read(request: web.Request, *, json_budget: bool = True) -> bytes:
    """The raw body, within its route's cap and time, and (unless told otherwise) its JSON container budget."""
    limits = request.app[CONFIG].limits
    cap = body_cap(request, limits)
    if request.content_length is not None and request.content_length > cap:
        raise _too_large(cap)
    budget = jsoncodec.ContainerBudget(limits.max_json_nodes) if json_budget else None
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > cap:
                    raise _too_large(cap)
                if budget is not None:
                    budget.feed(chunk)
                chunks.append(chunk)
    except TimeoutError:
        raise OpenAIError(408, f"The request body did not arrive within {limits.body_timeout_s:g} seconds.",
                          code="request_timeout", headers={"Connection": "close"}) from None
    except jsoncodec.TooManyContainers as exc:
        raise _too_many_containers(exc.budget) from None
    return b"".join(chunks)


async def _read_json(request: web.Request) -> bytes:
    route = _route(request)
    if request.content_length != 0:
        _check_content_type(request, route)
    return await read(request)


def parse_relay(raw: bytes, limits: Limits) -> dict[str, Any]:
    """A body for the OpenAI API: a JSON object within the limits of depth and string length, or a 400."""
    try:
        body = jsoncodec.loads(raw)
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise invalid(_NOT_JSON) from None
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.")
    check_shape(body, limits)
    return body


async def relay_body(request: web.Request) -> tuple[bytes, dict[str, Any]]:
    """An OpenAI API call's body: the bytes as sent (they travel on to inference) and the object they hold."""
    raw = await _read_json(request)
    return raw, parse_relay(raw, request.app[CONFIG].limits)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


async def json_body(request: web.Request) -> dict[str, Any]:
    """A console, operator or admin call's body: a JSON object (empty means {}), numbers exact as Decimal,
    strings storable as PostgreSQL text."""
    raw = await _read_json(request)
    limits = request.app[CONFIG].limits
    try:
        body = json.loads(raw or b"{}", parse_float=Decimal, parse_constant=_reject_constant)
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise invalid("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.")
    check_shape(body, limits, text=True)
    request[AUDITED_BODY] = body  # what an admin change's audit entry names (edge/audit.py)
    return body


# --- parameters: the path, the query, fields of a JSON object ---------------------------------


def path_id(request: web.Request, name: str = "id") -> int:
    raw = request.match_info[name]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise OpenAIError(404, f"No such resource: {raw[:40]!r}", code="not_found")
    return int(raw)


def query_int(request: web.Request, name: str, high: int = 10**18 - 1) -> int:
    raw = request.query.get(name, "")
    if not raw:
        return 0
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18 or int(raw) > high:
        raise invalid(f"'{name}' must be an integer from 0 to {high}", name)
    return int(raw)


def get_int(body: dict[str, Any], name: str, default: int = 0, low: int = 0) -> int:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"'{name}' must be an integer", name)
    if value < low or value > 2**31 - 1:
        raise invalid(f"'{name}' is out of range", name)
    return value


def get_str(body: dict[str, Any], name: str, default: str = "", limit: int = 200) -> str:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise invalid(f"'{name}' must be a string", name)
    if len(value) > limit:
        raise invalid(f"'{name}' must be at most {limit} characters", name)
    return value


def get_str_list(body: dict[str, Any], name: str) -> list[str]:
    value = body.get(name) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalid(f"'{name}' must be an array of strings", name)
    return value


def get_timestamp(value: Any, name: str) -> int:
    """Unix seconds or ISO 8601 (UTC when no zone is given)."""
    if value is None:
        return 0
    if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        if not abs(value) < 2**40:  # also false for NaN; int() of 1e999999 would take forever
            raise invalid(f"'{name}' is out of range", name)
        return int(value)
    if isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise invalid(f"'{name}' must be unix seconds or an ISO 8601 time", name) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        return int(moment.timestamp())
    raise invalid(f"'{name}' must be unix seconds or an ISO 8601 time", name)
