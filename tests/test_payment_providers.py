"""Alipay and Stripe against a stack configured for both, with a fake of each on loopback
(tests/fake_payments.py): orders, signed notifications and webhooks credit exactly once;
forged, tampered, replayed and mismatched ones move nothing and are kept; refunds take back
what the balance holds, the rest is owed and collected from the next credits, a refund that
comes before the payment sticks, and the inviter's reward goes back in proportion."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import psycopg
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.console import PASSWORD, ConsoleUser
from tests.fake_payments import (
    FakePayments,
    alipay_notification,
    alipay_signed,
    new_key,
    private_pem,
    stripe_event,
    stripe_signature,
)
from tests.mock_upstream import MockUpstream, stream_then
from tests.world import ISSUED_SECRETS, World
from tools.stack import wait_until

PUBLIC_URL = "https://chatkore.example.com"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakePayments]:
    payments = FakePayments().start()
    # Never in a log line (tests/hostile/test_secrets_in_logs.py): the provider secrets, a line of the app's key.
    ISSUED_SECRETS.update({payments.stripe_secret, payments.webhook_secret,
                           private_pem(payments.app_key).splitlines()[5]})
    yield payments
    payments.stop()


@pytest.fixture(scope="module")
def shop(make_stack, mock: MockUpstream, fake: FakePayments) -> Iterator[World]:
    """A stack that takes Alipay and Stripe; its books must balance at the end."""
    w = World(make_stack(name="payments", env={**fake.env(PUBLIC_URL), "CHATKORE_SIGNUP_CREDITS": "0"}), mock)
    yield w
    report = w.verify()
    assert report["ok"], report["problems"]


def notify(shop: World, params: dict[str, str]) -> str:
    resp = requests.post(shop.url + "/payments/alipay/notify", data=params, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.text


def webhook(shop: World, payload: bytes, signature: str) -> requests.Response:
    return requests.post(shop.url + "/payments/stripe/webhook", data=payload, timeout=30,
                         headers={"Stripe-Signature": signature, "Content-Type": "application/json"})


def kept(shop: World, order_id: str) -> list[dict[str, Any]]:
    return shop.admin("GET", f"/admin/v1/payment-notifications?order_id={order_id}")["data"]


def admin_order(shop: World, order_id: str) -> dict[str, Any]:
    return next(o for o in shop.admin("GET", "/admin/v1/orders?limit=500")["data"] if o["id"] == order_id)


# --- Alipay ---------------------------------------------------------------------------------


def test_alipay_order_has_a_signed_page_and_a_qr_code(shop: World, fake: FakePayments) -> None:
    user = ConsoleUser(shop.url).register()
    assert requests.get(shop.url + "/api/pricing", timeout=30).json()["payment_providers"] == ["alipay", "stripe"]
    refused = user.call("POST", "/api/payments", {"provider": "demo", "amount": 1})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "provider_unavailable"

    order = user.ok("POST", "/api/payments", {"provider": "alipay", "amount": 12.3}, expect=201)
    assert order["currency"] == "CNY" and order["amount"] == 12.3 and order["credits"] == 1722
    page = urlsplit(order["pay_url"])
    assert f"{page.scheme}://{page.netloc}{page.path}" == f"{fake.url}/gateway.do"
    params = dict(parse_qsl(page.query))
    assert fake.app_signed(params), "the page-pay URL must carry the app's RSA2 signature"
    assert params["method"] == "alipay.trade.page.pay" and params["app_id"] == "2021000000000001"
    assert params["notify_url"] == f"{PUBLIC_URL}/payments/alipay/notify"
    biz = json.loads(params["biz_content"])
    assert biz["out_trade_no"] == order["id"] and biz["total_amount"] == "12.30"
    assert order["qr_code"] == f"https://qr.alipay.com/fake{order['id']}"
    precreate = fake.alipay_calls[-1]
    assert precreate["signed"] and json.loads(precreate["params"]["biz_content"])["total_amount"] == "12.30"
    qr = user.http.get(f"{shop.url}/api/payments/{order['id']}/qr.svg", timeout=30)
    assert qr.status_code == 200 and qr.headers["Content-Type"].startswith("image/svg+xml") and b"<svg" in qr.content


def test_alipay_notification_five_times_at_once_credits_once(shop: World, fake: FakePayments) -> None:
    user = ConsoleUser(shop.url).register()
    order = user.ok("POST", "/api/payments", {"provider": "alipay", "amount": 0.01}, expect=201)  # no minimum
    signed = alipay_signed(fake.alipay_key, alipay_notification(order["id"], "0.01"))
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda _: notify(shop, signed), range(5)))
    assert answers == ["success"] * 5
    assert shop.balance(user.user_id) == Decimal("1.4")
    assert user.ok("GET", f"/api/payments/{order['id']}")["status"] == "paid"
    assert notify(shop, signed) == "success"  # a replay later: answered, nothing moves
    assert shop.balance(user.user_id) == Decimal("1.4")
    verdicts = sorted(n["verdict"] for n in kept(shop, order["id"]))
    assert verdicts == ["credited"] + ["duplicate"] * 5
    assert all(signed["sign"] not in json.dumps(n) for n in kept(shop, order["id"]))  # never the signature


def _partial_refund(fake: FakePayments, order_id: str, total: str, refund_fee: str) -> dict[str, str]:
    """Alipay's TRADE_SUCCESS after a partial refund: `refund_fee` yuan refunded so far, in all."""
    params = {**alipay_notification(order_id, total), "refund_fee": refund_fee,
              "gmt_refund": time.strftime("%Y-%m-%d %H:%M:%S")}
    return alipay_signed(fake.alipay_key, params)


