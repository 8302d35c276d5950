"""Failures that know their wire identity, and their trip across gRPC.

Hierarchy (each service's errors.py adds its own leaves):

    ServiceError                 reason name + gRPC code, carried as an ErrorDetail
    ├── InvalidRequest           INVALID_REQUEST        INVALID_ARGUMENT
    ├── RequestTooLarge          REQUEST_TOO_LARGE      INVALID_ARGUMENT
    ├── NotFound                 NOT_FOUND              NOT_FOUND
    ├── Conflict                 CONFLICT               ALREADY_EXISTS
    └── Unavailable              UNAVAILABLE            UNAVAILABLE
"""
from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import status_pb2
from grpc_status import rpc_status

from chatkore.v1 import errors_pb2

DETAILS_KEY = rpc_status.GRPC_DETAILS_METADATA_KEY


class ServiceError(Exception):
    reason: str = "ERROR_REASON_UNSPECIFIED"
    grpc_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        param: str = "",
        http_status: int = 0,
        type: str = "",
        code: str = "",
        retry_after_s: float = 0.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.http_status = http_status
        self.type = type
        self.code = code
        self.retry_after_s = retry_after_s
        self.headers = headers or {}

    def to_detail(self) -> errors_pb2.ErrorDetail:
        return errors_pb2.ErrorDetail(
            reason=errors_pb2.ErrorReason.Value(self.reason),
            message=self.message,
            param=self.param,
            http_status=self.http_status,
            type=self.type,
            code=self.code,
            retry_after_s=self.retry_after_s,
            headers=self.headers,
        )

    def to_status(self) -> grpc.Status:
        return status_of(self.grpc_code, self.to_detail())


class InvalidRequest(ServiceError):
    reason = "INVALID_REQUEST"
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class RequestTooLarge(ServiceError):
    reason = "REQUEST_TOO_LARGE"
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    reason = "NOT_FOUND"
    grpc_code = grpc.StatusCode.NOT_FOUND


class Conflict(ServiceError):
    reason = "CONFLICT"
    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class Unavailable(ServiceError):
    reason = "UNAVAILABLE"
    grpc_code = grpc.StatusCode.UNAVAILABLE


def status_of(code: grpc.StatusCode, detail: errors_pb2.ErrorDetail) -> grpc.Status:
    packed = any_pb2.Any()
    packed.Pack(detail)
    message = status_pb2.Status(code=code.value[0], message=detail.message, details=[packed])
    return rpc_status.to_status(message)


def detail_of(err: grpc.aio.AioRpcError) -> errors_pb2.ErrorDetail | None:
    """The ErrorDetail a peer attached to a failed call, if any."""
    for key, value in err.trailing_metadata() or ():
        if key != DETAILS_KEY:
            continue
        status = status_pb2.Status.FromString(value)
        for packed in status.details:
            detail = errors_pb2.ErrorDetail()
            if packed.Unpack(detail):
                return detail
    return None


def reason_of(err: grpc.aio.AioRpcError) -> str:
    detail = detail_of(err)
    if detail is None:
        return "ERROR_REASON_UNSPECIFIED"
    return errors_pb2.ErrorReason.Name(detail.reason)
