"""The edge's one error table: every reason in errors.proto maps, every DESIGN §4 row is right."""
from __future__ import annotations

import grpc
import pytest

from chatkore.v1 import errors_pb2
from edge.errors import REASONS, from_rpc
from services.common.errors import status_of

DESIGN_ROWS = [
    ("INVALID_API_KEY", 401, "invalid_request_error", "invalid_api_key"),
    ("INSUFFICIENT_QUOTA", 402, "insufficient_quota", "insufficient_quota"),
    ("RATE_LIMITED", 429, "requests", "rate_limit_exceeded"),
    ("TOKENS_RATE_LIMITED", 429, "tokens", "rate_limit_exceeded"),
    ("MODEL_NOT_FOUND", 404, "invalid_request_error", "model_not_found"),
    ("INVALID_REQUEST", 400, "invalid_request_error", None),
    ("REQUEST_TOO_LARGE", 413, "invalid_request_error", "request_too_large"),
    ("UPSTREAM_ERROR", 502, "server_error", "upstream_error"),
    ("UPSTREAM_TIMEOUT", 504, "server_error", "upstream_timeout"),
    ("NO_AVAILABLE_CHANNEL", 503, "server_error", "no_available_channel"),
    ("UPSTREAM_RATE_LIMITED", 429, "requests", "rate_limit_exceeded"),
]


class FakeRpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, trailing=()) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details="x")


def _rpc(reason: str, grpc_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN, **detail) -> FakeRpcError:
    status = status_of(grpc_code, errors_pb2.ErrorDetail(reason=errors_pb2.ErrorReason.Value(reason), message="m",
                                                    **detail))
    return FakeRpcError(grpc_code, status.trailing_metadata)


def test_every_reason_has_a_row() -> None:
    reasons = set(errors_pb2.ErrorReason.keys()) - {"ERROR_REASON_UNSPECIFIED", "UPSTREAM_REJECTED"}
    assert reasons <= set(REASONS)


@pytest.mark.parametrize("reason, status, kind, code", DESIGN_ROWS)
def test_design_rows(reason, status, kind, code) -> None:
    error = from_rpc(_rpc(reason))
    assert (error.status, error.type, error.code) == (status, kind, code)
    assert error.body()["error"]["message"] == "m"


def test_quota_says_do_not_retry() -> None:
    assert from_rpc(_rpc("INSUFFICIENT_QUOTA")).headers["x-should-retry"] == "false"


def test_retry_after_is_whole_seconds() -> None:
    assert from_rpc(_rpc("UPSTREAM_RATE_LIMITED", retry_after_s=6.6)).headers["retry-after"] == "7"


def test_upstream_rejection_keeps_its_status() -> None:
    error = from_rpc(_rpc("UPSTREAM_REJECTED", http_status=422, type="invalid_request_error", code="bad",
                          param="x"))
    assert (error.status, error.code, error.param) == (422, "bad", "x")
    # An upstream status that is not a 4xx never passes through as such.
    assert from_rpc(_rpc("UPSTREAM_REJECTED", http_status=200)).status == 400


# The standard gRPC -> HTTP mapping (grpc-gateway's HTTPStatusFromCode), written out here rather
# than read back from the table under test; CANCELLED is 503 (a peer going away is retryable).
# Every gRPC code is listed: the ones without a row fall back to 500.
GRPC_STATUSES = {
    grpc.StatusCode.OK: 500, grpc.StatusCode.CANCELLED: 503, grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.DEADLINE_EXCEEDED: 504, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DATA_LOSS: 500, grpc.StatusCode.UNAUTHENTICATED: 401,
}


def test_every_grpc_code_is_listed() -> None:
    assert set(GRPC_STATUSES) == set(grpc.StatusCode)


@pytest.mark.parametrize(("code", "status"), GRPC_STATUSES.items(), ids=[c.name for c in GRPC_STATUSES])
def test_grpc_fallback(code: grpc.StatusCode, status: int) -> None:
    error = from_rpc(FakeRpcError(code))
    assert error.status == status
    assert error.type == ("server_error" if status >= 500 else "invalid_request_error")
    assert (error.headers or {}).get("retry-after") == ("1" if status == 503 else None)


def test_unknown_failure_is_a_fixed_message() -> None:
    error = from_rpc(FakeRpcError(grpc.StatusCode.INTERNAL))
    assert error.status == 500 and "x" not in error.message
