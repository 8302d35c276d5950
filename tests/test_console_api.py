"""The console's own API (/api/...) and the operator's session on /admin/v1: sign-up, sessions,
CSRF, and that no session reaches another user's data or the operator's calls."""
from __future__ import annotations

import json
import secrets
from decimal import Decimal

import psycopg
import requests

from tests import openai_tokens
from tests.console import PASSWORD, ConsoleUser
from tests.mock_upstream import fail
from tests.world import ISSUED_SECRETS, World
from tools.stack import wait_until


def _charge(said: str) -> tuple[int, int, Decimal]:
    """(prompt, completion, credits) of a gpt-3.5-turbo chat of one user message `said`, as the
    mock upstream answers it ("This is a test! You said: ..."), at the seeded prices of 1.5 and 2
    credits per 1,000 prompt and completion tokens (migrations/0001_init.sql)."""
    prompt = openai_tokens.chat_prompt_tokens([{"role": "user", "content": said}], "gpt-3.5-turbo")
    completion = openai_tokens.text_tokens(f"This is a test! You said: {said}", "gpt-3.5-turbo")
    return prompt, completion, (prompt * Decimal("1.5") + completion * 2) / 1000


def operator(world: World) -> ConsoleUser:
    """A console account made operator with the admin key (how the first one is made)."""
    user = ConsoleUser(world.url).register()
    world.admin("PUT", f"/admin/v1/users/{user.user_id}/role", {"role": "operator"})
    return user


def test_register_gives_100_credits_and_a_safe_cookie(world: World) -> None:
    user = ConsoleUser(world.url)
    resp = user.http.post(world.url + "/api/register", json={"email": user.email, "password": PASSWORD}, timeout=30)
    assert resp.status_code == 201, resp.text
    cookie = resp.headers["Set-Cookie"]
    assert "ck_session=" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # plain http here; behind https it is Secure (next test)
    user.csrf = resp.json()["csrf_token"]
    me = user.me()
    assert me["email"] == user.email and me["balance"] == 100 and me["role"] == "user"
    assert world.balance(me["user_id"]) == 100
    # The password is stored as an argon2id hash, never as itself.
    with psycopg.connect(world.stack.database_url) as conn:
        stored = conn.execute("SELECT password_hash FROM accounts WHERE user_id = %s", (me["user_id"],)).fetchone()[0]
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


def test_cookie_is_secure_behind_https(world: World) -> None:
    user = ConsoleUser(world.url).register()
    resp = requests.post(world.url + "/api/login", json={"email": user.email, "password": PASSWORD},
                         headers={"X-Forwarded-Proto": "https"}, timeout=30)
    assert resp.status_code == 200 and "Secure" in resp.headers["Set-Cookie"]


def test_register_and_login_refusals(world: World) -> None:
    user = ConsoleUser(world.url).register()
    again = ConsoleUser(world.url, email=user.email.upper())
    resp = again.call("POST", "/api/register", {"email": again.email, "password": PASSWORD})
    assert resp.status_code == 409 and resp.json()["error"]["param"] == "email"
    for body, param in (({"email": "not-an-email", "password": PASSWORD}, "email"),
                        ({"email": "a@b.co", "password": "short"}, "password"),
                        ({"email": "a@b.co"}, "password")):
        resp = ConsoleUser(world.url).call("POST", "/api/register", body)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == param, resp.text
    # Spellings that would make a second bonus for one mailbox: refused by name, no account made.
    before = world.verify()["users"]
    for email, code in (('"a.b"@gmail.com', "email_quoted_local_part"),
                        ("a.b@gmail.com.", "email_domain_trailing_dot"),
                        ("\u00e4.b@gmail.com", "email_non_ascii_local_part")):
        resp = ConsoleUser(world.url).call("POST", "/api/register", {"email": email, "password": PASSWORD})
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["code"] == code and resp.json()["error"]["param"] == "email", resp.text
    assert world.verify()["users"] == before
    # An internationalised domain is stored in IDNA, and signs in spelled either way.
    tag = secrets.token_hex(4)
    idn = ConsoleUser(world.url, email=f"ann{tag}@b\u00fccher.example").register()
    assert idn.me()["email"] == f"ann{tag}@xn--bcher-kva.example"
    ConsoleUser(world.url, email=f"ann{tag}@xn--bcher-kva.example").login()
    wrong = ConsoleUser(world.url, email=user.email).call("POST", "/api/login",
                                                          {"email": user.email, "password": "wrong password"})
    nobody = ConsoleUser(world.url).call("POST", "/api/login", {"email": "nobody@example.com", "password": PASSWORD})
    assert wrong.status_code == nobody.status_code == 401
    assert wrong.json()["error"]["message"] == nobody.json()["error"]["message"]  # says nothing about which
    assert "Set-Cookie" not in wrong.headers
    # Logging in by any case of the email works, and sign-out ends the session.
    ConsoleUser(world.url, email=user.email.upper()).login()
    user.ok("POST", "/api/logout", expect=204)
    assert user.call("GET", "/api/me").status_code == 401