def test_alipay_partial_refund_takes_back_its_share_once(shop: World, fake: FakePayments) -> None:
    user = ConsoleUser(shop.url).register()
    order = user.ok("POST", "/api/payments", {"provider": "alipay", "amount": 10}, expect=201)
    assert notify(shop, alipay_signed(fake.alipay_key, alipay_notification(order["id"], "10.00"))) == "success"
    assert shop.balance(user.user_id) == Decimal(1400)
    # A quarter refunded, the notification five times at once: a quarter of the credits back, once.
    quarter = _partial_refund(fake, order["id"], "10.00", "2.50")
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda _: notify(shop, quarter), range(5)))
    assert answers == ["success"] * 5
    assert shop.balance(user.user_id) == Decimal(1050)
    assert notify(shop, quarter) == "success" and shop.balance(user.user_id) == Decimal(1050)  # a replay
    refunds = [n["verdict"] for n in kept(shop, order["id"]) if n["verdict"] != "credited"]
    assert sorted(refunds) == ["duplicate"] * 5 + ["refunded"]
    # Another refund: refund_fee is the sum so far, so 6.00 in all takes back 3.50 more.
    assert notify(shop, _partial_refund(fake, order["id"], "10.00", "6.00")) == "success"
    assert shop.balance(user.user_id) == Decimal(560)
    assert user.ok("GET", f"/api/payments/{order['id']}")["status"] == "paid"  # part of it still is
    # A refund_fee that is no part of the order is refused, and moves nothing.
    for bad in ("abc", "10.01", "-1.00", "0.001", "NaN"):
        notify(shop, _partial_refund(fake, order["id"], "10.00", bad))
        assert shop.balance(user.user_id) == Decimal(560), bad
    assert shop.verify()["ok"]


def test_alipay_partial_refund_before_its_payment_notification(shop: World, fake: FakePayments) -> None:
    """The payment notification was lost: the partial refund's TRADE_SUCCESS says the trade was paid."""
    user = ConsoleUser(shop.url).register()
    order = user.ok("POST", "/api/payments", {"provider": "alipay", "amount": 2}, expect=201)
    assert notify(shop, _partial_refund(fake, order["id"], "2.00", "0.50")) == "success"
    assert shop.balance(user.user_id) == Decimal(210)  # 280 credited, a quarter taken back
    assert notify(shop, alipay_signed(fake.alipay_key, alipay_notification(order["id"], "2.00"))) == "success"
    assert shop.balance(user.user_id) == Decimal(210)  # the late payment notification credits nothing more
    assert shop.verify()["ok"]


@pytest.mark.parametrize("case", ["tampered_amount", "resigned_amount", "wrong_key", "unknown_order", "other_app",
                                  "closed_resigned_amount", "no_signature"])
