"""The signed-in user's API under /api/, for the console and the chat page.

Every handler acts for the session's own user, never for an id the caller names, so no
session can reach another user's keys, usage or credits. Changes need the CSRF token.
"""
from __future__ import annotations

from typing import Any

import grpc
from aiohttp import web

from chatkore.v1 import auth_pb2, billing_pb2, inference_pb2
from edge import i18n, openai_api, sessions, usage_api
from edge.admin_api import key_info
from edge.authn import client_ip
from edge.captcha import CAPTCHA
from edge.credits import from_micro, to_micro
from edge.errors import invalid
from edge.inputs import get_int, get_str, get_str_list, get_timestamp, json_body, path_id
from edge.openai_api import json_response
from edge.state import GUARD, PEERS, SIGNUPS
from services.common.errors import reason_of

RPC_TIMEOUT_S = 15


def _account(a: auth_pb2.Account) -> dict[str, Any]:
    return {"user_id": a.user_id, "email": a.email, "role": a.role, "created": a.created,
            "email_verified": a.email_verified, "verification_pending": a.verification_pending}


def _credentials(body: dict[str, Any]) -> tuple[str, str]:
    email, password = body.get("email"), body.get("password")
    if not isinstance(email, str) or not email.strip():
        raise invalid("Enter your email address.", "email", "missing_required_parameter")
    if not isinstance(password, str) or not password:
        raise invalid("Enter your password.", "password", "missing_required_parameter")
    return email, password


