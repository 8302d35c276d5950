"""Low-balance mails: auth asks billing now and then for the crossings it found and mails each
user once per crossing (billing disarms an alert as it reports it and re-arms it once the
balance is back above the threshold).

Why a periodic check and not a step of settlement: settling is the hot path, and billing's
settlements are being batched into group commits; a check that reads committed balances every
few seconds adds nothing to either and cannot be broken by how settlements are grouped. The
price is a delay of one interval, and a dip below and back above within one interval is not
reported (the banner is about where the balance is, and that is where it is).
"""
from __future__ import annotations

import asyncio
import logging
from decimal import Decimal

import grpc
from psycopg_pool import AsyncConnectionPool

from services.auth import store
from services.auth.billing_peer import BillingPeer
from services.auth.mail import Mailer

log = logging.getLogger(__name__)
MICRO = Decimal(1_000_000)
LETTERS = {
    "zh-CN": ("chatkore 余额不足提醒",
              "你的 chatkore 账号 {email} 的余额为 {balance} 额度，已低于你设置的提醒值 {threshold}。\n"
              "请及时充值，以免调用失败：{link}\n\n余额回到提醒值以上后，下次低于时会再提醒一次。"),
    "en": ("Your chatkore balance is low",
           "The balance of your chatkore account {email} is {balance} credits, below the {threshold} you set"
           " for this alert.\nTop up so that your calls keep working: {link}\n\n"
           "Once the balance is back above it, you will be told again the next time it falls below."),
}


def credits(micro: int) -> str:
    return format((Decimal(micro) / MICRO).normalize(), "f")


class BalanceAlerts:
    def __init__(self, pool: AsyncConnectionPool, billing: BillingPeer, mailer: Mailer, public_url: str) -> None:
        self._pool = pool
        self._billing = billing
        self._mailer = mailer
        self._link = public_url.rstrip("/") + "/console#topup"

    async def check(self) -> int:
        """Mail every crossing billing reports now; how many."""
        alerts = await self._billing.take_balance_alerts()
        if not alerts:
            return 0
        async with self._pool.connection() as conn:
            accounts = {a.user_id: a for a in await store.accounts_of(conn, [a.user_id for a in alerts])}
        for alert in alerts:
            account = accounts.get(alert.user_id)
            if account is None:  # a user of the admin API: no address to write to
                continue
            subject, text = LETTERS.get(alert.lang, LETTERS["en"])
            self._mailer.post(account.email, subject, text.format(
                email=account.email, balance=credits(alert.balance), threshold=credits(alert.threshold),
                link=self._link))
        return len(alerts)

    async def check_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.check()
            except grpc.aio.AioRpcError as exc:  # billing away: the crossings wait in its table
                log.warning("balance alerts: billing answered %s", exc.code().name)
            except Exception:  # noqa: BLE001 - the loop must outlive one bad round
                log.exception("balance alerts: a round failed")
