"""Typed keys for what the edge application shares between handlers."""
from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from grpc_health.v1 import health_pb2_grpc

from chatkore.v1 import auth_pb2_grpc, billing_pb2_grpc, inference_pb2_grpc
from edge.authn import KeyCache
from edge.config import EdgeConfig
from edge.guard import AuthGuard, SignupLimit
from edge.keylimits import KeyLimits


@dataclass(frozen=True)
class Peers:
    auth: auth_pb2_grpc.AuthStub
    billing: billing_pb2_grpc.BillingStub
    inference: inference_pb2_grpc.InferenceStub
    health: dict[str, health_pb2_grpc.HealthStub]


@dataclass
class Counters:
    """Live counts the admin stats show (leak checks)."""

    requests_in_flight: int = 0


CONFIG = web.AppKey("config", EdgeConfig)
COUNTERS = web.AppKey("counters", Counters)
PEERS = web.AppKey("peers", Peers)
KEYS = web.AppKey("keys", KeyCache)
LIMITS = web.AppKey("limits", KeyLimits)
GUARD = web.AppKey("guard", AuthGuard)
SIGNUPS = web.AppKey("signups", SignupLimit)
