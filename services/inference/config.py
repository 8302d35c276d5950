"""Inference settings, read once from the environment (names as in DESIGN §3)."""
from __future__ import annotations

from dataclasses import dataclass

from services.common.config import (
    DEFAULT_BILLING_ADDR,
    DEFAULT_INFERENCE_ADDR,
    Secret,
    env_float,
    env_int,
    env_optional,
    env_secret,
    env_str,
    listen_address,
)
from services.common.mtls import GrpcTls
from services.common.telemetry import Telemetry
from services.inference.destinations import ALLOW_VAR, DestinationPolicy


@dataclass(frozen=True)
class InferenceConfig:
    database_url: Secret
    secret_key: Secret         # encrypts upstream keys at rest
    listen: str
    telemetry: Telemetry       # metrics port and tracing
    tls: GrpcTls               # this process's certificate (services/common/mtls.py)
    health_listen: str | None  # a plaintext port serving only gRPC health (for kubelet probes)
    billing_addr: str
    upstream_timeout_s: float  # read timeout per upstream call, unless a channel sets its own
    destinations: DestinationPolicy  # which non-public addresses channels may reach
    max_stream_s: float        # a stream longer than this is cut (an endless upstream)
    cooldown_s: float          # how long a failing channel sits out before a probe
    failure_threshold: int     # consecutive failures that start a cool-down
    settle_retry_s: float      # how long a settlement is retried while billing is away
    max_json_nodes: int        # JSON objects and arrays a request body may hold (counted before parsing)
    grace_s: float
    pool_size: int
    log_level: str

    @classmethod
    def from_env(cls) -> InferenceConfig:
        return cls(
            database_url=env_secret("DATABASE_URL"),
            secret_key=env_secret("CHATKORE_SECRET_KEY"),
            listen=listen_address("inference", DEFAULT_INFERENCE_ADDR),
            telemetry=Telemetry.from_env(),
            tls=GrpcTls.from_env("inference"),
            health_listen=env_optional("CHATKORE_HEALTH_LISTEN"),
            billing_addr=env_str("CHATKORE_BILLING_ADDR", DEFAULT_BILLING_ADDR),
            upstream_timeout_s=env_float("CHATKORE_UPSTREAM_TIMEOUT_S", 180.0),
            destinations=DestinationPolicy.parse(env_optional(ALLOW_VAR) or ""),
            max_stream_s=env_float("CHATKORE_MAX_STREAM_S", 600.0),
            cooldown_s=env_float("CHATKORE_CHANNEL_COOLDOWN_S", 30.0),
            failure_threshold=env_int("CHATKORE_CHANNEL_FAILURES", 3),
            settle_retry_s=env_float("CHATKORE_SETTLE_RETRY_S", 600.0),
            max_json_nodes=env_int("CHATKORE_MAX_JSON_NODES", 100_000),
            grace_s=env_float("CHATKORE_GRACE_S", 20.0),
            pool_size=env_int("CHATKORE_DB_POOL", 5),
            log_level=env_str("CHATKORE_LOG_LEVEL", "INFO"),
        )
