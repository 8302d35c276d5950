"""The admin API under /admin/v1: users, keys, channels, prices, usage, codes, the ledger."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format

from chatkore.v1 import auth_pb2, billing_pb2, inference_pb2
from edge import audit, sessions, usage_api
from edge.authn import bearer, client_ip
from edge.credits import from_micro, to_micro
from edge.errors import invalid
from edge.inputs import get_int, get_str, get_str_list, get_timestamp, json_body, path_id, query_int
from edge.openai_api import json_response
from edge.state import COUNTERS, GUARD, PEERS
from services.common.errors import reason_of

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RPC_TIMEOUT_S = 15
INT32_MAX = 2**31 - 1  # the largest value an int32 field of a request message takes


def admin(handler: Handler) -> Handler:
    """Only the admin key passes, or the console session of an operator (with its CSRF token)."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        operator = None
        if "Authorization" not in request.headers and sessions.has_session(request):
            operator = await sessions.operator(request)
        else:
            address = client_ip(request)
            guard = request.app[GUARD]
            guard.check(address)
            try:
                await request.app[PEERS].auth.AuthorizeAdmin(
                    auth_pb2.AuthorizeAdminRequest(bearer=bearer(request)), timeout=5)
            except grpc.aio.AioRpcError as exc:
                if reason_of(exc) == "PERMISSION_DENIED":
                    await guard.failed(address)
                raise
        # Past the guard, every change is recorded with the status it was answered with.
        actor = audit.actor_of(request, operator)
        try:
            response = await handler(request)
        except (Exception, asyncio.CancelledError) as exc:
            await audit.record(request, actor, audit.status_of(exc))
            raise
        await audit.record(request, actor, response.status)
        return response

    return guarded


# --- users and keys ----------------------------------------------------------------


def user_info(u: billing_pb2.User) -> dict[str, Any]:
    return {"id": u.id, "name": u.name, "balance": from_micro(u.balance), "held": from_micro(u.held),
            "owed": from_micro(u.owed), "created": u.created}


@admin
async def create_user(request: web.Request) -> web.Response:
    body = await json_body(request)
    if not isinstance(body.get("name"), str):
        raise invalid("Missing required parameter: 'name'.", "name", "missing_required_parameter")
    message = billing_pb2.CreateUserRequest(name=body["name"])
    if body.get("credits") is not None:
        message.credits = to_micro(body["credits"], "credits")
    user = await request.app[PEERS].billing.CreateUser(message, timeout=RPC_TIMEOUT_S)
    return json_response(user_info(user), status=201)


@admin
async def get_user(request: web.Request) -> web.Response:
    user = await request.app[PEERS].billing.GetUser(billing_pb2.GetUserRequest(user_id=path_id(request)),
                                                    timeout=RPC_TIMEOUT_S)
    return json_response(user_info(user))


@admin
async def top_up(request: web.Request) -> web.Response:
    body = await json_body(request)
    if "credits" not in body:
        raise invalid("Missing required parameter: 'credits'.", "credits", "missing_required_parameter")
    user = await request.app[PEERS].billing.TopUp(
        billing_pb2.TopUpRequest(user_id=path_id(request), credits=to_micro(body["credits"], "credits"),
                                 reference=get_str(body, "reference")),
        timeout=RPC_TIMEOUT_S,
    )
    return json_response(user_info(user))


def key_info(k: auth_pb2.KeyInfo) -> dict[str, Any]:
    return {
        "id": k.key_id, "user_id": k.user_id, "name": k.name, "hint": k.hint, "models": list(k.models),
        "credit_limit": from_micro(k.credit_limit) if k.credit_limit else None,
        "expires_at": k.expires_at or None, "rpm": k.rpm or None, "tpm": k.tpm or None, "ips": list(k.ips),
        "created": k.created, "revoked": k.revoked,
    }


