"""Stripe Checkout through the official `stripe` library: a Checkout Session per order, and
webhook events verified by their `Stripe-Signature` (HMAC with the webhook secret, and a
timestamp no older than the tolerance). `stripe` is imported when Stripe is configured, not
before: it loads aiohttp, which billing otherwise never needs (issue 16)."""
from __future__ import annotations

import time
from types import ModuleType
from typing import Any

from services.billing.config import StripeConfig

TOLERANCE_S = 300  # Stripe's own default: an event signed longer ago is refused (replays)
MIN_SESSION_S = 1800  # Stripe refuses a Checkout Session that expires sooner than 30 minutes


class StripeError(Exception):
    """Stripe could not be reached or refused the session; the message is safe to show."""


class BadEvent(Exception):
    """A webhook whose signature, timestamp or body does not hold."""


def _stripe() -> ModuleType:
    import stripe

    return stripe


class StripeCheckout:
    def __init__(self, cfg: StripeConfig, public_url: str) -> None:
        stripe = _stripe()
        self._webhook_secret = cfg.webhook_secret
        self._client = stripe.StripeClient(cfg.secret_key.reveal(), base_addresses={"api": cfg.api_base},
                                           http_client=stripe.AIOHTTPClient(), max_network_retries=1)
        self.success_url = f"{public_url}/console?paid={{CHECKOUT_SESSION_ID}}#topup"
        self.cancel_url = f"{public_url}/console#topup"

    async def create_session(self, order_id: str, amount_cents: int, credits: str, ttl_s: int) -> tuple[str, str]:
        """(session id, its checkout URL)."""
        stripe = _stripe()
        try:
            session = await self._client.v1.checkout.sessions.create_async(params={
                "mode": "payment",
                "client_reference_id": order_id,
                "line_items": [{"quantity": 1, "price_data": {
                    "currency": "usd", "unit_amount": amount_cents,
                    "product_data": {"name": f"chatkore credits: {credits}"},
                }}],
                "metadata": {"order_id": order_id},
                "payment_intent_data": {"metadata": {"order_id": order_id}},
                "success_url": self.success_url,
                "cancel_url": self.cancel_url,
                "expires_at": int(time.time()) + max(ttl_s, MIN_SESSION_S) + 60,
            })
        except stripe.StripeError as exc:
            raise StripeError(exc.user_message or "Stripe refused the payment session.") from None
        return session.id, session.url or ""

    def event(self, payload: bytes, signature: str) -> dict[str, Any]:
        """The verified event as plain JSON, or BadEvent."""
        stripe = _stripe()
        try:
            event = stripe.Webhook.construct_event(payload, signature, self._webhook_secret.reveal(),
                                                   tolerance=TOLERANCE_S)
        except stripe.SignatureVerificationError:
            raise BadEvent("the Stripe-Signature does not verify, or its timestamp is too old") from None
        except (ValueError, TypeError, AttributeError, KeyError):  # signed, yet not an event
            raise BadEvent("the body is not a Stripe event") from None
        return event.to_dict()
