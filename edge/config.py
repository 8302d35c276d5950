"""Edge settings, read once from the environment (names as in DESIGN §3)."""
from __future__ import annotations

import ipaddress
import resource
from dataclasses import dataclass

from edge.captcha import CaptchaConfig
from edge.limits import Limits
from services.common.config import (
    DEFAULT_AUTH_ADDR,
    DEFAULT_BILLING_ADDR,
    DEFAULT_INFERENCE_ADDR,
    ConfigError,
    env_float,
    env_int,
    env_optional,
    env_str,
)
from services.common.mtls import GrpcTls
from services.common.telemetry import Telemetry


@dataclass(frozen=True)
class EdgeConfig:
    host: str
    port: int
    auth_addr: str
    billing_addr: str
    inference_addr: str
    telemetry: Telemetry       # metrics port (0: /metrics on the main port) and tracing
    tls: GrpcTls               # the edge's certificate for calling the services (services/common/mtls.py)
    max_body_bytes: int
    limits: Limits             # what one request may carry, and how slowly
    max_header_bytes: int      # one header line (and the request line)
    header_timeout_s: float    # a request's headers must arrive within this
    max_connections: int       # open client connections at once; more are answered 503 and closed
    auth_failures_per_min: int  # failed authentications per source address before 429; 0 = no limit
    signups_per_hour: int       # console sign-ups per source address an hour; 0 = no limit
    key_cache_s: float         # how long an authenticated key is remembered (while the change feed is live)
    relay_deadline_s: float    # gRPC deadline of a unary relay (covers failover across channels)
    stream_deadline_s: float   # gRPC deadline of a streamed relay
    redis_url: str | None
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]  # whose X-Forwarded-For counts
    grace_s: float
    log_level: str
    cors_origins: tuple[str, ...] = ("*",)  # origins /v1 answers CORS for; "*" for any (edge/cors.py)
    captcha: CaptchaConfig | None = None    # a captcha on console sign-up (edge/captcha.py)

    @classmethod
    def from_env(cls) -> EdgeConfig:
        upstream_timeout = env_float("CHATKORE_UPSTREAM_TIMEOUT_S", 180.0)
        max_body = int(env_float("CHATKORE_MAX_BODY_MB", 20) * 1024 * 1024)
        return cls(
            host=env_str("CHATKORE_HOST", "127.0.0.1"),
            port=env_int("CHATKORE_HTTP_PORT", 8080),
            auth_addr=env_str("CHATKORE_AUTH_ADDR", DEFAULT_AUTH_ADDR),
            billing_addr=env_str("CHATKORE_BILLING_ADDR", DEFAULT_BILLING_ADDR),
            inference_addr=env_str("CHATKORE_INFERENCE_ADDR", DEFAULT_INFERENCE_ADDR),
            telemetry=Telemetry.from_env(),
            tls=GrpcTls.from_env("edge"),
            max_body_bytes=max_body,
            limits=Limits(
                max_body_bytes=max_body,
                max_small_body_bytes=env_int("CHATKORE_MAX_ADMIN_BODY_KB", 64) * 1024,
                max_json_nodes=env_int("CHATKORE_MAX_JSON_NODES", 100_000),
                body_timeout_s=env_float("CHATKORE_BODY_TIMEOUT_S", 60.0),
                max_json_depth=env_int("CHATKORE_MAX_JSON_DEPTH", 64),
                max_string_chars=env_int("CHATKORE_MAX_STRING_CHARS", 10_485_760),
                max_messages=env_int("CHATKORE_MAX_MESSAGES", 2048),
            ),
            max_header_bytes=env_int("CHATKORE_MAX_HEADER_BYTES", 16384),
            header_timeout_s=env_float("CHATKORE_HEADER_TIMEOUT_S", 10.0),
            max_connections=env_int("CHATKORE_MAX_CONNECTIONS", 0) or default_max_connections(),
            auth_failures_per_min=env_int("CHATKORE_AUTH_FAILURES_PER_MIN", 30),
            signups_per_hour=env_int("CHATKORE_SIGNUPS_PER_HOUR", 5),
            # Revocation still reaches every replica within 1 s (DESIGN §5): see edge/authn.py.
            key_cache_s=env_float("CHATKORE_KEY_CACHE_S", 300.0),
            relay_deadline_s=upstream_timeout * 3 + 30,
            stream_deadline_s=env_float("CHATKORE_MAX_STREAM_S", 600.0) + 60,
            redis_url=env_optional("REDIS_URL"),
            trusted_proxies=trusted_networks(env_optional("CHATKORE_TRUSTED_PROXIES") or ""),
            grace_s=env_float("CHATKORE_GRACE_S", 20.0),
            log_level=env_str("CHATKORE_LOG_LEVEL", "INFO"),
            cors_origins=parse_origins(env_str("CHATKORE_CORS_ORIGINS", "*")),
            captcha=CaptchaConfig.from_env(),
        )


def parse_origins(spec: str) -> tuple[str, ...]:
    """CHATKORE_CORS_ORIGINS: `*` (any origin) or a comma-separated list of origins (edge/cors.py)."""
    return tuple(o.strip().rstrip("/") for o in spec.split(",") if o.strip())


def trusted_networks(spec: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """`10.0.0.0/8, 192.168.1.7` → networks; a bad entry stops the edge at start-up."""
    nets = []
    for part in spec.split(","):
        if part.strip():
            try:
                nets.append(ipaddress.ip_network(part.strip(), strict=False))
            except ValueError:
                raise ConfigError(f"CHATKORE_TRUSTED_PROXIES: {part.strip()!r} is not an address or a network"
                                  " (e.g. 10.0.0.0/8)") from None
    return tuple(nets)


def default_max_connections() -> int:
    """What the process's file descriptor limit allows, less room for everything else it
    opens (gRPC channels, Redis, logs): 10,000 where the limit is high."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 10_000
    return max(64, min(10_000, soft - 128))