def test_alipay_forged_or_mismatched_notification_moves_nothing(shop: World, fake: FakePayments, case: str) -> None:
    user = ConsoleUser(shop.url).register()
    order = user.ok("POST", "/api/payments", {"provider": "alipay", "amount": 50}, expect=201)
    genuine = alipay_notification(order["id"], "50.00")
    if case == "tampered_amount":  # signed as it was, then the amount changed
        params = {**alipay_signed(fake.alipay_key, {**genuine, "total_amount": "50.00"}), "total_amount": "5000.00"}
    elif case == "resigned_amount":  # a correct signature, the wrong amount
        params = alipay_signed(fake.alipay_key, {**genuine, "total_amount": "0.50"})
    elif case == "wrong_key":
        params = alipay_signed(new_key(), genuine)
    elif case == "unknown_order":
        params = alipay_signed(fake.alipay_key, {**genuine, "out_trade_no": "ord_" + "0" * 24})
    elif case == "other_app":
        params = alipay_signed(fake.alipay_key, {**genuine, "app_id": "2021999999999999"})
    elif case == "closed_resigned_amount":  # a closed trade, signed, for another amount
        params = alipay_signed(fake.alipay_key, {**genuine, "trade_status": "TRADE_CLOSED", "total_amount": "0.50"})
    else:
        params = genuine
    before = shop.verify()["entries"]
    assert notify(shop, params) == "failure"
    assert shop.balance(user.user_id) == 0
    assert shop.verify()["entries"] == before  # not one ledger entry
    assert user.ok("GET", f"/api/payments/{order['id']}")["status"] == "pending"
    named = params["out_trade_no"]
    [note] = [n for n in kept(shop, named) if n["verdict"] == "refused"][:1]
    assert note["provider"] == "alipay" and note["reason"]
    # A signed notification that disagrees with its order puts the order under review.
    assert admin_order(shop, order["id"])["review"] is (case in ("resigned_amount", "other_app",
                                                                 "closed_resigned_amount"))
    # The genuine notification still credits it.
    assert notify(shop, alipay_signed(fake.alipay_key, genuine)) == "success"
    assert shop.balance(user.user_id) == 7000


def test_alipay_notify_survives_garbage(shop: World) -> None:
    for body in (b"", b"sign=%%%", b"\x00\xff" * 100, b"a=1&a=2", b"out_trade_no=" + b"x" * 10_000 + b"&sign=zz",
                 json.dumps({"out_trade_no": "x"}).encode()):
        resp = requests.post(shop.url + "/payments/alipay/notify", data=body, timeout=30,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert (resp.status_code, resp.text) == (200, "failure"), body[:40]
    too_big = requests.post(shop.url + "/payments/alipay/notify", data=b"a=" + b"x" * 100_000, timeout=30)
    assert too_big.status_code == 413


# --- Stripe ---------------------------------------------------------------------------------


def stripe_order(shop: World, fake: FakePayments, user: ConsoleUser, dollars: float) -> dict[str, Any]:
    order = user.ok("POST", "/api/payments", {"provider": "stripe", "amount": dollars}, expect=201)
    sent = fake.stripe_calls[-1]
    assert sent["client_reference_id"] == order["id"] and sent["mode"] == "payment"
    assert sent["line_items[0][price_data][unit_amount]"] == str(round(dollars * 100))
    assert order["currency"] == "USD" and order["pay_url"].startswith("https://checkout.stripe.test/c/pay/cs_test_")
    return order


def completed(order: dict[str, Any], intent: str, *, amount: int | None = None, currency: str = "usd") -> bytes:
    return stripe_event("checkout.session.completed", {
        "id": "cs_test_x", "object": "checkout.session", "client_reference_id": order["id"],
        "payment_status": "paid", "amount_total": round(order["amount"] * 100) if amount is None else amount,
        "currency": currency, "payment_intent": intent, "metadata": {"order_id": order["id"]}})


def test_stripe_webhook_credits_once_and_refuses_bad_signatures(shop: World, fake: FakePayments) -> None:
    user = ConsoleUser(shop.url).register()
    order = stripe_order(shop, fake, user, 2.5)
    assert order["credits"] == 2500
    payload = completed(order, "pi_once")
    for bad in (stripe_signature("whsec_other", payload), "t=1,v1=deadbeef", "",
                stripe_signature(fake.webhook_secret, payload, int(time.time()) - 3600)):  # stale
        resp = webhook(shop, payload, bad)
        assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request_error", bad
    assert shop.balance(user.user_id) == 0
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda _: webhook(shop, payload, stripe_signature(fake.webhook_secret, payload)),
                                range(5)))
    assert [a.status_code for a in answers] == [200] * 5
    assert sorted(a.json()["verdict"] for a in answers) == ["credited"] + ["duplicate"] * 4
    assert shop.balance(user.user_id) == 2500
    # Signed, but for another amount: answered (no retries), nothing moves, the order goes to review.
    other = stripe_order(shop, fake, user, 3)
    wrong = completed(other, "pi_wrong", amount=1)
    assert webhook(shop, wrong, stripe_signature(fake.webhook_secret, wrong)).json()["verdict"] == "refused"
    assert shop.balance(user.user_id) == 2500 and admin_order(shop, other["id"])["review"] is True
    assert [n["verdict"] for n in kept(shop, "")][:1]  # kept, newest first
    refused = [n for n in kept(shop, "") if n["provider"] == "stripe" and n["verdict"] == "refused"]
    assert len(refused) >= 5