@admin
async def create_key(request: web.Request) -> web.Response:
    body = await json_body(request)
    limit = body.get("credit_limit")
    created = await request.app[PEERS].auth.CreateKey(
        auth_pb2.CreateKeyRequest(
            user_id=path_id(request), name=get_str(body, "name"), models=get_str_list(body, "models"),
            credit_limit=to_micro(limit, "credit_limit") if limit is not None else 0,
            expires_at=get_timestamp(body.get("expires_at"), "expires_at"),
            rpm=get_int(body, "rpm"), tpm=get_int(body, "tpm"), ips=get_str_list(body, "ips"),
        ),
        timeout=RPC_TIMEOUT_S,
    )
    return json_response({**key_info(created.info), "key": created.key}, status=201)


@admin
async def list_keys(request: web.Request) -> web.Response:
    keys = await request.app[PEERS].auth.ListKeys(auth_pb2.ListKeysRequest(user_id=path_id(request)),
                                                  timeout=RPC_TIMEOUT_S)
    return json_response({"data": [key_info(k) for k in keys.keys]})


@admin
async def revoke_key(request: web.Request) -> web.Response:
    await request.app[PEERS].auth.RevokeKey(auth_pb2.RevokeKeyRequest(key_id=path_id(request)),
                                            timeout=RPC_TIMEOUT_S)
    return web.Response(status=204)


# --- channels --------------------------------------------------------------------------

_CHANNEL_FIELDS = ("name", "type", "base_url", "api_key", "models", "model_map", "priority", "weight", "enabled",
                   "settings")