def test_no_page_data_without_a_session(world: World) -> None:
    anon = ConsoleUser(world.url)
    forged = ConsoleUser(world.url)
    forged.http.cookies.set("ck_session", "forged-token")
    for who in (anon, forged):
        for method, path in (("GET", "/api/me"), ("GET", "/api/keys"), ("POST", "/api/keys"), ("GET", "/api/usage"),
                             ("GET", "/api/spend"), ("POST", "/api/redeem"), ("GET", "/api/models"),
                             ("POST", "/api/chat/completions"), ("DELETE", "/api/keys/1"), ("POST", "/api/logout")):
            resp = who.call(method, path, {})
            assert resp.status_code == 401, f"{method} {path}: {resp.status_code}"
            assert resp.json()["error"]["code"] in ("session_required", "invalid_api_key")
    # The operator page itself sends anyone without an operator session to sign in.
    resp = anon.http.get(world.url + "/ops", allow_redirects=False, timeout=10)
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/console")


def test_csrf_is_required_for_every_change(world: World) -> None:
    user = ConsoleUser(world.url).register()
    for headers in ({}, {"X-CSRF-Token": "wrong"}):
        resp = user.call("POST", "/api/keys", {"name": "x"}, csrf=False, headers=headers)
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "csrf_failed"
    resp = user.call("POST", "/api/keys", {"name": "x"}, headers={"Origin": "https://evil.example"})
    assert resp.status_code == 403
    resp = user.call("POST", "/api/login", {"email": user.email, "password": PASSWORD},
                     headers={"Origin": "https://evil.example"})
    assert resp.status_code == 403  # no login CSRF either
    assert [k["name"] for k in user.ok("GET", "/api/keys")["data"]] == ["first key"]  # nothing was made
    created = user.ok("POST", "/api/keys", {"name": "laptop"}, expect=201)
    assert created["key"].startswith("sk-") and created["name"] == "laptop"
    # Another user's CSRF token does not work with this session.
    other = ConsoleUser(world.url).register()
    resp = user.call("POST", "/api/keys", {"name": "y"}, csrf=False, headers={"X-CSRF-Token": other.csrf})
    assert resp.status_code == 403


