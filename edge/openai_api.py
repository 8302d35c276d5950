"""The OpenAI-compatible API under /v1: parse, validate, one call to a service, answer."""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import grpc
from aiohttp import web

from chatkore.v1 import auth_pb2, billing_pb2, common_pb2, inference_pb2
from edge import inputs, retry, sse, validate
from edge.authn import bearer, client_ip
from edge.errors import OpenAIError, invalid
from edge.limits import Limits
from edge.state import CONFIG, GUARD, KEYS, LIMITS, PEERS
from services.common import jsoncodec
from services.common.errors import reason_of

_JSON = "application/json"


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=jsoncodec.dumps(obj), content_type=_JSON)


async def authenticate(request: web.Request, token: str | None = None) -> auth_pb2.KeyInfo:
    """The caller's key (the bearer token unless given); a wrong one counts against its address (edge.guard)."""
    address = client_ip(request)
    guard = request.app[GUARD]
    guard.check(address)
    try:
        return await request.app[KEYS].resolve(token or bearer(request), address)
    except grpc.aio.AioRpcError as exc:
        if reason_of(exc) == "INVALID_API_KEY":
            await guard.failed(address)
        raise


async def _relay(request: web.Request, endpoint: int,
                 check: Callable[[dict[str, Any], Limits], validate.Relayable],
                 key: auth_pb2.KeyInfo | None = None, *, forward_headers: dict[str, str] | None = None,
                 framing: sse.Framing | None = None) -> web.StreamResponse:
    key = key or await authenticate(request)
    cfg = request.app[CONFIG]
    raw, body = await inputs.relay_body(request)
    fields = check(body, cfg.limits)
    limits = request.app[LIMITS]
    admission = await limits.admit(key, body, fields)
    request["model"] = fields.model
    message = inference_pb2.RelayRequest(
        caller=common_pb2.Caller(user_id=key.user_id, key_id=key.key_id, models=key.models,
                                 credit_limit=key.credit_limit, request_id=request["request_id"]),
        endpoint=endpoint, model=fields.model, body=raw, stream=fields.stream,
        include_usage=fields.include_usage, max_tokens=fields.max_tokens, n=fields.n,
        forward_headers=forward_headers, try_number=1,
    )
    inference = request.app[PEERS].inference
    request["relayed"] = body.get("background") is not True  # settled after the reply (edge/settled.py)
    headers = admission.headers if admission else None
    used: list[int] = []  # the call's real tokens, once known
    try:
        if fields.stream:
            if framing is None and endpoint == inference_pb2.RESPONSES:
                framing = sse.ResponsesFraming()
            return await sse.relay(request, lambda n: inference.RelayStream(retry.numbered(message, n),
                                                                            timeout=cfg.stream_deadline_s),
                                   headers=headers, on_outcome=lambda o: used.append(o.usage.total_tokens),
                                   framing=framing)
        call = inference.Relay(message, timeout=cfg.relay_deadline_s)
        reply = await call
        used.append(reply.usage.total_tokens)
        return web.Response(body=reply.body, content_type=_JSON,
                            headers={**(headers or {}), **await sse.budget_headers(call)})
    except (grpc.aio.AioRpcError, OpenAIError):
        used.append(0)  # refused or failed before any output: it used nothing
        raise
    finally:
        limits.settle(admission, used[0] if used else None)


async def relay_as(request: web.Request, key: auth_pb2.KeyInfo, endpoint: int) -> web.StreamResponse:
    """A call on behalf of a key resolved some other way (the chat page's session): same path, same billing."""
    checks = {inference_pb2.CHAT_COMPLETIONS: validate.chat, inference_pb2.COMPLETIONS: validate.completions,
              inference_pb2.EMBEDDINGS: validate.embeddings}
    return await _relay(request, endpoint, checks[endpoint], key)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _relay(request, inference_pb2.CHAT_COMPLETIONS, validate.chat)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _relay(request, inference_pb2.COMPLETIONS, validate.completions)


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await _relay(request, inference_pb2.EMBEDDINGS, validate.embeddings)


async def responses(request: web.Request) -> web.StreamResponse:
    return await _relay(request, inference_pb2.RESPONSES, validate.responses)


def _response_id(request: web.Request) -> str:
    response_id = request.match_info["id"]
    if len(response_id) > 200:
        raise OpenAIError(404, "Response not found.", param="response_id")
    return response_id


async def get_response(request: web.Request) -> web.Response:
    key = await authenticate(request)
    reply = await request.app[PEERS].inference.GetResponse(
        inference_pb2.StoredResponseRequest(user_id=key.user_id, id=_response_id(request)), timeout=10)
    return web.Response(body=reply.body, content_type=_JSON)


async def delete_response(request: web.Request) -> web.Response:
    key = await authenticate(request)
    reply = await request.app[PEERS].inference.DeleteResponse(
        inference_pb2.StoredResponseRequest(user_id=key.user_id, id=_response_id(request)), timeout=10)
    return web.Response(body=reply.body, content_type=_JSON)