def test_stripe_refund_takes_back_what_the_balance_holds_and_records_the_rest(shop: World, fake: FakePayments) -> None:
    user = ConsoleUser(shop.url).register()
    order = stripe_order(shop, fake, user, 2)  # 2000 credits
    payload = completed(order, "pi_refund")
    assert webhook(shop, payload, stripe_signature(fake.webhook_secret, payload)).json()["verdict"] == "credited"

    def refund(refunded: int) -> requests.Response:
        event = stripe_event("charge.refunded", {"id": "ch_1", "object": "charge", "payment_intent": "pi_refund",
                                                 "amount": 200, "amount_refunded": refunded, "currency": "usd"})
        return webhook(shop, event, stripe_signature(fake.webhook_secret, event))

    assert refund(50).json()["verdict"] == "refunded"  # a quarter back
    assert shop.balance(user.user_id) == 1500
    assert refund(50).json()["verdict"] == "duplicate"
    # Spend most of the rest, then the whole charge is refunded: take what is left, owe the rest.
    model, _ = shop.served_model(prompt=1, completion=1, min_charge=1400)
    key = shop.key(user.user_id)["key"]
    shop.client(key).chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert shop.balance(user.user_id) == 100
    assert refund(200).json()["verdict"] == "refunded"
    assert shop.balance(user.user_id) == 0
    mine = user.ok("GET", f"/api/payments/{order['id']}")
    assert mine["status"] == "refunded" and mine["refunded"] == 2000 and mine["owed"] == 1400
    # The owed 1400 is collected first from the next top-up, with its ledger entries; the admin
    # API's user (one and in the list) and the user's /api/me show the debt until it is paid.
    assert owed(shop, user.user_id) == 1400
    assert shown_owed(shop, user) == [Decimal(1400)] * 3
    shop.admin("POST", f"/admin/v1/users/{user.user_id}/topups", {"credits": 2000, "reference": f"r-{order['id']}"})
    assert shop.balance(user.user_id) == 600 and owed(shop, user.user_id) == 0
    assert shown_owed(shop, user) == [Decimal(0)] * 3
    assert shop.verify()["ok"]


def shown_owed(shop: World, user: ConsoleUser) -> list[Decimal]:
    """The debt as GET /admin/v1/users/{id}, the /admin/v1/users list (the /ops page's) and the
    user's own GET /api/me show it, in credits."""
    one = shop.admin("GET", f"/admin/v1/users/{user.user_id}")
    [listed] = [u for u in shop.admin("GET", f"/admin/v1/users?q={user.user_id}")["data"] if u["id"] == user.user_id]
    me = user.ok("GET", "/api/me")
    return [Decimal(str(answer["owed"])) for answer in (one, listed, me)]


def owed(shop: World, user_id: int) -> Decimal:
    """The user's debt in credits (what refunds could not take back yet)."""
    with psycopg.connect(shop.stack.database_url, autocommit=True) as conn:
        micro = conn.execute("SELECT owed FROM users WHERE id = %s", (user_id,)).fetchone()[0]
    return Decimal(micro) / 1_000_000


def refunded(order: dict[str, Any], intent: str, cents: int, *, metadata: bool = True) -> bytes:
    """Stripe's charge.refunded for an order's payment: `cents` refunded so far, in all."""
    obj: dict[str, Any] = {"id": f"ch_{intent}", "object": "charge", "payment_intent": intent,
                           "amount": round(order["amount"] * 100), "amount_refunded": cents, "currency": "usd"}
    if metadata:  # Checkout copies payment_intent_data.metadata onto the charge
        obj["metadata"] = {"order_id": order["id"]}
    return stripe_event("charge.refunded", obj)


