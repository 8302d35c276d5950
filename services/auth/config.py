"""Auth settings, read once from the environment (names as in DESIGN §3)."""
from __future__ import annotations

from dataclasses import dataclass

from services.common.config import (
    DEFAULT_AUTH_ADDR,
    DEFAULT_BILLING_ADDR,
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


@dataclass(frozen=True)
class AuthConfig:
    database_url: Secret
    admin_key: Secret
    listen: str
    billing_addr: str          # console sign-up makes the billing user
    session_ttl_s: int         # how long a console sign-in lasts
    argon2_memory_kib: int     # memory one password hash holds while it runs
    argon2_time_cost: int      # argon2id passes over that memory
    password_hashes_at_once: int  # hashes running at once: memory_kib × this must fit the pod's limit
    smtp_url: Secret | None    # smtp:// or smtps:// (with credentials); unset: mails go to the log
    mail_from: str             # the From of every mail
    public_url: str            # this service's address as users reach it (links in mails)
    balance_alert_interval_s: float  # how often billing is asked for low-balance crossings to mail
    telemetry: Telemetry       # metrics port and tracing
    tls: GrpcTls               # this process's certificate (services/common/mtls.py)
    health_listen: str | None  # a plaintext port serving only gRPC health (for kubelet probes)
    grace_s: float
    pool_size: int
    log_level: str

    @classmethod
    def from_env(cls) -> AuthConfig:
        return cls(
            database_url=env_secret("DATABASE_URL"),
            admin_key=env_secret("CHATKORE_ADMIN_KEY"),
            listen=listen_address("auth", DEFAULT_AUTH_ADDR),
            billing_addr=env_str("CHATKORE_BILLING_ADDR", DEFAULT_BILLING_ADDR),
            session_ttl_s=env_int("CHATKORE_SESSION_TTL_S", 7 * 24 * 3600),
            # RFC 9106's second recommendation (argon2-cffi's default): 3 passes over 64 MiB.
            argon2_memory_kib=env_int("CHATKORE_ARGON2_MEMORY_KIB", 65536),
            argon2_time_cost=env_int("CHATKORE_ARGON2_TIME_COST", 3),
            password_hashes_at_once=env_int("CHATKORE_PASSWORD_HASHES_AT_ONCE", 2),
            smtp_url=Secret(smtp) if (smtp := env_optional("CHATKORE_SMTP_URL")) else None,
            mail_from=env_str("CHATKORE_MAIL_FROM", "chatkore <noreply@localhost>"),
            public_url=env_str("CHATKORE_PUBLIC_URL", "http://{}:{}".format(
                env_str("CHATKORE_HOST", "127.0.0.1"), env_int("CHATKORE_HTTP_PORT", 8080))),
            balance_alert_interval_s=env_float("CHATKORE_BALANCE_ALERT_INTERVAL_S", 30.0),
            telemetry=Telemetry.from_env(),
            tls=GrpcTls.from_env("auth"),
            health_listen=env_optional("CHATKORE_HEALTH_LISTEN"),
            grace_s=env_float("CHATKORE_GRACE_S", 20.0),
            pool_size=env_int("CHATKORE_DB_POOL", 10),
            log_level=env_str("CHATKORE_LOG_LEVEL", "INFO"),
        )
