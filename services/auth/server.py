"""Build, start and stop the auth service."""
from __future__ import annotations

import asyncio

from chatkore.v1 import auth_pb2_grpc
from services.auth.accounts import Accounts
from services.auth.alerts import BalanceAlerts
from services.auth.audit import AuditLog
from services.auth.billing_peer import BillingPeer
from services.auth.config import AuthConfig
from services.auth.keys import Keys
from services.auth.mail import Mailer
from services.auth.notice import Notices
from services.auth.passwords import Passwords
from services.auth.recovery import Recovery
from services.auth.servicer import AuthServicer
from services.auth.verification import Verification
from services.common import db, grpcserver


async def serve(cfg: AuthConfig) -> None:
    pool = await db.open_pool(cfg.database_url.reveal(), name="auth", max_size=cfg.pool_size)
    keys = Keys(pool, cfg.admin_key)
    billing = BillingPeer(cfg.billing_addr, cfg.tls)
    passwords = Passwords(memory_kib=cfg.argon2_memory_kib, time_cost=cfg.argon2_time_cost,
                          at_once=cfg.password_hashes_at_once)
    accounts = Accounts(pool, billing, passwords, cfg.session_ttl_s)
    mailer = Mailer(cfg.smtp_url.reveal() if cfg.smtp_url else None, cfg.mail_from)
    servicer = AuthServicer(keys, accounts, AuditLog(pool), Recovery(pool, passwords, mailer, cfg.public_url),
                            Verification(pool, billing, mailer, cfg.public_url), Notices(pool))
    pruner = asyncio.create_task(keys.prune_changes_forever())
    alerts = asyncio.create_task(BalanceAlerts(pool, billing, mailer, cfg.public_url)
                                 .check_forever(cfg.balance_alert_interval_s))
    try:
        await grpcserver.serve(
            name="auth",
            listen=cfg.listen,
            register=lambda server: auth_pb2_grpc.add_AuthServicer_to_server(servicer, server),
            ready=lambda: db.ping(pool),
            pool=pool,
            grace_s=cfg.grace_s,
            telemetry=cfg.telemetry,
            tls=cfg.tls,
            health_listen=cfg.health_listen,
        )
    finally:
        pruner.cancel()
        alerts.cancel()
        await mailer.close()
        await billing.close()
        passwords.close()
        await pool.close()
