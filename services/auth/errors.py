"""Auth's failures, each with its wire identity.

    ServiceError
    ├── InvalidApiKey       INVALID_API_KEY      UNAUTHENTICATED
    └── PermissionDenied    PERMISSION_DENIED    PERMISSION_DENIED
"""
from __future__ import annotations

import grpc

from services.common.errors import InvalidRequest, NotFound, ServiceError

__all__ = ["InvalidApiKey", "InvalidRequest", "NotFound", "PermissionDenied"]


class InvalidApiKey(ServiceError):
    reason = "INVALID_API_KEY"
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    reason = "PERMISSION_DENIED"
    grpc_code = grpc.StatusCode.PERMISSION_DENIED
