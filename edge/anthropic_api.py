"""Anthropic's Messages API under /v1 (Claude Code, the Anthropic SDKs): same keys, same holds.

A key comes as `x-api-key` or `Authorization: Bearer`. Errors on this path are Anthropic's
shape, `{"type": "error", "error": {"type", "message"}}`, with Anthropic's statuses: the
edge's OpenAI error table (edge.errors) picks the status, and STATUS_TYPES below names it —
402 billing_error for no credits, 529 overloaded_error when no channel can serve.
"""
from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web

from chatkore.v1 import auth_pb2, common_pb2, inference_pb2
from edge import inputs, sse, validate
from edge import openai_api as v1
from edge.errors import OpenAIError, from_rpc
from edge.state import CONFIG, PEERS
from services.common import jsoncodec

FORWARDED = ("anthropic-version", "anthropic-beta")  # what an Anthropic upstream must see as the client sent it

# HTTP status (from edge.errors) -> (Anthropic status, Anthropic error type)
STATUS_TYPES: dict[int, tuple[int, str]] = {
    400: (400, "invalid_request_error"),
    401: (401, "authentication_error"),
    402: (402, "billing_error"),
    403: (403, "permission_error"),
    404: (404, "not_found_error"),
    405: (405, "invalid_request_error"),
    409: (409, "invalid_request_error"),
    413: (413, "request_too_large"),
    422: (400, "invalid_request_error"),
    429: (429, "rate_limit_error"),
    500: (500, "api_error"),
    502: (502, "api_error"),
    503: (529, "overloaded_error"),
    504: (504, "timeout_error"),
}


def error_response(error: OpenAIError) -> web.Response:
    status, kind = STATUS_TYPES.get(error.status, (error.status, "api_error" if error.status >= 500
                                                   else "invalid_request_error"))
    body = {"type": "error", "error": {"type": kind, "message": error.message}}
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json",
                        headers=error.headers)


def _event(data: bytes) -> bytes:
    """Anthropic's framing: the SDKs read only events that name their type on an `event:` line."""
    try:
        kind = jsoncodec.loads(data).get("type")
    except (ValueError, AttributeError):
        kind = None
    name = kind.encode() if isinstance(kind, str) and kind.isidentifier() else b"message"
    return b"event: " + name + b"\ndata: " + data + b"\n\n"


class AnthropicFraming(sse.Framing):
    """Messages streams: named events; an error is an `error` event; message_stop ends the stream
    once the call is settled (the inference service sends everything before it)."""

    done = _event(b'{"type":"message_stop"}')
    done_after_error = False

    def event(self, data: bytes) -> bytes:
        return _event(data)

    def error(self, error: OpenAIError) -> bytes:
        _, kind = STATUS_TYPES.get(error.status, (error.status, "api_error"))
        return _event(json.dumps({"type": "error", "error": {"type": kind, "message": error.message}}).encode())

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def anthropic_errors(handler: Handler) -> Handler:
    """Every failure of `handler` in Anthropic's error shape."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except OpenAIError as exc:
            return error_response(exc)
        except grpc.aio.AioRpcError as exc:
            return error_response(from_rpc(exc))
        except web.HTTPRequestEntityTooLarge:
            return error_response(OpenAIError(413, "The request body is too large.", code="request_too_large"))

    return wrapped


def _token(request: web.Request) -> str | None:
    key = request.headers.get("x-api-key", "").strip()
    return key or None  # else the Authorization header (edge.authn.bearer)


async def _key(request: web.Request) -> auth_pb2.KeyInfo:
    return await v1.authenticate(request, _token(request))


def _forwarded(request: web.Request) -> dict[str, str]:
    return {name: request.headers[name] for name in FORWARDED if request.headers.get(name)}


@anthropic_errors
async def messages(request: web.Request) -> web.StreamResponse:
    key = await _key(request)
    return await v1._relay(request, inference_pb2.MESSAGES, validate.messages, key,
                           forward_headers=_forwarded(request), framing=AnthropicFraming())


@anthropic_errors
async def count_tokens(request: web.Request) -> web.StreamResponse:
    key = await _key(request)
    cfg = request.app[CONFIG]
    raw, body = await inputs.relay_body(request)
    fields = validate.count_tokens(body, cfg.limits)
    request["model"] = fields.model
    message = inference_pb2.RelayRequest(
        caller=common_pb2.Caller(user_id=key.user_id, key_id=key.key_id, models=key.models,
                                 credit_limit=key.credit_limit, request_id=request["request_id"]),
        endpoint=inference_pb2.MESSAGES, model=fields.model, body=raw, max_tokens=1, n=1,
    )
    reply = await request.app[PEERS].inference.CountTokens(message, timeout=30)
    return v1.json_response({"input_tokens": reply.input_tokens})


def _model_object(m: inference_pb2.Model) -> dict[str, Any]:
    created = dt.datetime.fromtimestamp(m.created, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"type": "model", "id": m.id, "display_name": m.id, "created_at": created}


@anthropic_errors
async def _anthropic_models(request: web.Request) -> web.StreamResponse:
    models = [_model_object(m) for m in await v1._models(request, await _key(request))]
    return v1.json_response({"data": models, "has_more": False, "first_id": models[0]["id"] if models else None,
                             "last_id": models[-1]["id"] if models else None})


async def list_models(request: web.Request) -> web.StreamResponse:
    """GET /v1/models: Anthropic's list shape for a client that says anthropic-version, else OpenAI's."""
    if request.headers.get("anthropic-version"):
        return await _anthropic_models(request)
    return await v1.list_models(request)
