"""Money in: the public price list, a user's payment orders, and the payment providers'
notifications (forwarded to billing, which verifies them and credits exactly once)."""
from __future__ import annotations

import asyncio
import io
import logging
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import grpc
import segno
from aiohttp import web

from chatkore.v1 import billing_pb2, inference_pb2
from edge import inputs, sessions
from edge.authn import client_ip
from edge.credits import from_micro
from edge.errors import OpenAIError, invalid
from edge.openai_api import json_response
from edge.state import PEERS

log = logging.getLogger(__name__)

RPC_TIMEOUT_S = 15


def _price_row(p: billing_pb2.Price) -> dict[str, Any]:
    row: dict[str, Any] = {"model": p.model, "prompt": from_micro(p.prompt), "completion": from_micro(p.completion),
                           "cached_prompt": from_micro(p.cached_prompt)}  # the rate in force (it may follow prompt)
    row["min_charge"] = from_micro(p.min_charge)
    if p.max_output_tokens:
        row["max_output"] = p.max_output_tokens
    row["unit"] = "credits per 1K tokens"
    if p.units.values:  # images, speech, transcription: credits per image, per 1K characters, per minute
        row["units"] = {name: from_micro(value) for name, value in sorted(p.units.values.items())}
    return row


async def pricing(request: web.Request) -> web.Response:
    """GET /api/pricing, no sign-in: every model a channel serves, at its price."""
    peers = request.app[PEERS]
    served, prices = await asyncio.gather(
        peers.inference.ListModels(inference_pb2.ListModelsRequest(), timeout=RPC_TIMEOUT_S),
        peers.billing.ListPrices(billing_pb2.ListPricesRequest(), timeout=RPC_TIMEOUT_S),
    )
    names = {m.id for m in served.models}
    return json_response({
        "object": "list",
        "data": [_price_row(p) for p in prices.prices if p.model in names],
        "credits_per_cny": from_micro(prices.credits_per_cny),
        "credits_per_usd": from_micro(prices.credits_per_usd),
        "payment_providers": list(prices.payment_providers),
    })


# --- the signed-in user's orders -------------------------------------------------------

MINOR = Decimal(100)  # fen per yuan, cents per dollar
NOTIFY_BODY_BYTES = 64 * 1024      # Alipay's notifications are a few KB
WEBHOOK_BODY_BYTES = 512 * 1024    # Stripe's events are at most a few hundred KB


def order_json(o: billing_pb2.Order) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": o.id, "status": o.status, "provider": o.provider,
        "amount": float(Decimal(o.amount) / MINOR), "currency": o.currency, "credits": from_micro(o.credits),
        "pay_url": o.pay_url, "created": o.created, "expires_at": o.expires_at, "paid_at": o.paid_at or None,
    }
    if o.qr_code:
        row["qr_code"] = o.qr_code
    if o.refunded:
        row["refunded"] = from_micro(o.refunded)
        row["owed"] = from_micro(o.owed)
    return row


def _amount(value: Any) -> int:
    """A JSON amount of yuan or dollars (at most 2 decimals) in minor units."""
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise invalid("'amount' must be a number (yuan for Alipay, dollars for Stripe)", "amount")
    minor = Decimal(value) * MINOR
    if not minor.is_finite() or minor != minor.to_integral_value():
        raise invalid("'amount' may have at most 2 decimal places", "amount")
    if not 0 < minor <= 10_000_000:
        raise invalid("'amount' must be more than 0 and at most 100000", "amount")
    return int(minor)


def order_id_param(request: web.Request) -> str:
    raw = request.match_info["id"]
    if not (4 < len(raw) <= 64 and raw.isascii() and raw.replace("_", "").isalnum()):
        raise OpenAIError(404, f"No order {raw[:40]!r}", code="not_found")
    return raw


async def create_payment(request: web.Request) -> web.Response:
    session = await sessions.resolve(request)
    body = await inputs.json_body(request)
    provider = inputs.get_str(body, "provider", limit=20)
    if not provider:
        raise invalid("Choose a payment provider: 'provider'.", "provider", "missing_required_parameter")
    if "amount" not in body:
        raise invalid("Enter an amount: 'amount'.", "amount", "missing_required_parameter")
    order = await request.app[PEERS].billing.CreateOrder(
        billing_pb2.CreateOrderRequest(user_id=session.account.user_id, provider=provider,
                                       amount=_amount(body["amount"])),
        timeout=RPC_TIMEOUT_S * 2)  # Alipay's precreate or Stripe's session are on the way
    return json_response(order_json(order), status=201)


