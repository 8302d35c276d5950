"""Issue 15's accounts: the sign-up bonus on a verified address (once per mailbox, even when its
accounts verify at once), the resend limit, the low-balance mail once per crossing, the usage
log's filters and CSV, and the operator's notice. Real SMTP (aiosmtpd), real PostgreSQL, the
whole stack as processes."""
from __future__ import annotations

import csv
import hashlib
import io
import re
import secrets
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import psycopg
import pytest
import requests

from tests import mock_upstream
from tests.console import ConsoleUser
from tests.test_mail import Mailbox, mail_env, open_mailbox
from tests.world import World
from tools.stack import wait_until

BONUS = Decimal(100)


@pytest.fixture(scope="module")
def inbox() -> Iterator[Mailbox]:
    with open_mailbox() as box:
        yield box


@pytest.fixture(scope="module")
def mailed(make_stack, mock, inbox: Mailbox) -> World:
    stack = make_stack(name="accounts", env={
        **mail_env(inbox),
        "CHATKORE_BALANCE_ALERT_INTERVAL_S": "0.3",
    })
    return World(stack, mock)


def verify_link(mail: Any) -> str:
    found = re.search(r"https://chatkore\.test/console\?verify=([\w-]+)", mail.get_content())
    assert found, mail.get_content()
    return found.group(1)


def link_for(inbox: Mailbox, email: str, index: int = 0) -> str:
    mails = wait_until(lambda: inbox.to(email)[index:], 30, f"mail {index} to {email}")
    return verify_link(mails[0])


def verify(url: str, token: str) -> requests.Response:
    return requests.post(url + "/api/email/verify", json={"token": token}, timeout=30)


def balance(user: ConsoleUser) -> Decimal:
    return Decimal(str(user.me()["balance"]))


def test_bonus_waits_for_the_verified_address_and_comes_once_per_mailbox(mailed: World, inbox: Mailbox) -> None:
    tag = secrets.token_hex(4)
    first = ConsoleUser(mailed.url, email=f"ann.lee.{tag}@gmail.com")
    first.http.headers["Accept-Language"] = "zh-CN,zh;q=0.9"
    first.register()
    me = first.me()
    assert Decimal(str(me["balance"])) == 0 and me["verification_pending"] and not me["email_verified"]
    mail = wait_until(lambda: inbox.to(first.email), 30, "the verification mail")[0]
    assert mail["Subject"] == "验证你的 chatkore 邮箱"
    token = verify_link(mail)
    with psycopg.connect(mailed.stack.database_url) as conn:  # the token is stored only as its hash
        stored = conn.execute("SELECT purpose FROM account_tokens WHERE token_hash = %s",
                              (hashlib.sha256(token.encode()).digest(),)).fetchall()
        assert stored == [("verify",)]
        assert conn.execute("SELECT count(*) FROM account_tokens WHERE convert_to(%s, 'UTF8') = token_hash",
                            (token,)).fetchone()[0] == 0

    done = verify(mailed.url, token)
    assert done.status_code == 200, done.text
    assert done.json() == {"verified": True, "email": first.email, "bonus": 100}
    assert balance(first) == BONUS
    me = first.me()
    assert me["email_verified"] and not me["verification_pending"]
    again = verify(mailed.url, token)  # single use
    assert again.status_code == 400 and again.json()["error"]["code"] == "invalid_token"
    assert balance(first) == BONUS

    # The same mailbox under other spellings: +tag, dots, case, googlemail. Verified, no bonus.
    for spelling in (f"AnnLee.{tag}+farm@gmail.com", f"a.n.n.l.e.e{tag}@googlemail.com"):
        other = ConsoleUser(mailed.url, email=spelling).register()
        assert balance(other) == 0 and other.me()["verification_pending"]
        reply = verify(mailed.url, link_for(inbox, spelling))
        assert reply.status_code == 200 and reply.json()["bonus"] == 0
        assert balance(other) == 0
        assert other.me()["email_verified"] and not other.me()["verification_pending"]
    assert balance(first) == BONUS

    # A link that expired, or one never issued, verifies nothing.
    late = ConsoleUser(mailed.url, email=f"late-{tag}@example.com").register()
    late_token = link_for(inbox, late.email)
    with psycopg.connect(mailed.stack.database_url) as conn:
        conn.execute("UPDATE account_tokens SET expires_at = now() - interval '1 second'"
                     " WHERE account_id = (SELECT id FROM accounts WHERE email = %s)", (late.email,))
    for bad in (late_token, "not-a-token", ""):
        refused = verify(mailed.url, bad)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_token"
    assert balance(late) == 0 and late.me()["verification_pending"]
    assert mailed.verify()["ok"]


