"""Admin API calls the operator pages need beyond DESIGN §5: find and disable users, roles,
channel tests and the per-model dashboard. Same guard as the rest of /admin/v1."""
from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from chatkore.v1 import auth_pb2, billing_pb2
from edge import money_api, sessions
from edge.admin_api import INT32_MAX, RPC_TIMEOUT_S, admin, user_info
from edge.credits import from_micro
from edge.errors import invalid
from edge.inputs import get_str, json_body, path_id, query_int
from edge.openai_api import json_response
from edge.state import PEERS


def _account_of(accounts: auth_pb2.AccountList) -> dict[int, auth_pb2.Account]:
    return {a.user_id: a for a in accounts.accounts}


def _user_row(u: billing_pb2.User, account: auth_pb2.Account | None) -> dict[str, Any]:
    return {**user_info(u), "disabled": u.disabled, "email": account.email if account else None,
            "role": account.role if account else None}


@admin
async def search_users(request: web.Request) -> web.Response:
    peers = request.app[PEERS]
    reply = await peers.billing.SearchUsers(
        billing_pb2.SearchUsersRequest(query=request.query.get("q", "")[:200],
                                       limit=query_int(request, "limit", INT32_MAX)),
        timeout=RPC_TIMEOUT_S)
    accounts = _account_of(await peers.auth.ListAccounts(
        auth_pb2.ListAccountsRequest(user_ids=[u.id for u in reply.users]), timeout=RPC_TIMEOUT_S))
    return json_response({"data": [_user_row(u, accounts.get(u.id)) for u in reply.users]})


@admin
async def update_user(request: web.Request) -> web.Response:
    """PATCH a user: `disabled` (a disabled user's keys, sessions and holds all stop)."""
    body = await json_body(request)
    disabled = body.get("disabled")
    if not isinstance(disabled, bool):
        raise invalid("'disabled' must be true or false", "disabled")
    user = await request.app[PEERS].billing.SetUserDisabled(
        billing_pb2.SetUserDisabledRequest(user_id=path_id(request), disabled=disabled), timeout=RPC_TIMEOUT_S)
    return json_response(_user_row(user, None))


@admin
async def set_role(request: web.Request) -> web.Response:
    """PUT a console account's role; how the first operator is made, with the admin key."""
    role = get_str(await json_body(request), "role", limit=20)
    account = await request.app[PEERS].auth.SetRole(auth_pb2.SetRoleRequest(user_id=path_id(request), role=role),
                                                    timeout=RPC_TIMEOUT_S)
    return json_response({"user_id": account.user_id, "email": account.email, "role": account.role})


@admin
async def stats(request: web.Request) -> web.Response:
    """Requests, tokens, credits and errors per model per time bucket (default: 24 hours by the hour)."""
    hours = query_int(request, "hours") or 24
    bucket = query_int(request, "bucket", INT32_MAX) or 3600
    if hours > 24 * 366:
        raise invalid("'hours' must be at most a year", "hours")
    reply = await request.app[PEERS].billing.ModelStats(
        billing_pb2.ModelStatsRequest(since=int(time.time()) - hours * 3600, bucket_s=bucket), timeout=RPC_TIMEOUT_S)
    return json_response({"bucket": bucket, "data": [
        {"bucket": s.bucket, "model": s.model, "requests": s.requests, "prompt_tokens": s.prompt_tokens,
         "completion_tokens": s.completion_tokens, "credits": from_micro(s.credits), "errors": s.errors,
         "unbilled_tokens": s.unbilled_tokens, "unpaid_credits": from_micro(s.unpaid_credits)}
        for s in reply.stats
    ]})


# --- payment orders (the Orders page) --------------------------------------------------------

ORDER_STATUSES = ("", "pending", "expired", "paid", "refunded", "closed")


def _admin_order(o: billing_pb2.Order) -> dict[str, Any]:
    return {**money_api.order_json(o), "user_id": o.user_id, "review": o.review, "review_note": o.review_note}


@admin
async def list_orders(request: web.Request) -> web.Response:
    """Every order, newest first: `status`, `user_id`, `provider`, `review` (true/false) filter."""
    status = request.query.get("status", "")
    if status not in ORDER_STATUSES:
        raise invalid(f"'status' must be one of {', '.join(s for s in ORDER_STATUSES if s)}", "status")
    provider = request.query.get("provider", "")
    if provider not in ("", "alipay", "stripe", "demo"):
        raise invalid("'provider' must be alipay, stripe or demo", "provider")
    message = billing_pb2.ListOrdersRequest(user_id=query_int(request, "user_id", 2**62), status=status,
                                            provider=provider, limit=query_int(request, "limit", 500))
    review = request.query.get("review", "")
    if review:
        if review not in ("true", "false"):
            raise invalid("'review' must be true or false", "review")
        message.review = review == "true"
    reply = await request.app[PEERS].billing.ListOrders(message, timeout=RPC_TIMEOUT_S)
    return json_response({"data": [_admin_order(o) for o in reply.orders]})


@admin
async def review_order(request: web.Request) -> web.Response:
    """PATCH an order: `review` (true marks it for review, false clears it) and an optional `note`."""
    body = await json_body(request)
    review = body.get("review")
    if not isinstance(review, bool):
        raise invalid("'review' must be true or false", "review")
    order = await request.app[PEERS].billing.SetOrderReview(
        billing_pb2.SetOrderReviewRequest(order_id=money_api.order_id_param(request), review=review,
                                          note=get_str(body, "note", limit=500)),
        timeout=RPC_TIMEOUT_S)
    return json_response(_admin_order(order))


def _order_filter(request: web.Request) -> str:
    raw = request.query.get("order_id", "")
    if raw and not (len(raw) <= 100 and raw.isascii() and raw.replace("_", "").isalnum()):
        raise invalid("'order_id' must be an order id (letters, digits and _)", "order_id")
    return raw


@admin
async def list_notifications(request: web.Request) -> web.Response:
    """Every payment notification kept, newest first (`order_id` narrows to one order's)."""
    reply = await request.app[PEERS].billing.ListNotifications(
        billing_pb2.ListNotificationsRequest(order_id=_order_filter(request),
                                             limit=query_int(request, "limit", 500)),
        timeout=RPC_TIMEOUT_S)
    return json_response({"data": [
        {"id": n.id, "provider": n.provider, "order_id": n.order_id, "event": n.event, "verdict": n.verdict,
         "reason": n.reason, "received": n.received}
        for n in reply.notifications
    ]})


# --- the notice on every page ------------------------------------------------------------------


@admin
async def set_notice(request: web.Request) -> web.Response:
    """PUT {"announcement", "contact"}: plain text (control characters dropped, lengths bounded)."""
    body = await json_body(request)
    operator = await sessions.operator(request) if sessions.has_session(request) and \
        "Authorization" not in request.headers else None
    who = f"operator {operator.account.email}" if operator else "admin key"
    saved = await request.app[PEERS].auth.SetNotice(
        auth_pb2.Notice(announcement=get_str(body, "announcement", limit=4000),
                        contact=get_str(body, "contact", limit=600), updated_by=who),
        timeout=RPC_TIMEOUT_S)
    return json_response({"announcement": saved.announcement, "contact": saved.contact,
                          "updated_at": saved.updated_at})
