"""Edge settings, read once from the environment (names as in DESIGN §3)."""
from __future__ import annotations

from dataclasses import dataclass

from services.common.config import (
    DEFAULT_AUTH_ADDR,
    DEFAULT_BILLING_ADDR,
    DEFAULT_INFERENCE_ADDR,
    env_float,
    env_int,
    env_optional,
    env_str,
)
from services.common.telemetry import Telemetry


@dataclass(frozen=True)
class EdgeConfig:
    host: str
    port: int
    auth_addr: str
    billing_addr: str
    inference_addr: str
    telemetry: Telemetry       # metrics port (0: /metrics on the main port) and tracing
    max_body_bytes: int
    key_cache_s: float         # how long an authenticated key is trusted without asking auth
    relay_deadline_s: float    # gRPC deadline of a unary relay (covers failover across channels)
    stream_deadline_s: float   # gRPC deadline of a streamed relay
    redis_url: str | None
    grace_s: float
    log_level: str

    @classmethod
    def from_env(cls) -> EdgeConfig:
        upstream_timeout = env_float("CHATKORE_UPSTREAM_TIMEOUT_S", 180.0)
        return cls(
            host=env_str("CHATKORE_HOST", "127.0.0.1"),
            port=env_int("CHATKORE_HTTP_PORT", 8080),
            auth_addr=env_str("CHATKORE_AUTH_ADDR", DEFAULT_AUTH_ADDR),
            billing_addr=env_str("CHATKORE_BILLING_ADDR", DEFAULT_BILLING_ADDR),
            inference_addr=env_str("CHATKORE_INFERENCE_ADDR", DEFAULT_INFERENCE_ADDR),
            telemetry=Telemetry.from_env(),
            max_body_bytes=int(env_float("CHATKORE_MAX_BODY_MB", 20) * 1024 * 1024),
            # Revocation must reach every replica within 1 s (DESIGN §5): trust a key half that.
            key_cache_s=min(env_float("CHATKORE_KEY_CACHE_S", 0.5), 0.9),
            relay_deadline_s=upstream_timeout * 3 + 30,
            stream_deadline_s=env_float("CHATKORE_MAX_STREAM_S", 600.0) + 60,
            redis_url=env_optional("REDIS_URL"),
            grace_s=env_float("CHATKORE_GRACE_S", 20.0),
            log_level=env_str("CHATKORE_LOG_LEVEL", "INFO"),
        )