def signed(fake: FakePayments, payload: bytes) -> str:
    return stripe_signature(fake.webhook_secret, payload)


def test_a_refund_before_the_completion_sticks(shop: World, fake: FakePayments) -> None:
    """Stripe does not promise the order of events: a refund can arrive before
    checkout.session.completed. A full one means the completion credits nothing; a partial
    one, only the rest."""
    user = ConsoleUser(shop.url).register()
    order = stripe_order(shop, fake, user, 2)  # 2000 credits
    early = refunded(order, "pi_early", 200)
    assert webhook(shop, early, signed(fake, early)).json()["verdict"] == "refunded"
    late = completed(order, "pi_early")
    answer = webhook(shop, late, signed(fake, late))
    assert answer.status_code == 200 and answer.json()["verdict"] == "refused"  # answered: Stripe stops
    assert shop.balance(user.user_id) == 0
    mine = user.ok("GET", f"/api/payments/{order['id']}")
    assert mine["status"] == "refunded" and mine["paid_at"] is None
    assert sorted(n["verdict"] for n in kept(shop, order["id"])) == ["refunded", "refused"]

    partial = stripe_order(shop, fake, user, 2)
    quarter = refunded(partial, "pi_quarter", 50)
    assert webhook(shop, quarter, signed(fake, quarter)).json()["verdict"] == "refunded"
    late = completed(partial, "pi_quarter")
    assert webhook(shop, late, signed(fake, late)).json()["verdict"] == "credited"
    assert shop.balance(user.user_id) == 1500
    # The rest of it refunded later: what the payment credited goes back, nothing more.
    rest = refunded(partial, "pi_quarter", 200)
    assert webhook(shop, rest, signed(fake, rest)).json()["verdict"] == "refunded"
    assert shop.balance(user.user_id) == 0 and owed(shop, user.user_id) == 0
    assert user.ok("GET", f"/api/payments/{partial['id']}")["status"] == "refunded"
    assert shop.verify()["ok"]


@pytest.mark.parametrize(("cents", "left"), [(200, 0), (50, 1500)], ids=["full", "partial"])
def test_refund_and_completion_five_times_each_at_once(shop: World, fake: FakePayments, cents: int,
                                                       left: int) -> None:
    """Whichever lands first, the order ends credited exactly with what was not refunded."""
    user = ConsoleUser(shop.url).register()
    order = stripe_order(shop, fake, user, 2)
    intent = f"pi_race_{order['id']}"
    events = [completed(order, intent), refunded(order, intent, cents)] * 5
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda e: webhook(shop, e, signed(fake, e)), events))
    assert [a.status_code for a in answers] == [200] * 10, [a.text for a in answers]
    assert shop.balance(user.user_id) == left and owed(shop, user.user_id) == 0
    verdicts = [a.json()["verdict"] for a in answers]
    assert verdicts[1::2].count("refunded") == 1 and verdicts[0::2].count("credited") <= 1
    assert user.ok("GET", f"/api/payments/{order['id']}")["status"] == ("refunded" if cents == 200 else "paid")
    assert shop.verify()["ok"]


