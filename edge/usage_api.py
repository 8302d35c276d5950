"""Usage listings with filters, as JSON pages or one streamed CSV: the console's (the user's own
calls, GET /api/usage) and the operators' (every user's, GET /admin/v1/usage).

Filters: `model`, `key_id`, `status`, `since` / `until` (unix seconds or ISO 8601, calls made
in [since, until)), `request_id`; `limit` rows, newest first. JSON pages carry `next_cursor`
(pass it as `cursor` for the rows after). `format=csv` streams every matching row (up to
CSV_MAX_ROWS, or `limit`) page by page from billing, so no answer is held whole in memory.
"""
from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Callable
from typing import Any

import grpc
from aiohttp import web

from chatkore.v1 import billing_pb2
from edge.credits import from_micro
from edge.errors import invalid
from edge.inputs import get_timestamp, query_int
from edge.openai_api import json_response
from edge.state import PEERS

log = logging.getLogger(__name__)
RPC_TIMEOUT_S = 15
PAGE = 1000            # rows billing answers at most per call
CSV_MAX_ROWS = 100_000
_STATUS = re.compile(r"[a-z_]{1,40}")

Row = Callable[[billing_pb2.UsageRow], dict[str, Any]]


def user_row(r: billing_pb2.UsageRow) -> dict[str, Any]:
    """A call as its user sees it."""
    return {"request_id": r.request_id, "key_id": r.key_id, "model": r.model, "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens, "cached_prompt_tokens": r.cached_prompt_tokens,
            "cache_write_tokens": r.cache_write_tokens, "reasoning_tokens": r.reasoning_tokens,
            "credits": from_micro(r.credits), "unpaid_credits": from_micro(r.unpaid_credits), "status": r.status,
            "usage_source": r.usage_source, "created": r.created}


def admin_row(r: billing_pb2.UsageRow) -> dict[str, Any]:
    """A call as the operators see it: whose, and which channel served it."""
    return {"request_id": r.request_id, "user_id": r.user_id, "key_id": r.key_id, "model": r.model,
            "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "cached_prompt_tokens": r.cached_prompt_tokens, "cache_write_tokens": r.cache_write_tokens,
            "reasoning_tokens": r.reasoning_tokens, "credits": from_micro(r.credits),
            "unpaid_credits": from_micro(r.unpaid_credits), "late": r.late, "status": r.status,
            "usage_source": r.usage_source, "channel_id": r.channel_id or None, "created": r.created}


def _time(request: web.Request, name: str) -> int:
    raw = request.query.get(name, "")
    if not raw:
        return 0
    value = get_timestamp(int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 13 else raw[:64], name)
    if value < 0:
        raise invalid(f"'{name}' must be after 1970", name)
    return value


def usage_filter(request: web.Request, user_id: int) -> billing_pb2.ListUsageRequest:
    """The query's filters for `user_id`'s calls (0: every user's). 400 naming the param when bad."""
    q = request.query
    status = q.get("status", "")
    if status and not _STATUS.fullmatch(status):
        raise invalid("'status' must be a usage status such as complete or client_gone", "status")
    model = q.get("model", "")
    if len(model) > 200 or "\x00" in model:
        raise invalid("'model' must be a model name", "model")
    request_id = q.get("request_id", "")
    if len(request_id) > 200 or "\x00" in request_id:
        raise invalid("'request_id' must be a request id", "request_id")
    cursor = q.get("cursor", "")
    if len(cursor) > 240 or "\x00" in cursor:
        raise invalid("'cursor' is not one this server gave", "cursor")
    since, until = _time(request, "since"), _time(request, "until")
    if since and until and since >= until:
        raise invalid("'since' must be before 'until'", "since")
    fmt = q.get("format", "json")
    if fmt not in ("json", "csv"):
        raise invalid("'format' must be json or csv", "format")
    return billing_pb2.ListUsageRequest(user_id=user_id, model=model, key_id=query_int(request, "key_id"),
                                        status=status, since=since, until=until, request_id=request_id,
                                        cursor=cursor)


async def respond(request: web.Request, where: billing_pb2.ListUsageRequest, row: Row,
                  default_limit: int) -> web.StreamResponse:
    if request.query.get("format", "json") == "csv":
        return await _csv(request, where, row)
    where.limit = min(query_int(request, "limit"), PAGE) or default_limit  # more than a page: ask with the cursor
    reply = await request.app[PEERS].billing.ListUsage(where, timeout=RPC_TIMEOUT_S)
    body: dict[str, Any] = {"data": [row(r) for r in reply.rows]}
    if reply.next_cursor:
        body["next_cursor"] = reply.next_cursor
    return json_response(body)


# A text cell a spreadsheet would read as a formula (OWASP "CSV injection"); numbers stay numbers.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _line(values: list[Any]) -> bytes:
    out = io.StringIO()
    # RFC 4180: quotes, doubled quotes, CRLF
    csv.writer(out, lineterminator="\r\n").writerow([_cell(v) for v in values])
    return out.getvalue().encode("utf-8")


async def _csv(request: web.Request, where: billing_pb2.ListUsageRequest, row: Row) -> web.StreamResponse:
    wanted = query_int(request, "limit", CSV_MAX_ROWS) or CSV_MAX_ROWS
    billing = request.app[PEERS].billing
    where.limit = min(PAGE, wanted)
    # The first page before any byte goes out, so a refusal still gets a real status.
    reply = await billing.ListUsage(where, timeout=RPC_TIMEOUT_S)
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8", "Content-Disposition": 'attachment; filename="usage.csv"',
        "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})
    await response.prepare(request)
    columns: list[str] = list(row(billing_pb2.UsageRow()).keys())
    await response.write(_line(columns))
    sent = 0
    while True:
        for r in reply.rows[:wanted - sent]:
            values = row(r)
            await response.write(_line(["" if values[c] is None else values[c] for c in columns]))
        sent += min(len(reply.rows), wanted - sent)
        if not reply.next_cursor or sent >= wanted:
            break
        where.cursor, where.limit = reply.next_cursor, min(PAGE, wanted - sent)
        try:
            reply = await billing.ListUsage(where, timeout=RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            # The status is gone: the connection is dropped without the last chunk, so no client
            # takes a file cut short for a whole one.
            log.warning("usage CSV cut after %d rows: billing answered %s", sent, exc.code().name)
            raise
    await response.write_eof()
    return response