def _channel_message(body: dict[str, Any]) -> tuple[inference_pb2.Channel, list[str]]:
    channel = inference_pb2.Channel()
    fields = []
    for name in _CHANNEL_FIELDS:
        if name not in body or body[name] is None:
            continue
        fields.append(name)
        value = body[name]
        if name in ("name", "type", "base_url", "api_key"):
            setattr(channel, name, get_str(body, name, limit=8192))
        elif name == "models":
            channel.models.extend(get_str_list(body, name))
        elif name == "model_map":
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise invalid("'model_map' must map public model names to upstream names", name)
            channel.model_map.update(value)
        elif name in ("priority", "weight"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise invalid(f"'{name}' must be an integer", name)
            if abs(value) > 10**6:
                raise invalid(f"'{name}' is out of range", name)
            setattr(channel, name, value)
        elif name == "enabled":
            if not isinstance(value, bool):
                raise invalid("'enabled' must be true or false", name)
            channel.enabled = value
        elif name == "settings":
            if not isinstance(value, dict):
                raise invalid("'settings' must be an object", name)
            try:
                channel.settings.update(json.loads(json.dumps(value, default=float, allow_nan=False)))
            except ValueError:
                raise invalid("'settings' must hold finite numbers", name) from None
    return channel, fields


def _channel(c: inference_pb2.Channel) -> dict[str, Any]:
    return {
        "id": c.id, "name": c.name, "type": c.type, "base_url": c.base_url, "api_key": c.api_key,
        "models": list(c.models), "model_map": dict(c.model_map), "priority": c.priority, "weight": c.weight,
        "enabled": c.enabled, "created": c.created, "health": c.health,
        "settings": json_format.MessageToDict(c.settings),
    }


@admin
async def create_channel(request: web.Request) -> web.Response:
    body = await json_body(request)
    for required in ("name", "base_url", "models"):
        if required not in body:
            raise invalid(f"Missing required parameter: '{required}'.", required, "missing_required_parameter")
    message, fields = _channel_message(body)
    if "enabled" not in fields:
        message.enabled = True
    if "weight" not in fields:
        message.weight = 1
    channel = await request.app[PEERS].inference.CreateChannel(message, timeout=RPC_TIMEOUT_S)
    return json_response(_channel(channel), status=201)


@admin
async def list_channels(request: web.Request) -> web.Response:
    reply = await request.app[PEERS].inference.ListChannels(inference_pb2.ListChannelsRequest(),
                                                            timeout=RPC_TIMEOUT_S)
    return json_response({"data": [_channel(c) for c in reply.channels]})


@admin
async def update_channel(request: web.Request) -> web.Response:
    message, fields = _channel_message(await json_body(request))
    channel = await request.app[PEERS].inference.UpdateChannel(
        inference_pb2.UpdateChannelRequest(id=path_id(request), fields=fields, channel=message),
        timeout=RPC_TIMEOUT_S,
    )
    return json_response(_channel(channel))


@admin
async def delete_channel(request: web.Request) -> web.Response:
    await request.app[PEERS].inference.DeleteChannel(inference_pb2.DeleteChannelRequest(id=path_id(request)),
                                                     timeout=RPC_TIMEOUT_S)
    return web.Response(status=204)


@admin
async def set_alias(request: web.Request) -> web.Response:
    body = await json_body(request)
    target = body.get("target")
    if not isinstance(target, str) or not target:
        raise invalid("Missing required parameter: 'target' (the model this name stands for).", "target",
                      "missing_required_parameter")
    alias = await request.app[PEERS].inference.SetAlias(
        inference_pb2.ModelAlias(name=request.match_info["name"], target=target), timeout=RPC_TIMEOUT_S)
    return json_response({"name": alias.name, "target": alias.target})


@admin
async def list_aliases(request: web.Request) -> web.Response:
    reply = await request.app[PEERS].inference.ListAliases(inference_pb2.ListAliasesRequest(), timeout=RPC_TIMEOUT_S)
    return json_response({"data": [{"name": a.name, "target": a.target} for a in reply.aliases]})


@admin
async def delete_alias(request: web.Request) -> web.Response:
    await request.app[PEERS].inference.DeleteAlias(inference_pb2.DeleteAliasRequest(name=request.match_info["name"]),
                                                   timeout=RPC_TIMEOUT_S)
    return web.Response(status=204)


@admin
async def test_channel(request: web.Request) -> web.Response:
    body = await json_body(request)
    result = await request.app[PEERS].inference.TestChannel(
        inference_pb2.TestChannelRequest(id=path_id(request), model=get_str(body, "model")), timeout=45)
    return json_response({"ok": result.ok, "model": result.model, "latency_ms": result.latency_ms,
                          "status": result.status or None, "error": result.error or None,
                          "reply": result.reply, "health": result.health})


# --- prices, usage, codes, ledger ---------------------------------------------------------


def _price(p: billing_pb2.Price) -> dict[str, Any]:
    return {"model": p.model, "prompt": from_micro(p.prompt), "completion": from_micro(p.completion),
            "min_charge": from_micro(p.min_charge), "cached_prompt": from_micro(p.cached_prompt),
            "cache_write": from_micro(p.cache_write), "context": p.context_window, "max_output": p.max_output_tokens,
            "tiers": dict(p.tiers.values), "features": dict(p.features.values),
            "units": {name: from_micro(value) for name, value in p.units.values.items()},
            # credits per 1,000 audio input / output tokens; null: audio is refused for the model
            "audio_prompt": from_micro(p.audio_prompt) if p.HasField("audio_prompt") else None,
            "audio_completion": from_micro(p.audio_completion) if p.HasField("audio_completion") else None,
            # the names of the first API version, kept for the clients that read them
            "context_window": p.context_window, "max_output_tokens": p.max_output_tokens}


def _multipliers(body: dict[str, Any], name: str) -> billing_pb2.Multipliers:
    value = body[name]
    if not isinstance(value, dict) or len(value) > 32 or not all(
            isinstance(k, str) and isinstance(v, (int, float, Decimal)) and not isinstance(v, bool)
            for k, v in value.items()):
        raise invalid(f"'{name}' must be an object of names to multipliers, e.g. {{\"priority\": 2.0}}", name)
    return billing_pb2.Multipliers(values={k: float(v) for k, v in value.items()})


def _unit_prices(value: Any) -> billing_pb2.UnitPrices:
    """`units`: credits per image, per 1K characters, per minute, by unit (billing checks the names)."""
    if not isinstance(value, dict) or len(value) > 64 or not all(isinstance(k, str) for k in value):
        raise invalid("'units' must be an object of units to credits, e.g. {\"image/1024x1024/hd\": 80}", "units")
    return billing_pb2.UnitPrices(values={k: to_micro(v, f"units.{k[:64]}") for k, v in value.items()})


@admin
async def set_price(request: web.Request) -> web.Response:
    """PUT a model's price. Given fields change; absent ones keep their value (a new model's
    default). `cached_prompt`/`cache_write` null: follow the prompt price. `audio_prompt` and
    `audio_completion` (set together) price audio tokens; null removes them (audio refused)."""
    body = await json_body(request)
    for required in ("prompt", "completion"):
        if required not in body:
            raise invalid(f"Missing required parameter: '{required}'.", required, "missing_required_parameter")
    message = billing_pb2.SetPriceRequest(model=request.match_info["model"],
                                          prompt=to_micro(body["prompt"], "prompt"),
                                          completion=to_micro(body["completion"], "completion"))
    if body.get("min_charge") is not None:
        message.min_charge = to_micro(body["min_charge"], "min_charge")
    for name in ("cached_prompt", "cache_write", "audio_prompt", "audio_completion"):
        if name in body:
            value = -1 if body[name] is None else to_micro(body[name], name)
            if body[name] is not None and value < 0:
                raise invalid(f"'{name}' must be a non-negative number of credits, or null", name)
            setattr(message, name, value)
    for name, field in (("context", "context_window"), ("max_output", "max_output_tokens")):
        if body.get(name) is not None:
            setattr(message, field, get_int(body, name))
    for name in ("tiers", "features"):
        if body.get(name) is not None:
            getattr(message, name).CopyFrom(_multipliers(body, name))
    if body.get("units") is not None:
        message.units.CopyFrom(_unit_prices(body["units"]))
    price = await request.app[PEERS].billing.SetPrice(message, timeout=RPC_TIMEOUT_S)
    return json_response(_price(price))


@admin
async def list_prices(request: web.Request) -> web.Response:
    reply = await request.app[PEERS].billing.ListPrices(billing_pb2.ListPricesRequest(), timeout=RPC_TIMEOUT_S)
    return json_response({"data": [_price(p) for p in reply.prices]})


@admin
async def usage(request: web.Request) -> web.StreamResponse:
    """Every user's calls (or `user_id`'s), with the filters and the CSV of edge/usage_api.py."""
    where = usage_api.usage_filter(request, query_int(request, "user_id"))
    return await usage_api.respond(request, where, usage_api.admin_row, 100)


@admin
async def create_redeem_codes(request: web.Request) -> web.Response:
    body = await json_body(request)
    if "credits" not in body:
        raise invalid("Missing required parameter: 'credits'.", "credits", "missing_required_parameter")
    reply = await request.app[PEERS].billing.CreateRedeemCodes(
        billing_pb2.CreateRedeemCodesRequest(credits=to_micro(body["credits"], "credits"),
                                             count=get_int(body, "count", default=1, low=1)),
        timeout=RPC_TIMEOUT_S,
    )
    return json_response({"codes": list(reply.codes)}, status=201)


@admin
async def runtime(request: web.Request) -> web.Response:
    """Live counts for leak checks: numbers only, nothing about any caller."""
    inference = await request.app[PEERS].inference.GetStats(inference_pb2.GetStatsRequest(), timeout=RPC_TIMEOUT_S)
    return json_response({
        "edge": {"tasks": len(asyncio.all_tasks()),
                 "requests_in_flight": request.app[COUNTERS].requests_in_flight - 1},  # less this one
        "inference": json_format.MessageToDict(inference, always_print_fields_with_no_presence=True,
                                               preserving_proto_field_name=True),
    })


@admin
async def verify_ledger(request: web.Request) -> web.Response:
    report = await request.app[PEERS].billing.VerifyLedger(billing_pb2.VerifyLedgerRequest(), timeout=60)
    return json_response({"ok": report.ok, "entries": report.entries, "ledger_sum": report.ledger_sum,
                          "open_holds": report.open_holds, "users": report.users,
                          "problems": list(report.problems)})


@admin
async def audit_log(request: web.Request) -> web.Response:
    """The audit log, newest first: `limit` (default 100, at most 500), `before` an entry id to page back."""
    reply = await request.app[PEERS].auth.ListAudit(
        auth_pb2.ListAuditRequest(limit=query_int(request, "limit", INT32_MAX),
                                  before_id=query_int(request, "before")), timeout=RPC_TIMEOUT_S)
    return json_response({"data": [
        {"id": e.id, "created": e.at, "actor": e.actor, "action": e.action, "target": e.target, "status": e.status,
         "address": e.address, "details": json.loads(e.details_json or "{}")} for e in reply.entries]})
