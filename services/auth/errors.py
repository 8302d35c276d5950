"""Auth's failures, each with its wire identity.

    ServiceError
    ├── InvalidApiKey       INVALID_API_KEY      UNAUTHENTICATED    (also a wrong password or session)
    ├── PermissionDenied    PERMISSION_DENIED    PERMISSION_DENIED
    └── TooManySignIns      RATE_LIMITED         RESOURCE_EXHAUSTED
"""
from __future__ import annotations

import grpc

from services.common.errors import Conflict, InvalidRequest, NotFound, ServiceError

__all__ = ["Conflict", "InvalidApiKey", "InvalidRequest", "NotFound", "PermissionDenied", "TooManySignIns"]


class InvalidApiKey(ServiceError):
    reason = "INVALID_API_KEY"
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    reason = "PERMISSION_DENIED"
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class TooManySignIns(ServiceError):
    reason = "RATE_LIMITED"
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