def test_no_session_reaches_another_users_keys_or_usage(world: World) -> None:
    alice, bob = ConsoleUser(world.url).register(), ConsoleUser(world.url).register()
    key = alice.ok("POST", "/api/keys", {"name": "alice's"}, expect=201)
    reply = world.client(key["key"]).chat.completions.with_raw_response.create(
        model="gpt-3.5-turbo", messages=[{"role": "user", "content": "hi"}])
    request_id = reply.headers["x-request-id"]
    # Bob cannot revoke Alice's key: it answers as if it did not exist, and it still works.
    resp = bob.call("DELETE", f"/api/keys/{key['id']}")
    assert resp.status_code == 404
    assert world.client(key["key"]).models.list().data
    assert key["id"] not in [k["id"] for k in bob.ok("GET", "/api/keys")["data"]]
    # Bob sees none of Alice's usage, even naming her request id or her user id.
    assert bob.ok("GET", f"/api/usage?request_id={request_id}")["data"] == []
    assert bob.ok("GET", f"/api/usage?user_id={alice.user_id}")["data"] == []
    rows = alice.ok("GET", f"/api/usage?request_id={request_id}")["data"]
    assert len(rows) == 1 and rows[0]["key_id"] == key["id"]
    assert Decimal(str(rows[0]["credits"])) == _charge("hi")[2]
    # Alice revokes her own key; it stops working.
    alice.ok("DELETE", f"/api/keys/{key['id']}", expect=204)
    wait_until(lambda: requests.get(world.url + "/v1/models", headers={"Authorization": f"Bearer {key['key']}"},
                                    timeout=5).status_code == 401, 5, "the revoked key to stop working")


def test_normal_user_cannot_use_the_admin_api(world: World) -> None:
    user = ConsoleUser(world.url).register()
    for method, path, body in (("GET", "/admin/v1/users", None), ("GET", "/admin/v1/channels", None),
                               ("POST", "/admin/v1/redeem-codes", {"credits": 5, "count": 1}),
                               ("POST", f"/admin/v1/users/{user.user_id}/topups", {"credits": 1000}),
                               ("PUT", f"/admin/v1/users/{user.user_id}/role", {"role": "operator"})):
        resp = user.call(method, path, body)
        assert resp.status_code == 403, f"{method} {path}: {resp.status_code}"
        assert resp.json()["error"]["code"] == "operator_required"
    assert user.me()["balance"] == 100 and user.me()["role"] == "user"
    resp = user.http.get(world.url + "/ops", allow_redirects=False, timeout=10)
    assert resp.status_code == 302


def test_operator_session_uses_the_admin_api(world: World) -> None:
    op = operator(world)
    target = ConsoleUser(world.url).register()
    found = op.ok("GET", f"/admin/v1/users?q={target.email[:6]}")["data"]
    assert [u["email"] for u in found] == [target.email] and found[0]["role"] == "user"
    # Changes need the CSRF token here too.
    assert op.call("POST", f"/admin/v1/users/{target.user_id}/topups", {"credits": 5}, csrf=False).status_code == 403
    assert op.ok("POST", f"/admin/v1/users/{target.user_id}/topups", {"credits": 5})["balance"] == 105
    assert op.http.get(world.url + "/ops", allow_redirects=False, timeout=10).status_code == 200
    # Disabling a user ends its sessions and its keys at once.
    key = target.ok("POST", "/api/keys", {"name": "k"}, expect=201)["key"]
    op.ok("PATCH", f"/admin/v1/users/{target.user_id}", {"disabled": True})
    assert target.call("GET", "/api/me").status_code == 401
    wait_until(lambda: requests.get(world.url + "/v1/models", headers={"Authorization": f"Bearer {key}"},
                                    timeout=5).status_code == 401, 5, "the disabled user's key to stop working")
    assert ConsoleUser(world.url, email=target.email).call(
        "POST", "/api/login", {"email": target.email, "password": PASSWORD}).status_code == 401
    op.ok("PATCH", f"/admin/v1/users/{target.user_id}", {"disabled": False})
    assert target.me()["balance"] == 105


def test_redeem_a_code_once(world: World) -> None:
    code = world.admin("POST", "/admin/v1/redeem-codes", {"credits": 7.5, "count": 2}, expect=201)["codes"][0]
    user = ConsoleUser(world.url).register()
    assert user.ok("POST", "/api/redeem", {"code": code})["balance"] == 107.5
    resp = user.call("POST", "/api/redeem", {"code": code})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_redeem_code"
    assert ConsoleUser(world.url).register().call("POST", "/api/redeem", {"code": code}).status_code == 400
    assert user.me()["balance"] == 107.5