def test_credits_held_by_a_call_in_flight_are_collected_when_released(shop: World, fake: FakePayments) -> None:
    """A refund takes what the balance has (an open hold is not touched: the call goes on);
    what it could not take is owed, and the hold's release pays it first, then the next top-up."""
    user = ConsoleUser(shop.url).register()
    order = stripe_order(shop, fake, user, 2)
    payload = completed(order, "pi_flight")
    assert webhook(shop, payload, signed(fake, payload)).json()["verdict"] == "credited"
    model, tag = shop.served_model(prompt=1, completion=1000, min_charge=100)
    shop.mock.script(tag, stream_then(1, "hang"))
    client = shop.client(shop.key(user.user_id)["key"])
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], stream=True,
                                            max_tokens=1500)
    next(iter(stream))  # the call is upstream, its hold open (the 1500-token budget)
    held = shop.held(user.user_id)
    assert 1500 <= held < 2000
    event = refunded(order, "pi_flight", 200)
    assert webhook(shop, event, signed(fake, event)).json()["verdict"] == "refunded"
    assert shop.balance(user.user_id) == 0 and shop.held(user.user_id) == held  # the hold is whole
    assert Decimal(str(user.ok("GET", f"/api/payments/{order['id']}")["owed"])) == held
    stream.close()  # the client leaves: it pays what it got (at least 100), the rest of the hold is released
    wait_until(lambda: shop.held(user.user_id) == 0, 30, "the hold settled")
    [row] = shop.usage(user.user_id)
    charged = Decimal(str(row["credits"]))
    assert 100 <= charged < held
    # The release paid the debt first: what the call cost is all that is still owed.
    assert shop.balance(user.user_id) == 0
    assert owed(shop, user.user_id) == charged
    assert shown_owed(shop, user) == [charged] * 3  # to the micro-credit
    shop.admin("POST", f"/admin/v1/users/{user.user_id}/topups", {"credits": 300, "reference": f"f-{order['id']}"})
    assert shop.balance(user.user_id) == 300 - charged and owed(shop, user.user_id) == 0
    assert shown_owed(shop, user) == [Decimal(0)] * 3
    assert shop.verify()["ok"]


def test_a_refund_takes_the_inviters_reward_back_in_proportion_once(shop: World, fake: FakePayments) -> None:
    inviter = ConsoleUser(shop.url).register()
    code = inviter.ok("GET", "/api/invite")["code"]
    invitee = ConsoleUser(shop.url)
    reply = invitee.ok("POST", "/api/register", {"email": invitee.email, "password": PASSWORD, "invite": code},
                       expect=201)
    invitee.csrf, invitee.user_id = reply["csrf_token"], reply["account"]["user_id"]
    order = stripe_order(shop, fake, invitee, 2)  # 2000 credits; the inviter's 10%: 200
    payload = completed(order, "pi_invited")
    assert webhook(shop, payload, signed(fake, payload)).json()["verdict"] == "credited"
    assert shop.balance(inviter.user_id) == 200
    model, _ = shop.served_model(prompt=1, completion=1, min_charge=150)
    shop.client(shop.key(inviter.user_id)["key"]).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}])
    assert shop.balance(inviter.user_id) == 50

    half = refunded(order, "pi_invited", 100)
    with ThreadPoolExecutor(5) as pool:  # the same refund five times at once: reversed once
        verdicts = sorted(pool.map(lambda _: webhook(shop, half, signed(fake, half)).json()["verdict"], range(5)))
    assert verdicts == ["duplicate"] * 4 + ["refunded"]
    assert shop.balance(invitee.user_id) == 1000
    assert shop.balance(inviter.user_id) == 0 and owed(shop, inviter.user_id) == 50  # 100 back: 50 taken, 50 owed
    full = refunded(order, "pi_invited", 200)
    assert webhook(shop, full, signed(fake, full)).json()["verdict"] == "refunded"
    assert shop.balance(invitee.user_id) == 0 and owed(shop, inviter.user_id) == 150
    assert inviter.ok("GET", "/api/invite")["earned"] == 0
    shop.admin("POST", f"/admin/v1/users/{inviter.user_id}/topups", {"credits": 200, "reference": f"i-{order['id']}"})
    assert shop.balance(inviter.user_id) == 50 and owed(shop, inviter.user_id) == 0
    assert shop.verify()["ok"]


def test_alipay_trade_closed_is_acknowledged_and_closes_the_order(shop: World, fake: FakePayments) -> None:
    """A verified TRADE_CLOSED is Alipay's last word on the trade: `success` (else Alipay sends
    it again for about 25 hours), nothing credited, the order closed for good. For a paid order
    it means a full refund (Alipay uses the one status for both)."""
    user = ConsoleUser(shop.url).register()
    order = user.ok("POST", "/api/payments", {"provider": "alipay", "amount": 5}, expect=201)
    genuine = alipay_notification(order["id"], "5.00")
    closed = alipay_signed(fake.alipay_key, {**genuine, "trade_status": "TRADE_CLOSED"})
    before = shop.verify()["entries"]
    assert notify(shop, closed) == "success"
    assert notify(shop, closed) == "success"  # again: nothing more
    assert shop.verify()["entries"] == before and shop.balance(user.user_id) == 0
    assert user.ok("GET", f"/api/payments/{order['id']}")["status"] == "closed"
    assert sorted(n["verdict"] for n in kept(shop, order["id"])) == ["closed", "duplicate"]
    # A payment reported after the close (a late retry): answered, never credited.
    assert notify(shop, alipay_signed(fake.alipay_key, genuine)) == "success"
    assert shop.balance(user.user_id) == 0 and admin_order(shop, order["id"])["status"] == "closed"

    paid = user.ok("POST", "/api/payments", {"provider": "alipay", "amount": 5}, expect=201)
    genuine = alipay_notification(paid["id"], "5.00")
    assert notify(shop, alipay_signed(fake.alipay_key, genuine)) == "success"
    assert shop.balance(user.user_id) == 700
    assert notify(shop, alipay_signed(fake.alipay_key, {**genuine, "trade_status": "TRADE_CLOSED"})) == "success"
    assert shop.balance(user.user_id) == 0
    assert user.ok("GET", f"/api/payments/{paid['id']}")["status"] == "refunded"
    assert shop.verify()["ok"]


