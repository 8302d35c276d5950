"""Billing settings, read once from the environment (names as in DESIGN §3)."""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from services.common.config import (
    DEFAULT_BILLING_ADDR,
    ConfigError,
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

MICRO = 1_000_000  # micro-credits per credit


@dataclass(frozen=True)
class AlipayConfig:
    app_id: str
    private_key: Secret   # the app's RSA private key: PEM, or Alipay's bare base64
    public_key: str       # Alipay's public key: PEM, or bare base64
    gateway: str


@dataclass(frozen=True)
class StripeConfig:
    secret_key: Secret
    webhook_secret: Secret
    api_base: str


@dataclass(frozen=True)
class PaymentConfig:
    ttl_s: int                 # an unpaid order expires after this
    invite_reward_pct: int     # percent of an invitee's first paid order credited to the inviter
    public_url: str            # where providers send notifications and buyers come back to
    alipay: AlipayConfig | None
    stripe: StripeConfig | None
    unverified_per_source: int = 30  # unverified notifications kept a minute from one address
    unverified_per_min: int = 300    # ... and from all addresses together

    @property
    def demo(self) -> bool:
        """The demo provider pays without money: only while no real provider is set."""
        return self.alipay is None and self.stripe is None

    @classmethod
    def from_env(cls) -> PaymentConfig:
        public_url = env_str("CHATKORE_PUBLIC_URL", "").rstrip("/")
        alipay = None
        if app_id := env_str("CHATKORE_ALIPAY_APP_ID", ""):
            alipay = AlipayConfig(
                app_id=app_id,
                private_key=Secret(_key_text("CHATKORE_ALIPAY_PRIVATE_KEY")),
                public_key=_key_text("CHATKORE_ALIPAY_PUBLIC_KEY"),
                gateway=env_str("CHATKORE_ALIPAY_GATEWAY", "https://openapi.alipay.com/gateway.do"),
            )
        stripe = None
        if secret := env_str("CHATKORE_STRIPE_SECRET_KEY", ""):
            stripe = StripeConfig(
                secret_key=Secret(secret),
                webhook_secret=Secret(env_str("CHATKORE_STRIPE_WEBHOOK_SECRET")),
                api_base=env_str("CHATKORE_STRIPE_API_BASE", "https://api.stripe.com").rstrip("/"),
            )
        if (alipay or stripe) and not public_url:
            raise ConfigError("CHATKORE_PUBLIC_URL is required with a payment provider (its notify and return URLs)")
        pct = env_int("CHATKORE_INVITE_REWARD_PCT", 10)
        if not 0 <= pct <= 100:
            raise ConfigError(f"CHATKORE_INVITE_REWARD_PCT must be 0 to 100, got {pct}")
        ttl = env_int("CHATKORE_PAYMENT_TTL_S", 1800)
        if ttl < 60:
            raise ConfigError(f"CHATKORE_PAYMENT_TTL_S must be at least 60, got {ttl}")
        per_source = env_int("CHATKORE_PAYMENT_UNVERIFIED_PER_SOURCE", 30)
        per_min = env_int("CHATKORE_PAYMENT_UNVERIFIED_PER_MIN", 300)
        if not 1 <= per_source <= per_min:
            raise ConfigError("CHATKORE_PAYMENT_UNVERIFIED_PER_SOURCE must be at least 1 and at most"
                              f" CHATKORE_PAYMENT_UNVERIFIED_PER_MIN, got {per_source} and {per_min}")
        return cls(ttl_s=ttl, invite_reward_pct=pct, public_url=public_url, alipay=alipay, stripe=stripe,
                   unverified_per_source=per_source, unverified_per_min=per_min)


def _key_text(name: str) -> str:
    """A key given as its text, or as the path of a file holding it."""
    value = env_str(name)
    if "-----BEGIN" in value:
        return value
    try:
        return Path(value).read_text()
    except OSError:
        return value  # Alipay's console hands out keys as bare base64


@dataclass(frozen=True)
class BillingConfig:
    database_url: Secret
    listen: str
    telemetry: Telemetry       # metrics port and tracing
    tls: GrpcTls               # this process's certificate (services/common/mtls.py)
    health_listen: str | None  # a plaintext port serving only gRPC health (for kubelet probes)
    hold_ttl_s: int          # an open hold older than this is swept (its request died)
    sweep_interval_s: float
    signup_credits: int      # micro-credits a new user starts with
    grace_s: float
    pool_size: int
    log_level: str
    credits_per_cny: int     # micro-credits one yuan buys
    credits_per_usd: int     # micro-credits one US dollar buys
    payments: PaymentConfig

    @classmethod
    def from_env(cls) -> BillingConfig:
        return cls(
            database_url=env_secret("DATABASE_URL"),
            listen=listen_address("billing", DEFAULT_BILLING_ADDR),
            telemetry=Telemetry.from_env(),
            tls=GrpcTls.from_env("billing"),
            health_listen=env_optional("CHATKORE_HEALTH_LISTEN"),
            hold_ttl_s=env_int("CHATKORE_HOLD_TTL_S", 900),
            sweep_interval_s=env_float("CHATKORE_SWEEP_INTERVAL_S", 5.0),
            signup_credits=env_int("CHATKORE_SIGNUP_CREDITS", 100) * MICRO,
            grace_s=env_float("CHATKORE_GRACE_S", 20.0),
            pool_size=env_int("CHATKORE_DB_POOL", 10),
            log_level=env_str("CHATKORE_LOG_LEVEL", "INFO"),
            credits_per_cny=env_rate("CHATKORE_CREDITS_PER_CNY", "140"),
            credits_per_usd=env_rate("CHATKORE_CREDITS_PER_USD", "1000"),
            payments=PaymentConfig.from_env(),
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
