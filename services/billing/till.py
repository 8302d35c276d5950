"""Money in: payment orders, the providers' notifications, invite rewards.

A notification is hostile until verified. Whatever arrives, and however often, an order is
credited at most once: store.credit_order moves it from pending to paid in the same
transaction that writes its top-up (reference `order:<id>`) and ledger entries. Every
notification is kept with its verdict for the operator; a signed one that disagrees with
its order (amount, currency, app) puts the order under review.
"""
from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from services.billing import store
from services.billing.alipay import Alipay, AlipayError, yuan
from services.billing.config import PaymentConfig
from services.billing.errors import InvalidRequest, NotFound, Unavailable
from services.billing.pricing import Rates
from services.billing.store import NotificationRow, OrderRow
from services.billing.stripe_checkout import BadEvent, StripeCheckout, StripeError
from services.billing.throttle import Throttle
from services.common.metrics import NOTIFICATIONS_DROPPED

log = logging.getLogger(__name__)

CURRENCY = {"alipay": "CNY", "stripe": "USD", "demo": "CNY"}
MAX_AMOUNT = 10_000_000  # minor units: 100,000 yuan or dollars in one order
ALIPAY_PAID = ("TRADE_SUCCESS", "TRADE_FINISHED")
STRIPE_PAID = ("checkout.session.completed", "checkout.session.async_payment_succeeded")


@dataclass(frozen=True)
class Verdict:
    accepted: bool  # the provider may stop sending it
    verdict: str    # credited, duplicate, refunded, closed, ignored, refused
    reason: str
    order_id: str


@dataclass(frozen=True)
class InviteInfo:
    code: str
    invited: int
    earned: int
    reward_pct: int


