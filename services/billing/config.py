"""Billing settings, read once from the environment (names as in DESIGN §3)."""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from services.common.config import (
    DEFAULT_BILLING_ADDR,
    ConfigError,
    Secret,
    env_float,
    env_int,
    env_secret,
    env_str,
    listen_address,
)
from services.common.telemetry import Telemetry

MICRO = 1_000_000  # micro-credits per credit


@dataclass(frozen=True)
class BillingConfig:
    database_url: Secret
    listen: str
    telemetry: Telemetry       # metrics port and tracing
    hold_ttl_s: int          # an open hold older than this is swept (its request died)
    sweep_interval_s: float
    signup_credits: int      # micro-credits a new user starts with
    grace_s: float
    pool_size: int
    log_level: str
    credits_per_cny: int     # micro-credits one yuan buys
    credits_per_usd: int     # micro-credits one US dollar buys

    @classmethod
    def from_env(cls) -> BillingConfig:
        return cls(
            database_url=env_secret("DATABASE_URL"),
            listen=listen_address("billing", DEFAULT_BILLING_ADDR),
            telemetry=Telemetry.from_env(),
            hold_ttl_s=env_int("CHATKORE_HOLD_TTL_S", 900),
            sweep_interval_s=env_float("CHATKORE_SWEEP_INTERVAL_S", 5.0),
            signup_credits=env_int("CHATKORE_SIGNUP_CREDITS", 100) * MICRO,
            grace_s=env_float("CHATKORE_GRACE_S", 20.0),
            pool_size=env_int("CHATKORE_DB_POOL", 10),
            log_level=env_str("CHATKORE_LOG_LEVEL", "INFO"),
            credits_per_cny=env_rate("CHATKORE_CREDITS_PER_CNY", "140"),
            credits_per_usd=env_rate("CHATKORE_CREDITS_PER_USD", "1000"),
        )


def env_rate(name: str, default: str) -> int:
    """Credits one unit of a currency buys (a decimal, up to 6 places), as micro-credits."""
    raw = env_str(name, default)
    try:
        micro = Decimal(raw) * MICRO
    except InvalidOperation:
        raise ConfigError(f"{name} must be a number of credits, got {raw!r}") from None
    if not micro.is_finite() or micro <= 0 or micro != micro.to_integral_value() or micro > 10**15:
        raise ConfigError(f"{name} must be a positive number of credits with at most 6 decimals, got {raw!r}")
    return int(micro)
