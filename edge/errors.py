"""Every failure the edge can answer, in OpenAI's error shape, mapped in one table.

A gRPC failure carries an ErrorDetail whose `reason` picks the row (DESIGN §4);
without one, the gRPC code picks an HTTP status from the standard table.
"""
from __future__ import annotations

import json
import logging
from typing import Any

import grpc
from aiohttp import web

from chatkore.v1 import errors_pb2
from services.common.errors import detail_of

log = logging.getLogger(__name__)


class OpenAIError(Exception):
    """An error answer: HTTP status and OpenAI's {message, type, param, code}."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> web.Response:
        return web.Response(status=self.status, body=json.dumps(self.body()).encode(),
                            content_type="application/json", headers=self.headers)


def invalid(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


# reason -> (HTTP status, OpenAI type, OpenAI code): the rows of DESIGN §4.
REASONS: dict[str, tuple[int, str, str | None]] = {
    "INVALID_API_KEY": (401, "invalid_request_error", "invalid_api_key"),
    "INSUFFICIENT_QUOTA": (402, "insufficient_quota", "insufficient_quota"),
    "RATE_LIMITED": (429, "requests", "rate_limit_exceeded"),
    "TOKENS_RATE_LIMITED": (429, "tokens", "rate_limit_exceeded"),
    "MODEL_NOT_FOUND": (404, "invalid_request_error", "model_not_found"),
    "INVALID_REQUEST": (400, "invalid_request_error", None),
    "REQUEST_TOO_LARGE": (413, "invalid_request_error", "request_too_large"),
    "NOT_FOUND": (404, "invalid_request_error", "not_found"),
    "CONFLICT": (409, "invalid_request_error", "conflict"),
    "PERMISSION_DENIED": (401, "invalid_request_error", "invalid_api_key"),
    "UPSTREAM_ERROR": (502, "server_error", "upstream_error"),
    "UPSTREAM_TIMEOUT": (504, "server_error", "upstream_timeout"),
    "NO_AVAILABLE_CHANNEL": (503, "server_error", "no_available_channel"),
    "UPSTREAM_RATE_LIMITED": (429, "requests", "rate_limit_exceeded"),
    "UNAVAILABLE": (503, "server_error", "service_unavailable"),
    "HOLD_CLOSED": (409, "server_error", "hold_closed"),
}

# The standard gRPC -> HTTP table, for failures that carry no reason.
GRPC_TO_HTTP: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 503,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNIMPLEMENTED: 501,
}

_FIXED_MESSAGES = {
    503: "chatkore is temporarily unavailable. Please retry shortly.",
    504: "The request took too long to complete.",
}


def from_rpc(err: grpc.aio.AioRpcError) -> OpenAIError:
    detail = detail_of(err)
    if detail is None:
        status = GRPC_TO_HTTP.get(err.code(), 500)
        if status == 500:
            log.error("peer failed without detail: %s %s", err.code().name, err.details())
        message = _FIXED_MESSAGES.get(status, "The server had an error while processing your request.")
        kind = "server_error" if status >= 500 else "invalid_request_error"
        return OpenAIError(status, message, type=kind, headers={"retry-after": "1"} if status == 503 else None)
    reason = errors_pb2.ErrorReason.Name(detail.reason)
    headers = dict(detail.headers)
    if detail.retry_after_s > 0:
        headers["retry-after"] = str(max(1, round(detail.retry_after_s)))
    if reason == "UPSTREAM_REJECTED":
        status = detail.http_status if 400 <= detail.http_status < 500 else 400
        return OpenAIError(status, detail.message, type=detail.type or "invalid_request_error",
                           param=detail.param or None, code=detail.code or None, headers=headers)
    status, kind, code = REASONS.get(reason, (GRPC_TO_HTTP.get(err.code(), 500), "server_error", None))
    if reason == "INSUFFICIENT_QUOTA":
        headers["x-should-retry"] = "false"  # SDKs must not retry a call nobody can pay for
    return OpenAIError(status, detail.message, type=kind, param=detail.param or None,
                       code=detail.code or code, headers=headers)
