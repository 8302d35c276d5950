"""Inference's failures, each with its wire identity.

    ServiceError
    ├── ModelNotFound          MODEL_NOT_FOUND         NOT_FOUND
    ├── NoAvailableChannel     NO_AVAILABLE_CHANNEL    UNAVAILABLE
    ├── UpstreamFailed         UPSTREAM_ERROR          UNAVAILABLE
    ├── UpstreamTimedOut       UPSTREAM_TIMEOUT        DEADLINE_EXCEEDED
    ├── UpstreamRateLimited    UPSTREAM_RATE_LIMITED   RESOURCE_EXHAUSTED
    └── UpstreamRejected       UPSTREAM_REJECTED       FAILED_PRECONDITION (carries the upstream's status)
"""
from __future__ import annotations

import grpc

from services.common.errors import InvalidRequest, NotFound, RequestTooLarge, ServiceError, Unavailable

__all__ = ["InvalidRequest", "ModelNotFound", "NoAvailableChannel", "NotFound", "RequestTooLarge", "Unavailable",
           "UpstreamFailed", "UpstreamRateLimited", "UpstreamRejected", "UpstreamTimedOut"]


class ModelNotFound(ServiceError):
    reason = "MODEL_NOT_FOUND"
    grpc_code = grpc.StatusCode.NOT_FOUND


class NoAvailableChannel(ServiceError):
    reason = "NO_AVAILABLE_CHANNEL"
    grpc_code = grpc.StatusCode.UNAVAILABLE


class UpstreamFailed(ServiceError):
    reason = "UPSTREAM_ERROR"
    grpc_code = grpc.StatusCode.UNAVAILABLE


class UpstreamTimedOut(ServiceError):
    reason = "UPSTREAM_TIMEOUT"
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class UpstreamRateLimited(ServiceError):
    reason = "UPSTREAM_RATE_LIMITED"
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UpstreamRejected(ServiceError):
    reason = "UPSTREAM_REJECTED"
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
