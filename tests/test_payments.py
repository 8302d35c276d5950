"""Money in: the public price list, payment orders and their crediting (exactly once),
the demo provider, and invite rewards — over real HTTP against the session's stack."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import requests

from tests.console import PASSWORD, ConsoleUser
from tests.world import World


def test_pricing_is_public_and_lists_only_served_models(world: World) -> None:
    unserved = world.model(prompt=7, completion=9)
    served, _ = world.served_model(prompt=0.25, completion=1.125, min_charge=0.5)
    resp = requests.get(world.url + "/api/pricing", timeout=30)  # no session, no key
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "list"
    rows = {row["model"]: row for row in body["data"]}
    assert unserved not in rows
    assert rows[served]["prompt"] == 0.25 and rows[served]["completion"] == 1.125
    assert rows[served]["min_charge"] == 0.5 and rows[served]["unit"] == "credits per 1K tokens"
    assert rows["gpt-3.5-turbo"]["prompt"] == 1.5 and rows["gpt-3.5-turbo"]["max_output"] == 4096
    assert rows[served]["cached_prompt"] == rows[served]["prompt"]  # no cache price set: cache reads cost as prompt
    assert rows["text-embedding-ada-002"]["min_charge"] == 4 and "max_output" not in rows["text-embedding-ada-002"]
    assert Decimal(str(body["credits_per_cny"])) == 140 and Decimal(str(body["credits_per_usd"])) == 1000


def test_pricing_page_and_openapi(world: World) -> None:
    page = requests.get(world.url + "/pricing", timeout=30)
    assert page.status_code == 200 and "pricing.js" in page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    for name in ("chat.js", "console.js", "ops.js", "pricing.js"):
        assert requests.get(f"{world.url}/static/{name}", timeout=30).status_code == 200
    common = requests.get(world.url + "/static/common.js", timeout=30).text
    assert '"/pricing"' in common  # the top bar of every page links the price list
    document = requests.get(world.url + "/openapi.json", timeout=30).json()
    assert "/api/pricing" in document["paths"]
    assert document["paths"]["/api/pricing"]["get"]["security"] == []


# --- orders and the demo provider (the session's stack has no real provider) -----------------


def console_user(world: World, invite: str | None = None) -> ConsoleUser:
    user = ConsoleUser(world.url)
    if invite is None:
        return user.register()
    reply = user.ok("POST", "/api/register", {"email": user.email, "password": PASSWORD, "invite": invite}, expect=201)
    user.csrf, user.user_id = reply["csrf_token"], reply["account"]["user_id"]
    return user


def notifications(world: World, order_id: str) -> list[dict[str, Any]]:
    return world.admin("GET", f"/admin/v1/payment-notifications?order_id={order_id}")["data"]


def test_demo_order_is_credited_once_however_often_it_is_paid(world: World) -> None:
    user = console_user(world)
    assert requests.get(world.url + "/api/pricing", timeout=30).json()["payment_providers"] == ["demo"]
    order = user.ok("POST", "/api/payments", {"provider": "demo", "amount": 1.5}, expect=201)
    assert order["status"] == "pending" and order["provider"] == "demo" and order["currency"] == "CNY"
    assert order["amount"] == 1.5 and order["credits"] == 210  # 1.5 yuan x 140
    assert order["pay_url"] == f"/pay/demo/{order['id']}" and order["expires_at"] > order["created"] + 1700
    page = user.http.get(world.url + order["pay_url"], timeout=30)
    assert page.status_code == 200 and "demo-pay.js" in page.text
    before = world.balance(user.user_id)

    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda _: user.call("POST", f"/api/payments/{order['id']}/pay"), range(5)))
    assert [a.status_code for a in answers] == [200] * 5, [a.text for a in answers]
    assert world.balance(user.user_id) == before + 210
    paid = user.ok("GET", f"/api/payments/{order['id']}")
    assert paid["status"] == "paid" and paid["paid_at"] >= paid["created"]
    assert [o["id"] for o in user.ok("GET", "/api/payments")["data"]] == [order["id"]]
    verdicts = sorted(n["verdict"] for n in notifications(world, order["id"]))
    assert verdicts == ["credited"] + ["duplicate"] * 4
    assert world.verify()["ok"]


def test_bad_orders_are_refused_and_change_nothing(world: World) -> None:
    user, other = console_user(world), console_user(world)
    mine = user.ok("POST", "/api/payments", {"provider": "demo", "amount": 2}, expect=201)
    before = world.balance(user.user_id)
    cases = [({"provider": "alipay", "amount": 1}, "provider"), ({"provider": "stripe", "amount": 1}, "provider"),
             ({"amount": 1}, "provider"), ({"provider": 7, "amount": 1}, "provider"), ({"provider": "demo"}, "amount")]
    cases += [({"provider": "demo", "amount": bad}, "amount") for bad in (0, -1, 1.001, "5", True, 1e9, None, [1])]
    for body, param in cases:
        resp = user.call("POST", "/api/payments", body)
        assert resp.status_code == 400, (body, resp.text)
        assert resp.json()["error"]["param"] == param, (body, resp.text)
    assert user.call("POST", "/api/payments", {"provider": "demo", "amount": 1}, csrf=False).status_code == 403
    anonymous = requests.post(world.url + "/api/payments", json={"provider": "demo", "amount": 1}, timeout=30)
    assert anonymous.status_code == 401
    # Another user's order is not there for them; nor are made-up ids.
    assert other.call("GET", f"/api/payments/{mine['id']}").status_code == 404
    assert other.call("POST", f"/api/payments/{mine['id']}/pay").status_code == 404
    for bad in ("nope", "ord_" + "0" * 24, "x" * 300, "%00"):
        assert user.call("GET", f"/api/payments/{bad}").status_code == 404
    assert [o["id"] for o in user.ok("GET", "/api/payments")["data"]] == [mine["id"]]
    assert world.balance(user.user_id) == before
    assert user.ok("GET", f"/api/payments/{mine['id']}")["status"] == "pending"


def test_notifications_without_a_provider_are_refused(world: World) -> None:
    for body in (b"", b"\xff\xfe", b"a=1&a=2", b"out_trade_no=ord_x&trade_status=TRADE_SUCCESS&sign=AAAA",
                 b"=" * 5000, b"out_trade_no=%00&sign=x", b"a%00=1"):
        resp = requests.post(world.url + "/payments/alipay/notify", data=body, timeout=30,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert resp.status_code == 200 and resp.text == "failure", (body, resp.status_code, resp.text)
    too_big = requests.post(world.url + "/payments/alipay/notify", data=b"a=" + b"x" * 70_000, timeout=30)
    assert too_big.status_code == 413
    hook = requests.post(world.url + "/payments/stripe/webhook", data=b'{"type": "checkout.session.completed"}',
                         headers={"Stripe-Signature": "t=1,v1=00"}, timeout=30)
    assert hook.status_code == 400 and hook.json()["error"]["type"] == "invalid_request_error"
    for bad in ("%00", "x" * 101, "a b", "ord-1"):
        resp = world.http.get(f"{world.url}/admin/v1/payment-notifications?order_id={bad}", timeout=30)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "order_id", bad


# --- invites -----------------------------------------------------------------------------


def test_an_invitees_first_paid_order_rewards_the_inviter_once(world: World) -> None:
    inviter = console_user(world)
    invite = inviter.ok("GET", "/api/invite")
    assert invite["url"] == f"/console?invite={invite['code']}" and invite["reward_pct"] == 10
    assert inviter.ok("GET", "/api/invite")["code"] == invite["code"]  # one code per user
    invitee = console_user(world, invite=invite["code"])
    start = world.balance(inviter.user_id)

    # A redeem code and an admin top-up are not paid orders.
    code = world.admin("POST", "/admin/v1/redeem-codes", {"credits": 50, "count": 1})["codes"][0]
    invitee.ok("POST", "/api/redeem", {"code": code})
    world.admin("POST", f"/admin/v1/users/{invitee.user_id}/topups",
                {"credits": 70, "reference": f"t-{invitee.user_id}"})
    assert world.balance(inviter.user_id) == start

    first = invitee.ok("POST", "/api/payments", {"provider": "demo", "amount": 10}, expect=201)
    second = invitee.ok("POST", "/api/payments", {"provider": "demo", "amount": 20}, expect=201)
    with ThreadPoolExecutor(4) as pool:  # both orders, each twice, at once
        list(pool.map(lambda oid: invitee.ok("POST", f"/api/payments/{oid}/pay"),
                      [first["id"], second["id"], first["id"], second["id"]]))
    # 10% of the first order to be paid (either: 10 or 20 yuan at 140 credits), once.
    reward = world.balance(inviter.user_id) - start
    assert reward in (Decimal(140), Decimal(280)), reward
    assert inviter.ok("GET", "/api/invite") == {**invite, "invited": 1, "earned": int(reward)}
    third = invitee.ok("POST", "/api/payments", {"provider": "demo", "amount": 5}, expect=201)
    invitee.ok("POST", f"/api/payments/{third['id']}/pay")
    assert world.balance(inviter.user_id) == start + reward

    # An unknown code, or one's own, invites nobody; the sign-up still works.
    stranger = console_user(world, invite="no-such-code")
    order = stranger.ok("POST", "/api/payments", {"provider": "demo", "amount": 1}, expect=201)
    stranger.ok("POST", f"/api/payments/{order['id']}/pay")
    assert world.balance(inviter.user_id) == start + reward
    assert world.verify()["ok"]