async def list_payments(request: web.Request) -> web.Response:
    session = await sessions.resolve(request)
    reply = await request.app[PEERS].billing.ListOrders(
        billing_pb2.ListOrdersRequest(user_id=session.account.user_id, limit=100), timeout=RPC_TIMEOUT_S)
    return json_response({"data": [order_json(o) for o in reply.orders]})


async def get_payment(request: web.Request) -> web.Response:
    session = await sessions.resolve(request)
    order = await request.app[PEERS].billing.GetOrder(
        billing_pb2.GetOrderRequest(order_id=order_id_param(request), user_id=session.account.user_id),
        timeout=RPC_TIMEOUT_S)
    return json_response(order_json(order))


async def payment_qr(request: web.Request) -> web.Response:
    """The order's Alipay QR code as an SVG image, for the console to show."""
    session = await sessions.resolve(request)
    order = await request.app[PEERS].billing.GetOrder(
        billing_pb2.GetOrderRequest(order_id=order_id_param(request), user_id=session.account.user_id),
        timeout=RPC_TIMEOUT_S)
    if not order.qr_code:
        raise OpenAIError(404, "This order has no QR code.", code="not_found")
    out = io.BytesIO()
    segno.make(order.qr_code, error="m").save(out, kind="svg", scale=6, border=2)
    return web.Response(body=out.getvalue(), content_type="image/svg+xml",
                        headers={"Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"})


async def pay_demo(request: web.Request) -> web.Response:
    """The demo page's Pay button (session + CSRF), through the crediting path of real payments."""
    session = await sessions.resolve(request)
    order = await request.app[PEERS].billing.PayDemoOrder(
        billing_pb2.GetOrderRequest(order_id=order_id_param(request), user_id=session.account.user_id),
        timeout=RPC_TIMEOUT_S)
    return json_response(order_json(order))


# --- the providers' notifications (hostile until billing has verified them) ----------------


def _form(raw: bytes) -> dict[str, str] | None:
    """Alipay's form fields; None for anything that is not a well-formed form of unique names."""
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw),
                          max_num_fields=200)
    except (UnicodeDecodeError, ValueError):
        return None
    params = dict(pairs)
    if len(params) != len(pairs) or any("\x00" in k or "\x00" in v for k, v in pairs):
        return None  # a repeated name, or a NUL no text column (nor Alipay) has
    return params


@inputs.body_limit(NOTIFY_BODY_BYTES)
async def alipay_notify(request: web.Request) -> web.Response:
    """Answers `success` only once the credit is committed (Alipay retries anything else)."""
    params = _form(await inputs.read(request, json_budget=False))
    verdict = "refused: not a form"
    accepted = False
    if params is not None:
        try:
            reply = await request.app[PEERS].billing.AlipayNotify(
                billing_pb2.AlipayNotification(params=params, source=client_ip(request)[:100]), timeout=RPC_TIMEOUT_S)
            accepted, verdict = reply.accepted, f"{reply.verdict}: {reply.reason}"
        except grpc.aio.AioRpcError as exc:  # billing or its database away: Alipay will try again
            verdict = f"not handled: {exc.code().name}"
    log.info("alipay notification answered %s (%s)", "success" if accepted else "failure", verdict)
    return web.Response(text="success" if accepted else "failure", content_type="text/plain")


async def alipay_return(request: web.Request) -> web.StreamResponse:
    """Where Alipay's page sends the buyer back: the console shows the order's live status."""
    raise web.HTTPFound("/console#topup")


@inputs.body_limit(WEBHOOK_BODY_BYTES)
async def stripe_webhook(request: web.Request) -> web.Response:
    raw = await inputs.read(request)
    signature = request.headers.get("Stripe-Signature", "")[:2000]
    reply = await request.app[PEERS].billing.StripeWebhook(
        billing_pb2.StripeEvent(payload=raw, signature=signature, source=client_ip(request)[:100]),
        timeout=RPC_TIMEOUT_S)
    if not reply.accepted:
        raise invalid(f"Webhook refused: {reply.reason}")
    return json_response({"received": True, "verdict": reply.verdict})


# --- invites -----------------------------------------------------------------------------


async def invite(request: web.Request) -> web.Response:
    session = await sessions.resolve(request)
    info = await request.app[PEERS].billing.GetInvite(billing_pb2.GetUserRequest(user_id=session.account.user_id),
                                                     timeout=RPC_TIMEOUT_S)
    return json_response({"code": info.code, "url": f"/console?invite={info.code}", "invited": info.invited,
                          "earned": from_micro(info.earned), "reward_pct": info.reward_pct})