def test_chat_page_spends_through_the_relay(world: World) -> None:
    user = ConsoleUser(world.url).register()
    models = [m["id"] for m in user.ok("GET", "/api/models")["data"]]
    assert "gpt-3.5-turbo" in models
    body = {"model": "gpt-3.5-turbo", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "hello"}]}
    assert user.call("POST", "/api/chat/completions", body, csrf=False).status_code == 403
    resp = user.call("POST", "/api/chat/completions", body)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    prompt, completion, credits = _charge("hello")
    assert text == "This is a test! You said: hello"
    assert (chunks[-1]["usage"]["prompt_tokens"], chunks[-1]["usage"]["completion_tokens"]) == (prompt, completion)
    rows = user.ok("GET", f"/api/usage?request_id={resp.headers['x-request-id']}")["data"]
    assert len(rows) == 1 and rows[0]["status"] == "complete" and Decimal(str(rows[0]["credits"])) == credits
    assert user.me()["balance"] == 100 - rows[0]["credits"]
    # Its key is the user's own "chat page" key: listed, but neither revocable nor usable as a bearer.
    web = [k for k in user.ok("GET", "/api/keys")["data"] if k["web"]]
    assert len(web) == 1 and web[0]["id"] == rows[0]["key_id"]
    assert user.call("DELETE", f"/api/keys/{web[0]['id']}").status_code == 404
    # Bad input is refused like on /v1, and costs nothing.
    bad = user.call("POST", "/api/chat/completions", {"model": "gpt-3.5-turbo", "messages": []})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"
    assert user.me()["balance"] == 100 - rows[0]["credits"]


def test_operator_dashboard_and_channel_test(world: World) -> None:
    op = operator(world)
    tenant = world.tenant()

    def totals() -> tuple[int, int, int, Decimal]:
        """gpt-4o-mini's settled calls of the last two hours, in every hour's bucket."""
        rows = [s for s in op.ok("GET", "/admin/v1/stats?hours=2&bucket=3600")["data"] if s["model"] == "gpt-4o-mini"]
        return (sum(s["requests"] for s in rows), sum(s["prompt_tokens"] for s in rows),
                sum(s["completion_tokens"] for s in rows), sum((Decimal(str(s["credits"])) for s in rows), Decimal(0)))

    before = totals()  # the shared stack's other calls of the model, if any
    tenant.client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    prompt = openai_tokens.chat_prompt_tokens([{"role": "user", "content": "hi"}], "gpt-4o-mini")
    completion = openai_tokens.text_tokens("This is a test! You said: hi", "gpt-4o-mini")
    # gpt-4o-mini's seeded prices: 0.15 and 0.6 credits per 1,000 prompt and completion tokens.
    credits = (prompt * Decimal("0.15") + completion * Decimal("0.6")) / 1000
    expected = (before[0] + 1, before[1] + prompt, before[2] + completion, before[3] + credits)
    # The call is settled just after its reply (inference answers first): wait until it counts.
    wait_until(lambda: totals()[0] == before[0] + 1, 30, "the call in the stats")
    assert totals() == expected
    channel_id, tag = world.channel(["gpt-4o-mini"])
    result = op.ok("POST", f"/admin/v1/channels/{channel_id}/test", {})
    assert result["ok"] is True and result["latency_ms"] > 0 and result["model"] == "gpt-4o-mini"
    assert world.mock.received(tag)[-1].body["max_tokens"] <= 5  # a tiny request
    world.mock.always(tag, fail(401, "bad key sk-upstream-leak"))
    result = op.ok("POST", f"/admin/v1/channels/{channel_id}/test", {})
    assert result["ok"] is False and "sk-upstream-leak" not in json.dumps(result)
    world.admin("DELETE", f"/admin/v1/channels/{channel_id}", expect=204)