async def _signed_in(request: web.Request, email: str, password: str, status: int,
                     **extra: Any) -> web.Response:
    address = client_ip(request)
    guard = request.app[GUARD]
    guard.check(address)  # password guessing from one address counts with key guessing
    try:
        session = await request.app[PEERS].auth.Login(
            auth_pb2.LoginRequest(email=email, password=password, client_ip=address), timeout=RPC_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        if reason_of(exc) == "INVALID_API_KEY":
            await guard.failed(address)
        raise
    response = json_response({"account": _account(session.account), "csrf_token": session.csrf_token, **extra},
                             status=status)
    sessions.set_cookie(request, response, session)
    return response


async def register(request: web.Request) -> web.Response:
    sessions.check_origin(request)
    body = await json_body(request)
    email, password = _credentials(body)
    invite = get_str(body, "invite", limit=64).strip()  # another user's invite code (an unknown one is ignored)
    checker = request.app.get(CAPTCHA)
    if checker is not None:  # before anything is made or counted: a failed captcha leaves nothing behind
        await checker.check(body.get("captcha"), client_ip(request))
    await request.app[SIGNUPS].admit(client_ip(request))
    account = await request.app[PEERS].auth.Register(
        auth_pb2.RegisterRequest(email=email, password=password, lang=i18n.language(request)), timeout=RPC_TIMEOUT_S)
    if invite:
        await request.app[PEERS].billing.AcceptInvite(
            billing_pb2.AcceptInviteRequest(user_id=account.user_id, code=invite), timeout=RPC_TIMEOUT_S)
    # A key to start with, in the answer only: the console shows it this once.
    first = await request.app[PEERS].auth.CreateKey(
        auth_pb2.CreateKeyRequest(user_id=account.user_id,
                                  name=i18n.t(i18n.language(request), "console.key.first_name")),
        timeout=RPC_TIMEOUT_S)
    return await _signed_in(request, email, password, 201, first_key=first.key)


async def login(request: web.Request) -> web.Response:
    sessions.check_origin(request)  # no login CSRF: another site cannot sign a browser in
    email, password = _credentials(await json_body(request))
    return await _signed_in(request, email, password, 200)


async def logout(request: web.Request) -> web.Response:
    await sessions.resolve(request)
    await request.app[PEERS].auth.Logout(auth_pb2.LogoutRequest(token=request.cookies.get(sessions.COOKIE, "")),
                                         timeout=RPC_TIMEOUT_S)
    response = web.Response(status=204)
    sessions.clear_cookie(request, response)
    return response


async def me(request: web.Request) -> web.Response:
    session = await sessions.resolve(request)
    user = await request.app[PEERS].billing.GetUser(billing_pb2.GetUserRequest(user_id=session.account.user_id),
                                                    timeout=RPC_TIMEOUT_S)
    return json_response({**_account(session.account), "balance": from_micro(user.balance),
                          "held": from_micro(user.held), "owed": from_micro(user.owed),
                          "csrf_token": session.csrf_token})


# --- keys -----------------------------------------------------------------------------


async def list_keys(request: web.Request) -> web.Response:
    session = await sessions.resolve(request)
    keys = await request.app[PEERS].auth.ListKeys(auth_pb2.ListKeysRequest(user_id=session.account.user_id),
                                                  timeout=RPC_TIMEOUT_S)
    return json_response({"data": [{**key_info(k), "web": k.web} for k in keys.keys]})


async def create_key(request: web.Request) -> web.Response:
    session = await sessions.resolve(request)
    body = await json_body(request)
    limit = body.get("credit_limit")
    created = await request.app[PEERS].auth.CreateKey(
        auth_pb2.CreateKeyRequest(
            user_id=session.account.user_id, name=get_str(body, "name"), models=get_str_list(body, "models"),
            credit_limit=to_micro(limit, "credit_limit") if limit is not None else 0,
            expires_at=get_timestamp(body.get("expires_at"), "expires_at"),
            rpm=get_int(body, "rpm"), tpm=get_int(body, "tpm"), ips=get_str_list(body, "ips"),
        ),
        timeout=RPC_TIMEOUT_S,
    )
    return json_response({**key_info(created.info), "key": created.key}, status=201)


async def revoke_key(request: web.Request) -> web.Response:
    session = await sessions.resolve(request)
    # The user id makes another user's key answer 404, exactly like a key that does not exist.
    await request.app[PEERS].auth.RevokeKey(
        auth_pb2.RevokeKeyRequest(key_id=path_id(request), user_id=session.account.user_id), timeout=RPC_TIMEOUT_S)
    return web.Response(status=204)


# --- usage, spend, redeem ------------------------------------------------------------------


def _limit(request: web.Request, default: int, high: int) -> int:
    raw = request.query.get("limit") or request.query.get("days") or ""
    if not raw:
        return default
    if not raw.isdigit() or not 0 < int(raw) <= high:
        raise invalid(f"must be an integer from 1 to {high}", "limit")
    return int(raw)


async def usage(request: web.Request) -> web.StreamResponse:
    """The user's own calls, with filters; `format=csv` streams them all (edge/usage_api.py)."""
    session = await sessions.resolve(request)
    return await usage_api.respond(request, usage_api.usage_filter(request, session.account.user_id),
                                   usage_api.user_row, 50)


async def spend(request: web.Request) -> web.Response:
    session = await sessions.resolve(request)
    reply = await request.app[PEERS].billing.DailySpend(
        billing_pb2.DailySpendRequest(user_id=session.account.user_id, days=_limit(request, 30, 366)),
        timeout=RPC_TIMEOUT_S,
    )
    return json_response({"data": [{"day": d.day, "credits": from_micro(d.credits), "requests": d.requests,
                                    "tokens": d.tokens} for d in reply.days]})


async def redeem(request: web.Request) -> web.Response:
    session = await sessions.resolve(request)
    code = get_str(await json_body(request), "code", limit=100).strip()
    if not code:
        raise invalid("Enter a redeem code.", "code", "missing_required_parameter")
    user = await request.app[PEERS].billing.Redeem(billing_pb2.RedeemRequest(user_id=session.account.user_id,
                                                                             code=code), timeout=RPC_TIMEOUT_S)
    return json_response({"balance": from_micro(user.balance)})


# --- the chat page ---------------------------------------------------------------------------


async def _web_key(request: web.Request) -> auth_pb2.KeyInfo:
    session = await sessions.resolve(request)
    return await request.app[PEERS].auth.WebKey(auth_pb2.WebKeyRequest(user_id=session.account.user_id),
                                                timeout=RPC_TIMEOUT_S)


async def models(request: web.Request) -> web.Response:
    key = await _web_key(request)
    reply = await request.app[PEERS].inference.ListModels(inference_pb2.ListModelsRequest(allowed=key.models),
                                                          timeout=RPC_TIMEOUT_S)
    return json_response({"object": "list", "data": [{"id": m.id, "object": "model", "created": m.created,
                                                      "owned_by": m.owned_by} for m in reply.models]})


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """The chat page's call: the session's own key, through the very path every API key takes."""
    return await openai_api.relay_as(request, await _web_key(request), inference_pb2.CHAT_COMPLETIONS)


# --- recovering an account ---------------------------------------------------------------------


async def request_password_reset(request: web.Request) -> web.Response:
    """Always 202, whether or not the address has an account: the answer tells nobody which do."""
    sessions.check_origin(request)
    email = get_str(await json_body(request), "email", limit=254).strip()
    if not email:
        raise invalid("Enter your email address.", "email", "missing_required_parameter")
    await request.app[SIGNUPS].admit(client_ip(request))  # mails cost like sign-ups: as few per address
    await request.app[PEERS].auth.RequestPasswordReset(
        auth_pb2.PasswordResetRequest(email=email, lang=i18n.language(request)), timeout=RPC_TIMEOUT_S)
    return json_response({}, status=202)


async def confirm_password_reset(request: web.Request) -> web.Response:
    sessions.check_origin(request)
    body = await json_body(request)
    await request.app[PEERS].auth.ResetPassword(
        auth_pb2.ResetPasswordRequest(token=get_str(body, "token"), password=get_str(body, "password", limit=1024)),
        timeout=RPC_TIMEOUT_S)
    return web.Response(status=204)


async def change_password(request: web.Request) -> web.Response:
    await sessions.resolve(request)
    body = await json_body(request)
    await request.app[PEERS].auth.ChangePassword(
        auth_pb2.ChangePasswordRequest(session_token=request.cookies.get(sessions.COOKIE, ""),
                                       current=get_str(body, "current", limit=1024),
                                       new_password=get_str(body, "new", limit=1024)),
        timeout=RPC_TIMEOUT_S)
    return web.Response(status=204)


# --- verified addresses (the sign-up bonus waits for one when mail is configured) ----------------


async def verify_email(request: web.Request) -> web.Response:
    """The mailed link's token: no session needed (the link may open in another browser)."""
    sessions.check_origin(request)
    token = get_str(await json_body(request), "token")
    reply = await request.app[PEERS].auth.VerifyEmail(auth_pb2.VerifyEmailRequest(token=token),
                                                      timeout=RPC_TIMEOUT_S)
    return json_response({"verified": True, "email": reply.account.email, "bonus": from_micro(reply.bonus)})


async def resend_verification(request: web.Request) -> web.Response:
    session = await sessions.resolve(request)
    await request.app[SIGNUPS].admit(client_ip(request))  # mails cost like sign-ups: as few per address
    await request.app[PEERS].auth.SendVerification(
        auth_pb2.SendVerificationRequest(user_id=session.account.user_id, lang=i18n.language(request)),
        timeout=RPC_TIMEOUT_S)
    return json_response({}, status=202)


# --- the low-balance alert ------------------------------------------------------------------------


def _alert(a: billing_pb2.BalanceAlert) -> dict[str, Any]:
    return {"threshold": from_micro(a.threshold), "below": a.below}


async def get_alert(request: web.Request) -> web.Response:
    session = await sessions.resolve(request)
    alert = await request.app[PEERS].billing.GetBalanceAlert(
        billing_pb2.GetUserRequest(user_id=session.account.user_id), timeout=RPC_TIMEOUT_S)
    return json_response(_alert(alert))


async def set_alert(request: web.Request) -> web.Response:
    """PUT {"threshold": credits}: one mail and a banner each time a charge takes the balance below
    it (0 turns the alert off)."""
    session = await sessions.resolve(request)
    body = await json_body(request)
    if "threshold" not in body:
        raise invalid("Enter a threshold in credits: 'threshold'.", "threshold", "missing_required_parameter")
    threshold = to_micro(body["threshold"], "threshold")
    if threshold < 0:
        raise invalid("'threshold' must be 0 or more credits", "threshold")
    alert = await request.app[PEERS].billing.SetBalanceAlert(
        billing_pb2.SetBalanceAlertRequest(user_id=session.account.user_id, threshold=threshold,
                                           lang=i18n.language(request)), timeout=RPC_TIMEOUT_S)
    return json_response(_alert(alert))


# --- the operator's notice (shown on every page) ---------------------------------------------------


async def notice(request: web.Request) -> web.Response:
    """No sign-in: every page shows it. Plain text; the pages put it in as text."""
    found = await request.app[PEERS].auth.GetNotice(auth_pb2.GetNoticeRequest(), timeout=RPC_TIMEOUT_S)
    return json_response({"announcement": found.announcement, "contact": found.contact,
                          "updated_at": found.updated_at or None})