class Till:
    def __init__(self, pool: AsyncConnectionPool, rates: Rates, cfg: PaymentConfig) -> None:
        self._pool = pool
        self.rates = rates
        self._cfg = cfg
        self.alipay = Alipay(cfg.alipay, cfg.public_url) if cfg.alipay else None
        self.stripe = StripeCheckout(cfg.stripe, cfg.public_url) if cfg.stripe else None
        self._unverified = Throttle(cfg.unverified_per_source, cfg.unverified_per_min)

    def providers(self) -> list[str]:
        if self._cfg.demo:
            return ["demo"]
        return [name for name, on in (("alipay", self.alipay), ("stripe", self.stripe)) if on]

    # --- orders -------------------------------------------------------------------

    async def create_order(self, user_id: int, provider: str, amount: int) -> OrderRow:
        if provider not in self.providers():
            raise InvalidRequest(f"Payments with {provider!r} are not available here; use one of: "
                                 + ", ".join(self.providers()), param="provider", code="provider_unavailable")
        if not 0 < amount <= MAX_AMOUNT:
            raise InvalidRequest(f"'amount' must be more than 0 and at most {MAX_AMOUNT // 100}", param="amount")
        currency = CURRENCY[provider]
        credits = self.rates.credits_for(amount, currency)
        if credits <= 0:
            raise InvalidRequest("This amount buys less than one micro-credit", param="amount")
        order_id = f"ord_{secrets.token_hex(12)}"
        ttl = self._cfg.ttl_s
        subject = f"chatkore credits {credits / 1_000_000:g}"
        pay_url, qr_code, ref = f"/pay/demo/{order_id}", "", ""
        if provider == "alipay":
            assert self.alipay is not None
            pay_url = self.alipay.page_pay_url(order_id, amount, subject, ttl)
            try:
                qr_code = await self.alipay.precreate(order_id, amount, subject, ttl)
            except AlipayError as exc:  # the desktop page still works; the console shows no QR
                log.warning("alipay precreate of %s failed: %s", order_id, exc)
        elif provider == "stripe":
            assert self.stripe is not None
            try:
                ref, pay_url = await self.stripe.create_session(order_id, amount, f"{credits / 1_000_000:g}", ttl)
            except StripeError as exc:
                raise Unavailable(f"Stripe: {exc}") from None
        async with self._pool.connection() as conn:
            try:
                await store.create_order(conn, order_id=order_id, user_id=user_id, provider=provider,
                                         currency=currency, amount=amount, credits=credits, ttl_s=ttl)
            except psycopg.errors.ForeignKeyViolation:
                raise NotFound(f"No user with id {user_id}") from None
            order = await store.set_order_links(conn, order_id, pay_url, qr_code, ref)
        assert order is not None
        return order

    async def get_order(self, order_id: str, user_id: int = 0) -> OrderRow:
        async with self._pool.connection() as conn:
            order = await store.get_order(conn, order_id[:100])
        if order is None or (user_id and order.user_id != user_id):
            raise NotFound(f"No order {order_id[:100]!r}")
        return order

    async def list_orders(self, user_id: int, status: str, provider: str, review: bool | None,
                          limit: int) -> list[OrderRow]:
        limit = 50 if limit <= 0 else min(limit, 500)
        async with self._pool.connection() as conn:
            return await store.list_orders(conn, user_id=user_id, status=status[:20], provider=provider[:20],
                                           review=review, limit=limit)

    async def set_review(self, order_id: str, review: bool, note: str) -> OrderRow:
        async with self._pool.connection() as conn:
            order = await store.set_order_review(conn, order_id[:100], review, note[:500])
        if order is None:
            raise NotFound(f"No order {order_id[:100]!r}")
        return order

    async def notifications(self, order_id: str, limit: int) -> list[NotificationRow]:
        limit = 100 if limit <= 0 else min(limit, 500)
        async with self._pool.connection() as conn:
            return await store.list_notifications(conn, order_id[:100], limit)

    # --- paying -------------------------------------------------------------------------

    async def pay_demo(self, user_id: int, order_id: str) -> OrderRow:
        """The demo provider's Pay button: the same crediting path as a real payment."""
        if not self._cfg.demo:
            raise InvalidRequest("The demo provider is off: a real payment provider is configured.",
                                 param="provider", code="provider_unavailable")
        order = await self.get_order(order_id, user_id)
        if order.provider != "demo":
            raise InvalidRequest("Only a demo order can be paid here.", param="provider")
        if order.status == "expired":
            raise InvalidRequest("This order has expired; start a new one.", code="order_expired")
        await self._credit("demo", order_id, "demo", "demo_pay", "the demo Pay button")
        return await self.get_order(order_id, user_id)

    async def _credit(self, provider: str, order_id: str, ref: str, event: str, reason: str) -> Verdict:
        async with self._pool.connection() as conn:
            credit = await store.credit_order(conn, order_id, ref, self._cfg.invite_reward_pct)
            if credit.order is not None:
                verdict = Verdict(True, "credited", reason, order_id)
            elif credit.status == "paid":
                verdict = Verdict(True, "duplicate", "already paid: nothing more to credit", order_id)
            else:  # the provider's word, final: answered so it stops, kept for the operator
                verdict = Verdict(True, "refused", f"the order is {credit.status or 'unknown'}: nothing credited"
                                  " (refunded or closed before the payment was reported)", order_id)
            await store.record_notification(conn, provider, order_id, event, verdict.verdict, verdict.reason)
        return verdict

    async def _refuse(self, provider: str, order_id: str, event: str, reason: str, *, review: bool = False,
                      accepted: bool = False) -> Verdict:
        log.warning("refused a %s notification for %r: %s", provider, order_id[:100], reason)
        async with self._pool.connection() as conn:
            await store.record_notification(conn, provider, order_id, event, "refused", reason)
            if review and order_id:
                await store.set_order_review(conn, order_id, True, f"{provider}: {reason}"[:500])
        return Verdict(accepted, "refused", reason, order_id)

    async def _refuse_unverified(self, provider: str, source: str, order_id: str, event: str,
                                 reason: str) -> Verdict:
        """A notification nobody vouches for: kept like any refusal while the sender and
        everyone together stay under their limits per minute; past them, answered the same
        but only counted, so a flood cannot fill the table (nor the log)."""
        limit = self._unverified.admit(source)
        if limit:
            NOTIFICATIONS_DROPPED.labels(provider, limit).inc()
            return Verdict(False, "refused", reason, order_id)
        return await self._refuse(provider, order_id, event, reason)

    async def _ignore(self, provider: str, order_id: str, event: str, reason: str) -> Verdict:
        async with self._pool.connection() as conn:
            await store.record_notification(conn, provider, order_id, event, "ignored", reason)
        return Verdict(True, "ignored", reason, order_id)

    async def alipay_notify(self, params: dict[str, str], source: str = "") -> Verdict:
        order_id = _text(params.get("out_trade_no", ""))
        status = _text(params.get("trade_status", ""))
        if self.alipay is None:
            return await self._refuse_unverified("alipay", source, order_id, status, "Alipay is not configured")
        if not self.alipay.notification_verified(params):
            return await self._refuse_unverified("alipay", source, order_id, status,
                                                 "the signature does not verify with Alipay's key")
        if params.get("app_id") != self.alipay.app_id:
            return await self._refuse("alipay", order_id, status, f"app_id {params.get('app_id', '')[:40]!r} is not"
                                      " ours", review=await self._exists(order_id))
        async with self._pool.connection() as conn:
            order = await store.get_order(conn, order_id)
        if order is None or order.provider != "alipay":
            return await self._refuse("alipay", order_id, status, "out_trade_no is no Alipay order of ours",
                                      review=order is not None)
        if not _same_amount(params.get("total_amount", ""), order.amount):
            return await self._refuse("alipay", order_id, status,
                                      f"total_amount {params.get('total_amount', '')[:20]!r} is not the order's"
                                      f" {yuan(order.amount)}", review=True)
        if status == "TRADE_CLOSED":
            return await self._alipay_closed(order)
        if status not in ALIPAY_PAID:
            return await self._refuse("alipay", order_id, status, f"trade_status {status!r} is not a payment")
        if "refund_fee" in params:
            return await self._alipay_partial_refund(order, status, params)
        return await self._credit("alipay", order_id, params.get("trade_no", "")[:100], status,
                                  f"Alipay {status}, {yuan(order.amount)} CNY")

    async def _alipay_partial_refund(self, order: OrderRow, status: str, params: dict[str, str]) -> Verdict:
        """A paid trade that notifies with `refund_fee` (and gmt_refund): part of it was refunded,
        `refund_fee` yuan in all so far. The payment stands (credited if it was not yet) and the
        refunded share of its credits is taken back; the target is cumulative, so the same
        notification again, or five at once, takes back once."""
        refund = _minor_units(params.get("refund_fee", ""))
        if refund is None or refund <= 0 or refund > order.amount:
            return await self._refuse("alipay", order.id, status,
                                      f"refund_fee {params.get('refund_fee', '')[:20]!r} is not a refund of the"
                                      f" order's {yuan(order.amount)}", review=True)
        if order.status in ("pending", "expired"):  # its payment notification has not come (or not yet): it is paid
            await self._credit("alipay", order.id, params.get("trade_no", "")[:100], status,
                               f"Alipay {status}, {yuan(order.amount)} CNY")
        target = order.credits * refund // order.amount
        return await self._take_back("alipay", f"{status} refund", order.id, target, refund >= order.amount,
                                     f"Alipay refunded {yuan(refund)} of {yuan(order.amount)} CNY")

    async def _alipay_closed(self, order: OrderRow) -> Verdict:
        """TRADE_CLOSED, verified: the trade timed out unpaid, or was paid and then refunded in
        full (Alipay sends the same status for both). Acknowledged either way — refusing it
        only makes Alipay send it again for a day: an unpaid order is closed (never credited
        after), a credited one is taken back as a full refund."""
        async with self._pool.connection() as conn:
            if await store.close_order(conn, order.id):
                verdict = Verdict(True, "closed", "Alipay closed the trade unpaid: nothing credited", order.id)
                await store.record_notification(conn, "alipay", order.id, "TRADE_CLOSED", "closed", verdict.reason)
                return verdict
        return await self._take_back("alipay", "TRADE_CLOSED", order.id, order.credits, True,
                                     "Alipay closed the trade after a full refund")

    async def _exists(self, order_id: str) -> bool:
        async with self._pool.connection() as conn:
            return bool(order_id) and await store.get_order(conn, order_id) is not None

    async def stripe_webhook(self, payload: bytes, signature: str, source: str = "") -> Verdict:
        if self.stripe is None:
            return await self._refuse_unverified("stripe", source, "", "", "Stripe is not configured")
        try:
            event = self.stripe.event(payload, signature)
        except BadEvent as exc:
            return await self._refuse_unverified("stripe", source, "", "", str(exc))
        kind = str(event.get("type", ""))[:100]
        data = event.get("data")
        obj = data.get("object") if isinstance(data, dict) else None
        if not isinstance(obj, dict):
            return await self._ignore("stripe", "", kind, "no object in the event")
        # A verified event is Stripe's word: a refusal below is final (200), not worth a retry.
        if kind in STRIPE_PAID:
            return await self._stripe_paid(kind, obj)
        if kind == "charge.refunded":
            return await self._stripe_refund(kind, obj)
        return await self._ignore("stripe", _text(obj.get("client_reference_id")), kind, "not an event chatkore uses")

    async def _stripe_paid(self, kind: str, obj: dict[str, Any]) -> Verdict:
        order_id = _text(obj.get("client_reference_id"))
        if obj.get("payment_status") != "paid":
            return await self._ignore("stripe", order_id, kind, f"payment_status {_text(obj.get('payment_status'))!r}")
        async with self._pool.connection() as conn:
            order = await store.get_order(conn, order_id)
        if order is None or order.provider != "stripe":
            return await self._refuse("stripe", order_id, kind, "client_reference_id is no Stripe order of ours",
                                      review=order is not None, accepted=True)
        if obj.get("amount_total") != order.amount or _text(obj.get("currency")) != order.currency.lower():
            return await self._refuse("stripe", order_id, kind,
                                      f"amount {obj.get('amount_total')!r} {_text(obj.get('currency'))!r} is not the"
                                      f" order's {order.amount} {order.currency.lower()}", review=True, accepted=True)
        ref = _text(obj.get("payment_intent")) or _text(obj.get("id"))
        return await self._credit("stripe", order_id, ref, kind, f"Stripe {kind}")

    async def _stripe_refund(self, kind: str, obj: dict[str, Any]) -> Verdict:
        intent = _text(obj.get("payment_intent"))
        metadata = obj.get("metadata")
        named = _text(metadata.get("order_id")) if isinstance(metadata, dict) else ""
        async with self._pool.connection() as conn:
            order = await store.order_by_provider_ref(conn, "stripe", intent) if intent else None
            order = order or (await store.get_order(conn, named) if named else None)
        refunded, amount = obj.get("amount_refunded"), obj.get("amount")
        if order is None or order.provider != "stripe":
            return await self._refuse("stripe", named, kind, "the charge is no Stripe order of ours", accepted=True)
        if (not isinstance(refunded, int) or isinstance(refunded, bool) or refunded < 0
                or _text(obj.get("currency")) != order.currency.lower()):
            return await self._refuse("stripe", order.id, kind, "the refund's amount or currency is not the order's",
                                      review=True, accepted=True)
        target = order.credits * min(refunded, order.amount) // order.amount
        return await self._take_back("stripe", kind, order.id, target, refunded >= order.amount,
                                     f"refunded {refunded} of {amount}")

    async def _take_back(self, provider: str, event: str, order_id: str, target: int, fully: bool,
                         what: str) -> Verdict:
        async with self._pool.connection() as conn:
            result = await store.refund_order(conn, order_id, target, fully)
            if result is None:
                verdict = Verdict(True, "duplicate", "nothing more to take back", order_id)
            elif not result.credited:
                verdict = Verdict(True, "refunded", f"refunded before it was credited: the payment will credit"
                                  f" {target} micro-credits less ({what})", order_id)
            else:
                reason = f"took back {result.taken} micro-credits; {result.owed} owed ({what})"
                if result.invite_taken or result.invite_owed:
                    reason += (f"; the inviter's reward: took back {result.invite_taken},"
                               f" {result.invite_owed} owed")
                verdict = Verdict(True, "refunded", reason, order_id)
            await store.record_notification(conn, provider, order_id, event, verdict.verdict, verdict.reason[:500])
        return verdict

    # --- invites ----------------------------------------------------------------------

    async def invite(self, user_id: int) -> InviteInfo:
        async with self._pool.connection() as conn:
            for _ in range(3):
                try:
                    code = await store.invite_code(conn, user_id, secrets.token_hex(5))
                    break
                except psycopg.errors.UniqueViolation:  # another user has that code: draw again
                    continue
            else:
                raise Unavailable("could not draw an invite code")
            if code is None:
                raise NotFound(f"No user with id {user_id}")
            invited, earned = await store.invite_stats(conn, user_id)
        return InviteInfo(code, invited, earned, self._cfg.invite_reward_pct)

    async def accept_invite(self, user_id: int, code: str) -> bool:
        code = code.strip()
        if not code or len(code) > 64:
            return False
        async with self._pool.connection() as conn:
            return await store.accept_invite(conn, user_id, code)


def _text(value: Any) -> str:
    return value.replace("\x00", "")[:100] if isinstance(value, str) else ""


def _minor_units(value: str) -> int | None:
    """A yuan amount (a decimal string, at most two places) in fen; None if it is not one."""
    try:
        amount = Decimal(value[:30]) * 100
    except InvalidOperation:
        return None
    if not amount.is_finite() or amount != amount.to_integral_value():
        return None
    return int(amount)


def _same_amount(total_amount: str, amount_minor: int) -> bool:
    """Alipay's total_amount (yuan, a decimal string) equals the order's amount exactly."""
    try:
        value = Decimal(total_amount[:30])
    except InvalidOperation:
        return False
    return value.is_finite() and value * 100 == amount_minor