def test_simultaneous_verifications_of_one_mailbox_credit_one_bonus(mailed: World, inbox: Mailbox) -> None:
    tag = secrets.token_hex(4)
    spellings = [f"box{tag}+{i}@example.com" for i in range(5)] + [f"Box{tag}@Example.com"]
    users = [ConsoleUser(mailed.url, email=e).register() for e in spellings]
    tokens = [link_for(inbox, u.email) for u in users]
    # The first account's link twice as well: a double click racing the others.
    tokens.append(tokens[0])
    barrier = threading.Barrier(len(tokens))
    replies: list[requests.Response] = [None] * len(tokens)  # type: ignore[list-item]

    def follow(i: int) -> None:
        barrier.wait()
        replies[i] = verify(mailed.url, tokens[i])

    threads = [threading.Thread(target=follow, args=(i,)) for i in range(len(tokens))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [r for r in replies if r.status_code == 200]
    assert len(ok) == len(users), [r.text for r in replies]  # the twin click of one link is refused
    assert [r.status_code for r in replies].count(400) == 1
    assert sorted(r.json()["bonus"] for r in ok) == [0] * (len(users) - 1) + [100]
    assert sum(balance(u) for u in users) == BONUS
    assert all(u.me()["email_verified"] for u in users)
    with psycopg.connect(mailed.stack.database_url) as conn:
        grants = conn.execute("SELECT count(*) FROM topups WHERE reference LIKE 'signup-bonus:%%'"
                              " AND user_id = ANY(%s)", ([u.user_id for u in users],)).fetchone()[0]
    assert grants == 1
    assert mailed.verify()["ok"]


def test_a_verification_while_billing_is_down_credits_once_when_followed_again(mailed: World,
                                                                              inbox: Mailbox) -> None:
    """The link is not used up by a verification billing could not answer: followed again, it
    brings the bonus once; followed a third time, nothing."""
    user = ConsoleUser(mailed.url, email=f"fault-{secrets.token_hex(4)}@example.com").register()
    token = link_for(inbox, user.email)
    mailed.stack.kill("billing")
    try:
        down = verify(mailed.url, token)
        assert down.status_code in (502, 503, 504), down.text
    finally:
        mailed.stack.start_process("billing")
        mailed.stack.wait_healthy(60)
    assert user.me()["verification_pending"] and balance(user) == 0
    again = wait_until(lambda: (r := verify(mailed.url, token)).status_code == 200 and r, 30, "the verification")
    assert again.json()["bonus"] == 100
    assert verify(mailed.url, token).status_code == 400
    assert balance(user) == BONUS
    with psycopg.connect(mailed.stack.database_url) as conn:
        grants = conn.execute("SELECT count(*) FROM ledger WHERE kind = 'grant' AND account = 'available'"
                              " AND user_id = %s", (user.user_id,)).fetchone()[0]
    assert grants == 1
    assert mailed.verify()["ok"]


def test_a_new_link_only_now_and_then_and_never_once_verified(mailed: World, inbox: Mailbox) -> None:
    user = ConsoleUser(mailed.url, email=f"resend-{secrets.token_hex(4)}@example.com").register()
    link_for(inbox, user.email)
    soon = user.call("POST", "/api/email/verify/resend", {})
    assert soon.status_code == 429 and soon.json()["error"]["code"] == "too_many_mails"
    assert int(soon.headers["retry-after"]) >= 1
    assert user.call("POST", "/api/email/verify/resend", {}, csrf=False).status_code == 403
    with psycopg.connect(mailed.stack.database_url) as conn:
        conn.execute("UPDATE account_tokens SET created_at = created_at - interval '2 minutes'"
                     " WHERE account_id = (SELECT id FROM accounts WHERE email = %s)", (user.email,))
    assert user.call("POST", "/api/email/verify/resend", {}).status_code == 202
    second = link_for(inbox, user.email, index=1)
    assert verify(mailed.url, second).json()["bonus"] == 100
    done = user.call("POST", "/api/email/verify/resend", {})
    assert done.status_code == 400 and done.json()["error"]["code"] == "already_verified"
    assert balance(user) == BONUS


def test_without_smtp_the_bonus_comes_at_sign_up(world: World) -> None:
    user = ConsoleUser(world.url).register()
    me = user.me()
    assert Decimal(str(me["balance"])) == BONUS and not me["verification_pending"]


# --- the low-balance alert ---------------------------------------------------------------------


def _spend(client: openai.OpenAI, model: str) -> None:
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5)


