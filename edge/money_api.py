"""Money in: the public price list, a user's payment orders, and the payment providers'
notifications (forwarded to billing, which verifies them and credits exactly once)."""
from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from chatkore.v1 import billing_pb2, inference_pb2
from edge.credits import from_micro
from edge.openai_api import json_response
from edge.state import PEERS

RPC_TIMEOUT_S = 15


def _price_row(p: billing_pb2.Price) -> dict[str, Any]:
    row: dict[str, Any] = {"model": p.model, "prompt": from_micro(p.prompt), "completion": from_micro(p.completion)}
    cached = getattr(p, "cached_prompt", None)  # once the price list carries cached-prompt prices
    if cached is not None:
        row["cached_prompt"] = from_micro(cached)
    row["min_charge"] = from_micro(p.min_charge)
    if p.max_output_tokens:
        row["max_output"] = p.max_output_tokens
    row["unit"] = "credits per 1K tokens"
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
    })