def test_unverified_notifications_are_bounded_before_they_are_stored(make_stack, mock: MockUpstream,
                                                                     fake: FakePayments) -> None:
    """Anyone can post a notification; each unverified one kept is a row. At most
    CHATKORE_PAYMENT_UNVERIFIED_PER_SOURCE a minute from one address and
    CHATKORE_PAYMENT_UNVERIFIED_PER_MIN in all are kept, counted before storing; the rest are
    answered the same and only counted (a metric). Verified ones are always kept, and credit."""
    env = {**fake.env(PUBLIC_URL), "CHATKORE_SIGNUP_CREDITS": "0", "CHATKORE_TRUSTED_PROXIES": "127.0.0.1",
           "CHATKORE_PAYMENT_UNVERIFIED_PER_SOURCE": "3", "CHATKORE_PAYMENT_UNVERIFIED_PER_MIN": "5"}
    w = World(make_stack(name="payments-throttle", env=env), mock)
    try:
        def stored() -> int:
            with psycopg.connect(w.stack.database_url, autocommit=True) as conn:
                return conn.execute("SELECT count(*) FROM payment_notifications").fetchone()[0]

        def alipay_from(address: str, params: dict[str, str]) -> str:
            resp = requests.post(w.url + "/payments/alipay/notify", data=params, timeout=30,
                                 headers={"X-Forwarded-For": address})
            assert resp.status_code == 200
            return resp.text

        def stripe_from(address: str, payload: bytes, signature: str) -> int:
            return requests.post(w.url + "/payments/stripe/webhook", data=payload, timeout=30,
                                 headers={"X-Forwarded-For": address, "Stripe-Signature": signature}).status_code

        user = ConsoleUser(w.url).register()
        order = user.ok("POST", "/api/payments", {"provider": "alipay", "amount": 1}, expect=201)
        genuine = alipay_notification(order["id"], "1.00")
        forged = alipay_signed(new_key(), genuine)
        start = stored()
        assert [alipay_from("203.0.113.1", forged) for _ in range(5)] == ["failure"] * 5
        assert stored() == start + 3  # that address's three a minute
        payload = completed({"id": order["id"], "amount": 1}, "pi_forged")
        assert [stripe_from("203.0.113.2", payload, "t=1,v1=00") for _ in range(3)] == [400] * 3
        assert stored() == start + 5  # five a minute in all
        assert alipay_from("203.0.113.3", forged) == "failure"
        assert stored() == start + 5
        # Verified notifications are kept whatever the count: a signed mismatch, then the payment.
        assert alipay_from("203.0.113.1", alipay_signed(fake.alipay_key, {**genuine, "app_id": "2021999"})) \
            == "failure"
        assert alipay_from("203.0.113.1", alipay_signed(fake.alipay_key, genuine)) == "success"
        assert stored() == start + 7 and w.balance(user.user_id) == 140
        metrics = requests.get(f"http://127.0.0.1:{w.stack.metrics_ports['billing']}/metrics", timeout=30).text
        dropped = {(s.labels["provider"], s.labels["limit"]): s.value
                   for family in text_string_to_metric_families(metrics)
                   if family.name == "chatkore_payment_notifications_dropped"
                   for s in family.samples if s.name.endswith("_total")}
        assert dropped == {("alipay", "source"): 2, ("stripe", "total"): 1, ("alipay", "total"): 1}
        assert w.verify()["ok"]
    finally:
        w.stack.stop()