def test_low_balance_mail_once_per_crossing(mailed: World, inbox: Mailbox) -> None:
    model, _ = mailed.served_model(prompt=0.001, completion=0.001, min_charge=30)  # every call costs 30
    user = ConsoleUser(mailed.url, email=f"low-{secrets.token_hex(4)}@example.com")
    user.http.headers["Accept-Language"] = "zh-CN"
    user.register()
    mailed.admin("POST", f"/admin/v1/users/{user.user_id}/topups", {"credits": 100})
    witness = ConsoleUser(mailed.url, email=f"witness-{secrets.token_hex(4)}@example.com").register()
    mailed.admin("POST", f"/admin/v1/users/{witness.user_id}/topups", {"credits": 100})
    alerts = lambda who: [m for m in inbox.to(who.email) if "verify=" not in m.get_content()]  # noqa: E731

    bad = user.call("PUT", "/api/alerts", {"threshold": "ten"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "threshold"
    assert user.call("PUT", "/api/alerts", {"threshold": -1}).status_code == 400
    assert user.ok("PUT", "/api/alerts", {"threshold": 60}) == {"threshold": 60, "below": False}
    client = mailed.client(user.first_key)
    _spend(client, model)  # 100 -> 70: above
    _spend(client, model)  # 70 -> 40: crosses
    mail = wait_until(lambda: alerts(user), 30, "the low-balance mail")[0]
    assert mail["Subject"] == "chatkore 余额不足提醒" and "40" in mail.get_content()
    assert user.ok("GET", "/api/alerts") == {"threshold": 60, "below": True}
    _spend(client, model)  # 40 -> 10: still below, no second mail
    # A crossing of the witness after that call: once its mail is here, a check ran after the call.
    witness.ok("PUT", "/api/alerts", {"threshold": 90})
    mailed.client(witness.first_key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    wait_until(lambda: alerts(witness), 30, "the witness's mail")
    assert len(alerts(user)) == 1

    mailed.admin("POST", f"/admin/v1/users/{user.user_id}/topups", {"credits": 100})  # 110: back above, re-armed
    wait_until(lambda: not user.ok("GET", "/api/alerts")["below"], 30, "the alert to re-arm")
    _spend(client, model)  # 110 -> 80
    _spend(client, model)  # 80 -> 50: the second crossing
    wait_until(lambda: alerts(user)[1:], 30, "the second low-balance mail")
    assert len(alerts(user)) == 2
    assert mailed.balance(user.user_id) == Decimal(50)
    assert mailed.verify()["ok"]


# --- the usage log: filters and CSV ---------------------------------------------------------------


def _csv(user_or_http: Any, url: str) -> list[dict[str, str]]:
    resp = user_or_http.get(url, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(resp.content.decode("utf-8"), newline="")))


def _as_text(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{k: "" if v is None else str(v) for k, v in r.items()} for r in rows]


@pytest.mark.parametrize("prefix", ["=", "+", "-", "@"])
def test_a_csv_cell_a_spreadsheet_would_run_is_quoted_as_text(world: World, prefix: str) -> None:
    """OWASP CSV injection: a text cell starting with = + - @ gets a leading ' (numbers stay numbers)."""
    model, _ = world.served_model(prefix=prefix + "HYPERLINK(1)")  # an operator's model name, shown in usage
    user = ConsoleUser(world.url).register()
    _spend(world.client(user.first_key), model)
    [row] = user.ok("GET", "/api/usage?limit=10")["data"]
    assert row["model"] == model
    for got in (_csv(user.http, f"{world.url}/api/usage?format=csv"),
                _csv(world.http, f"{world.url}/admin/v1/usage?format=csv&user_id={user.user_id}")):
        assert [r["model"] for r in got] == ["'" + model]
        assert got[0]["request_id"] == row["request_id"] and got[0]["prompt_tokens"] == str(row["prompt_tokens"])


def test_usage_filters_and_csv_equal_the_json_rows(world: World) -> None:
    user = ConsoleUser(world.url).register()
    model_a, tag_a = world.served_model()
    model_b, _ = world.served_model()
    second = user.ok("POST", "/api/keys", {"name": 'a "quoted", key'}, expect=201)
    first_client, second_client = world.client(user.first_key), world.client(second["key"])
    for client, model in [(first_client, model_a), (first_client, model_b), (second_client, model_a),
                          (second_client, model_b), (first_client, model_a)]:
        _spend(client, model)
    world.mock.script(tag_a, mock_upstream.fail(500))
    with pytest.raises(openai.APIStatusError):
        _spend(first_client, model_a)
    # A call is settled just after its reply (inference answers first): wait for all six rows.
    def settled() -> list[dict[str, Any]] | None:
        rows = user.ok("GET", "/api/usage?limit=100")["data"]
        return rows if len(rows) == 6 else None

    everything = wait_until(settled, 30, "the six calls' usage rows")
    first_key_id = next(r["key_id"] for r in everything if r["key_id"] != second["id"])
    created = sorted({r["created"] for r in everything})

    filters = {
        "": everything,
        f"model={model_a}": [r for r in everything if r["model"] == model_a],
        f"key_id={second['id']}": [r for r in everything if r["key_id"] == second["id"]],
        "status=complete": [r for r in everything if r["status"] == "complete"],
        "status=upstream_error": [r for r in everything if r["status"] == "upstream_error"],
        f"model={model_a}&key_id={first_key_id}&status=complete":
            [r for r in everything if r["model"] == model_a and r["key_id"] == first_key_id
             and r["status"] == "complete"],
        # `created` is rounded to the second: a second either side holds every call.
        f"since={created[0] - 1}&until={created[-1] + 2}": everything,
        f"until={created[0] - 1}": [],
        f"since={created[-1] + 2}": [],
    }
    for query, expected in filters.items():
        rows = user.ok("GET", f"/api/usage?limit=100&{query}")["data"]
        assert rows == expected, query
        assert _csv(user.http, f"{world.url}/api/usage?format=csv&{query}") == _as_text(rows), query
    assert len(filters[f"model={model_a}"]) == 4 and len(filters["status=upstream_error"]) == 1

    # Pages by cursor give the same rows, in the same order.
    paged, query = [], "limit=2"
    while True:
        page = user.ok("GET", f"/api/usage?{query}")
        paged += page["data"]
        if "next_cursor" not in page:
            break
        query = f"limit=2&cursor={page['next_cursor']}"
    assert paged == everything
    assert _as_text(everything[:4]) == _csv(user.http, f"{world.url}/api/usage?format=csv&limit=4")

    # Another user sees none of these; the operators' listing sees them all, CSV alike.
    assert ConsoleUser(world.url).register().ok("GET", "/api/usage?format=json")["data"] == []
    admin_rows = world.admin("GET", f"/admin/v1/usage?user_id={user.user_id}&limit=100")["data"]
    assert [r["request_id"] for r in admin_rows] == [r["request_id"] for r in everything]
    assert all(r["user_id"] == user.user_id for r in admin_rows)
    assert _csv(world.http, f"{world.url}/admin/v1/usage?format=csv&user_id={user.user_id}") == _as_text(admin_rows)
    by_model = world.admin("GET", f"/admin/v1/usage?model={model_b}&limit=100")["data"]
    assert len(by_model) == 2 and {r["model"] for r in by_model} == {model_b}

    for query, param in [("status=not%20a%20status", "status"), ("since=yesterday", "since"),
                         (f"since={created[-1]}&until={created[0]}", "since"), ("format=xml", "format"),
                         ("key_id=-1", "key_id"), ("cursor=nonsense", "cursor"),
                         ("cursor=99999999999999999999:r", "cursor"), ("limit=x", "limit")]:
        refused = user.call("GET", f"/api/usage?{query}")
        assert refused.status_code == 400 and refused.json()["error"]["param"] == param, (query, refused.text)
    zh = user.call("GET", "/api/usage?format=xml", headers={"Accept-Language": "zh-CN"})
    assert zh.status_code == 400 and re.search(r"[\u4e00-\u9fff]", zh.json()["error"]["message"])


# --- the operator's notice -------------------------------------------------------------------------


def test_the_operators_notice_is_plain_text_for_everyone(world: World) -> None:
    try:
        html = '<img src=x onerror="alert(1)"><b>维护通知</b>\x07 tonight\n second line'
        saved = world.admin("PUT", "/admin/v1/notice", {"announcement": html, "contact": "QQ群 123456\n<script>"})
        assert saved["announcement"] == '<img src=x onerror="alert(1)"><b>维护通知</b> tonight\n second line'
        assert saved["contact"] == "QQ群 123456<script>"
        public = requests.get(world.url + "/api/notice", timeout=30)
        assert public.status_code == 200
        assert public.json()["announcement"] == saved["announcement"] and public.json()["contact"] == saved["contact"]
        assert public.headers["Content-Type"].startswith("application/json")

        too_long = world.admin("PUT", "/admin/v1/notice", {"announcement": "x" * 2001}, expect=400)
        assert too_long["error"]["param"] == "announcement"
        assert world.admin("PUT", "/admin/v1/notice", {"contact": 5}, expect=400)["error"]["param"] == "contact"
        assert requests.get(world.url + "/api/notice", timeout=30).json()["announcement"] == saved["announcement"]
        user = ConsoleUser(world.url).register()
        refused = user.call("PUT", "/admin/v1/notice", {"announcement": "mine"})
        assert refused.status_code == 403
        world.admin("PUT", "/admin/v1/notice", {"announcement": "", "contact": ""})
        assert requests.get(world.url + "/api/notice", timeout=30).json()["announcement"] == ""
    finally:  # the shared world's pages show no notice to the other tests
        world.admin("PUT", "/admin/v1/notice", {"announcement": "", "contact": ""})