async def cancel_response(request: web.Request) -> web.Response:
    key = await authenticate(request)
    reply = await request.app[PEERS].inference.CancelResponse(
        inference_pb2.StoredResponseRequest(user_id=key.user_id, id=_response_id(request)), timeout=10)
    return web.Response(body=reply.body, content_type=_JSON)


async def list_input_items(request: web.Request) -> web.Response:
    key = await authenticate(request)
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise invalid(f"Invalid value: '{order[:40]}'. Supported values are: 'asc' and 'desc'.", "order",
                      "invalid_value")
    try:
        limit = int(request.query.get("limit", "20"))
    except ValueError:
        raise invalid("Invalid 'limit': expected an integer.", "limit", "invalid_type") from None
    if not 1 <= limit <= 100:
        raise invalid("Invalid 'limit': expected an integer between 1 and 100.", "limit")
    reply = await request.app[PEERS].inference.ListInputItems(
        inference_pb2.ListInputItemsRequest(user_id=key.user_id, id=_response_id(request),
                                            after=request.query.get("after", "")[:200], limit=limit,
                                            ascending=order == "asc"), timeout=10)
    return web.Response(body=reply.body, content_type=_JSON)


def _model_object(m: inference_pb2.Model) -> dict[str, Any]:
    return {"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by}


async def _models(request: web.Request, key: auth_pb2.KeyInfo | None = None) -> list[inference_pb2.Model]:
    key = key or await authenticate(request)
    reply = await request.app[PEERS].inference.ListModels(inference_pb2.ListModelsRequest(allowed=key.models),
                                                          timeout=10)
    return list(reply.models)


async def list_models(request: web.Request) -> web.Response:
    return json_response({"object": "list", "data": [_model_object(m) for m in await _models(request)]})


async def get_model(request: web.Request) -> web.Response:
    wanted = request.match_info["model"]
    for m in await _models(request):
        if m.id == wanted:
            return json_response(_model_object(m))
    raise OpenAIError(404, f"The model '{wanted}' does not exist", param="model", code="model_not_found")


# --- chatgpt-web's balance display: OpenAI's legacy billing endpoints ---------------------
# It shows hard_limit_usd - total_usage/100 for the current month, so the limit is the
# balance plus this month's spend, and credits read as dollars.


def _month_start(now: dt.datetime) -> dt.datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


async def _spend(request: web.Request, since: dt.datetime, until: dt.datetime | None) -> billing_pb2.Spend:
    key = await authenticate(request)
    return await request.app[PEERS].billing.GetSpend(
        billing_pb2.GetSpendRequest(user_id=key.user_id, since=int(since.timestamp()),
                                    until=int(until.timestamp()) if until else 0),
        timeout=10,
    )


async def billing_subscription(request: web.Request) -> web.Response:
    now = dt.datetime.now(dt.UTC)
    spend = await _spend(request, _month_start(now), None)
    limit = round((spend.balance + spend.spent) / 1_000_000, 6)
    return json_response({
        "object": "billing_subscription",
        "has_payment_method": True,
        "canceled": False,
        "delinquent": None,
        "access_until": 0,
        "soft_limit_usd": limit,
        "hard_limit_usd": limit,
        "system_hard_limit_usd": limit,
        "plan": {"title": "chatkore credits", "id": "credits"},
    })


def _date(request: web.Request, name: str, default: dt.datetime) -> dt.datetime:
    raw = request.query.get(name)
    if not raw:
        return default
    try:
        return dt.datetime.strptime(raw, "%Y-%m-%d").replace(tzinfo=dt.UTC)
    except ValueError:
        raise invalid(f"Invalid '{name}': expected a date as YYYY-MM-DD.", name) from None


async def billing_usage(request: web.Request) -> web.Response:
    """Spend from start_date to end_date, both days included (chatgpt-web asks for the whole month
    by its last day), in hundredths, with each day's cost."""
    now = dt.datetime.now(dt.UTC)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    start = _date(request, "start_date", _month_start(now))
    end = _date(request, "end_date", today) + dt.timedelta(days=1)
    if end <= start:
        raise invalid("Invalid 'end_date': it must not be before 'start_date'.", "end_date")
    if (end - start).days > 366:
        raise invalid("The date range may span at most 366 days.", "start_date")
    key = await authenticate(request)
    billing = request.app[PEERS].billing
    spend = await billing.GetSpend(
        billing_pb2.GetSpendRequest(user_id=key.user_id, since=int(start.timestamp()), until=int(end.timestamp())),
        timeout=10)
    daily: list[dict[str, Any]] = []
    if start <= today:
        days = await billing.DailySpend(
            billing_pb2.DailySpendRequest(user_id=key.user_id, days=min(366, (today - start).days + 1)), timeout=10)
        for d in days.days:
            day = dt.datetime.strptime(d.day, "%Y-%m-%d").replace(tzinfo=dt.UTC)
            if start <= day < end:
                daily.append({"timestamp": day.timestamp(),
                              "line_items": [{"name": "Chat models", "cost": round(d.credits / 10_000, 4)}]})
    return json_response({"object": "list", "daily_costs": daily, "total_usage": round(spend.spent / 10_000, 4)})
