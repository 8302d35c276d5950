"""Billing's failures, each with its wire identity.

    ServiceError
    ├── InsufficientQuota   INSUFFICIENT_QUOTA   RESOURCE_EXHAUSTED
    ├── ModelNotPriced      MODEL_NOT_FOUND      NOT_FOUND
    └── HoldClosed          HOLD_CLOSED          FAILED_PRECONDITION
"""
from __future__ import annotations

import grpc

from services.common.errors import Conflict, InvalidRequest, NotFound, ServiceError, Unavailable

__all__ = ["Conflict", "HoldClosed", "InsufficientQuota", "InvalidRequest", "ModelNotPriced", "NotFound",
           "Unavailable"]


class InsufficientQuota(ServiceError):
    reason = "INSUFFICIENT_QUOTA"
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ModelNotPriced(ServiceError):
    reason = "MODEL_NOT_FOUND"
    grpc_code = grpc.StatusCode.NOT_FOUND


class HoldClosed(ServiceError):
    """A try at a call that was already answered and charged: nothing is held for it."""

    reason = "HOLD_CLOSED"
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


def quota_refusal(*, disabled: bool, key_limit_reached: bool) -> InsufficientQuota:
    """Why a hold could not be placed, as the caller is told."""
    if disabled:
        return InsufficientQuota("This account is disabled.")
    if key_limit_reached:
        return InsufficientQuota("This API key has reached its credit limit. Raise the limit or use another key.")
    return InsufficientQuota("You exceeded your current quota, please top up your chatkore credits."
                             " Your balance cannot cover this request.")
