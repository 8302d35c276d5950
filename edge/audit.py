"""What the audit log keeps of an admin or operator change: who, what, when, from where — never a secret.

Every change under /admin/v1 (the admin key, or an operator's console session) is recorded by
the `admin` guard after its handler answered, with the status it answered. The entry names the
fields sent; it keeps the values only of fields that cannot carry a secret, a URL without its
user, password, query or fragment.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
from aiohttp import web

from chatkore.v1 import auth_pb2
from edge.authn import client_ip
from edge.errors import OpenAIError, from_rpc
from edge.inputs import AUDITED_BODY
from edge.state import PEERS

log = logging.getLogger(__name__)

CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Fields whose values are kept; any other field (api_key, settings, reference, ...) only by name.
SHOWN = frozenset({"name", "type", "base_url", "models", "model_map", "priority", "weight", "enabled", "credits",
                   "count", "role", "disabled", "prompt", "completion", "min_charge", "rpm", "tpm", "expires_at",
                   "credit_limit", "ips", "status", "note"})
MAX_FIELDS = 40
MAX_TEXT = 200
MAX_ITEMS = 20


def _url(value: str) -> str:
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "(not a URL)"


def _value(name: str, value: Any) -> Any:
    if isinstance(value, str):
        return _url(value)[:MAX_TEXT] if name == "base_url" else value[:MAX_TEXT]
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    if isinstance(value, list):
        return [_value(name, v) for v in value[:MAX_ITEMS]]
    if isinstance(value, dict):
        return {str(k)[:MAX_TEXT]: _value(name, v) for k, v in list(value.items())[:MAX_ITEMS]}
    return str(value)[:MAX_TEXT]


def details(body: Any) -> dict[str, Any]:
    """The fields a change sent (names), and the values of those that are not secret."""
    if not isinstance(body, dict):
        return {}
    names = [str(k)[:64] for k in list(body)[:MAX_FIELDS]]
    shown = {k: _value(k, body[k]) for k in names if k in SHOWN}
    return {"fields": names, "values": shown} if shown else {"fields": names}


def _body(request: web.Request) -> Any:
    """The object the handler parsed (edge/inputs.py json_body); None when it read none."""
    return request.get(AUDITED_BODY)


def actor_of(request: web.Request, operator: auth_pb2.Session | None) -> str:
    if operator is not None:
        return f"operator {operator.account.email} (user {operator.account.user_id})"
    return "admin key"


def status_of(exc: BaseException) -> int:
    """The status a failed change is answered with (edge/middleware.py maps it the same way)."""
    if isinstance(exc, OpenAIError):
        return exc.status
    if isinstance(exc, grpc.aio.AioRpcError):
        return from_rpc(exc).status
    if isinstance(exc, web.HTTPException):
        return exc.status
    if isinstance(exc, asyncio.CancelledError):
        return 499  # the client left before the answer; the change may or may not have been made
    return 500


async def record(request: web.Request, actor: str, status: int) -> None:
    """One entry for a change that passed the guard; a failure to record is logged, not raised
    (the change itself has happened and its answer is on its way)."""
    if request.method not in CHANGES:
        return
    route = request.match_info.route.resource
    action = f"{request.method} {route.canonical if route is not None else request.path}"
    target = next(iter(request.match_info.values()), "")
    entry = auth_pb2.AuditEntry(actor=actor, action=action, target=str(target)[:200], status=status,
                                address=client_ip(request) or "",
                                details_json=json.dumps(details(_body(request)), separators=(",", ":"), default=str))
    try:
        await request.app[PEERS].auth.RecordAudit(entry, timeout=5)
    except grpc.aio.AioRpcError as exc:
        log.error("audit entry not recorded (%s): %s %s by %s", exc.code().name, action, target, actor)