def test_registration_failing_half_way_resumes_without_double_credit(world: World) -> None:
    """Billing down during sign-up: the account cannot sign in; signing up again finishes it with 100 credits."""
    stack = world.stack  # the shared stack: its billing is killed, then started again
    stack.kill("billing")
    try:
        user = ConsoleUser(stack.url)
        resp = user.call("POST", "/api/register", {"email": user.email, "password": PASSWORD})
        assert resp.status_code in (502, 503, 504), resp.text
        resp = user.call("POST", "/api/login", {"email": user.email, "password": PASSWORD})
        assert resp.status_code == 401  # half made: no way in
    finally:
        stack.start_process("billing")
        stack.wait_healthy(60)
    user.register()
    assert user.me()["balance"] == 100
    with psycopg.connect(stack.database_url) as conn:
        users = conn.execute("SELECT count(*) FROM users WHERE name = %s", (user.email,)).fetchone()[0]
        grants = conn.execute("SELECT count(*) FROM ledger WHERE kind = 'grant' AND user_id = %s",
                              (user.user_id,)).fetchone()[0]
    assert users == 1 and grants == 1
    assert stack.admin("GET", "/admin/v1/ledger/verify")["ok"]


def test_api_errors_speak_the_users_language_and_v1_stays_english(world: World) -> None:
    user = ConsoleUser(world.url).register()
    zh = {"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"}
    wrong = requests.post(world.url + "/api/login", json={"email": user.email, "password": "wrong password"},
                          headers=zh, timeout=30)
    assert wrong.status_code == 401
    assert wrong.json()["error"] == {"message": "邮箱或密码错误。", "type": "invalid_request_error", "param": None,
                                     "code": "invalid_credentials"}
    taken = requests.post(world.url + "/api/register", json={"email": user.email, "password": PASSWORD},
                          headers=zh, timeout=30)
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "email_taken"
    assert taken.json()["error"]["message"] == "该邮箱已注册，请直接登录。"
    # The switch's cookie wins over the browser's languages.
    chosen = requests.post(world.url + "/api/login", json={"email": user.email, "password": "wrong password"},
                           headers=zh, cookies={"ck_lang": "en"}, timeout=30)
    assert chosen.json()["error"]["message"] == "Incorrect email or password."
    # SDKs and tools read /v1 errors: OpenAI's English, whatever the language.
    v1 = requests.get(world.url + "/v1/models", headers={**zh, "Authorization": "Bearer sk-nope"}, timeout=30)
    assert v1.status_code == 401 and v1.json()["error"]["code"] == "invalid_api_key"
    assert v1.json()["error"]["message"].isascii()


def test_sign_up_answers_a_first_key_once_and_the_key_form_sets_every_limit(world: World) -> None:
    user = ConsoleUser(world.url).register()
    assert user.first_key.startswith("sk-")
    models = world.client(user.first_key).models.list()
    assert "gpt-3.5-turbo" in {m.id for m in models.data}
    listed = user.ok("GET", "/api/keys")["data"]
    first = [k for k in listed if not k["web"]]
    assert len(first) == 1 and first[0]["name"] == "first key" and user.first_key.endswith(first[0]["hint"][-4:])
    # Shown once: nothing the session can read carries it again.
    for path in ("/api/keys", "/api/me"):
        assert user.first_key not in user.call("GET", path).text
    made = user.ok("POST", "/api/keys", {"name": "limited", "models": ["gpt-4o-mini"], "rpm": 3, "tpm": 5000,
                                         "ips": ["10.0.0.0/8"], "expires_at": "2099-01-01T00:00:00Z",
                                         "credit_limit": 2.5}, expect=201)
    ISSUED_SECRETS.add(made["key"])
    assert (made["models"], made["rpm"], made["tpm"], made["ips"], made["credit_limit"]) == (
        ["gpt-4o-mini"], 3, 5000, ["10.0.0.0/8"], 2.5)
    assert made["expires_at"] == 4070908800
    bad = user.call("POST", "/api/keys", {"name": "x", "ips": ["not a network"]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "ips"
    assert len([k for k in user.ok("GET", "/api/keys")["data"] if not k["web"]]) == 2
