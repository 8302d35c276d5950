"""Issue 15's account pages in Chromium against a stack that mails through a real SMTP server
(aiosmtpd): the verification banner and link, the low-balance alert's form and banner, the usage
filters and their CSV link, the operator's notice on every page (as text, in both languages),
and the password reset and change forms. Screenshots go to tests/artifacts/screenshots/."""
from __future__ import annotations

import csv
import io
import re
import secrets
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Route, expect

from tests.console import PASSWORD, ConsoleUser
from tests.test_mail import Mailbox, mail_env, open_mailbox
from tests.test_web_browser import DESKTOP, PHONE, browser, context, shoot, sign_in  # noqa: F401 (browser: a fixture)
from tests.world import World
from tools.stack import wait_until

NEW_PASSWORD = "another long passphrase"


@pytest.fixture(scope="module")
def inbox() -> Iterator[Mailbox]:
    with open_mailbox() as box:
        yield box


@pytest.fixture(scope="module")
def mailed(make_stack, mock, inbox: Mailbox) -> World:
    stack = make_stack(name="web-accounts", env={
        **mail_env(inbox),
        "CHATKORE_BALANCE_ALERT_INTERVAL_S": "0.3",
    })
    return World(stack, mock)


def link(inbox: Mailbox, email: str, kind: str, index: int = 0) -> str:
    """The path of the index-th `kind` (verify or reset) link mailed to `email`."""
    def found() -> list[str]:
        return re.findall(rf"https://chatkore\.test(/console\?{kind}=[\w-]+)",
                          "\n".join(m.get_content() for m in inbox.to(email)))
    return wait_until(lambda: found()[index:], 30, f"the {kind} mail")[0]


def test_verify_alert_usage_and_notice_in_the_console(browser: Browser, mailed: World,  # noqa: F811
                                                        inbox: Mailbox) -> None:
    model, _ = mailed.served_model(prompt=0.001, completion=0.001, min_charge=30, prefix="gpt-web")
    ctx = context(browser, DESKTOP, mailed.url)
    page = ctx.new_page()
    page.goto("/console")
    email = f"web{secrets.token_hex(3)}@example.com"
    page.click("#tab-register")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("#auth-submit")
    expect(page.locator("#overview-balance")).to_have_text("0.00")
    expect(page.locator("#verify-banner")).to_contain_text(email)
    page.click("#verify-resend")  # a link went out a moment ago: the answer says to wait
    expect(page.locator("#verify-banner")).to_contain_text("wait")
    shoot(page, "console-verify-pending")

    page.goto(link(inbox, email, "verify"))
    expect(page.locator("#verify-result")).to_contain_text("100")
    shoot(page, "console-verified")
    page.click("#verify-continue")
    expect(page.locator("#overview-balance")).to_have_text("100.00")
    expect(page.locator("#verify-banner")).to_have_count(0)

    # The alert: set at 50 in the overview; two calls of 30 take the balance to 40.
    page.fill("#alert-threshold", "50")
    page.click("#alert-save")
    expect(page.locator("#alert-message")).to_contain_text("50")
    user_id = page.evaluate("ck.me.user_id")
    key = mailed.key(user_id, name="web")
    for _ in range(2):
        mailed.client(key["key"]).chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                                          max_tokens=5)
    wait_until(lambda: [m for m in inbox.to(email) if "50" in m.get_content() and "verify=" not in m.get_content()],
               30, "the low-balance mail")
    page.reload()
    expect(page.locator("#low-balance-banner")).to_contain_text("50")
    shoot(page, "console-low-balance")

    # Usage: filtered by model and key, and the CSV link of the same filter has the same rows.
    page.click("#nav-usage")
    expect(page.locator("#usage-body tr")).to_have_count(2)
    page.fill("#usage-model", "no-such-model")
    page.click("#usage-apply")
    expect(page.locator("#usage-body")).to_contain_text("No requests yet.")
    page.fill("#usage-model", model)
    page.select_option("#usage-key", str(key["id"]))
    page.select_option("#usage-status", "complete")
    page.click("#usage-apply")
    expect(page.locator("#usage-body tr[data-request-id]")).to_have_count(2)
    href = page.locator("#usage-csv").get_attribute("href")
    assert href and "format=csv" in href and f"model={model}" in href and f"key_id={key['id']}" in href
    got = page.request.get(href)
    assert got.status == 200 and got.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(got.text(), newline="")))
    shown = page.locator("#usage-body tr[data-request-id]").evaluate_all("rows => rows.map(r => r.dataset.requestId)")
    assert [r["request_id"] for r in rows] == shown and {r["model"] for r in rows} == {model}
    shoot(page, "console-usage-filtered")

    # The operator sets a notice with markup in it: every page shows the very characters, as text.
    mailed.admin("PUT", f"/admin/v1/users/{user_id}/role", {"role": "operator"})
    page.goto("/ops#notice")
    announcement = "<b>维护</b> tonight 22:00 & <img src=x onerror=alert(1)>"
    page.fill("#notice-announcement", announcement)
    page.fill("#notice-contact", "QQ 群 123456")
    page.click("#notice-save")
    expect(page.locator("#notice-message")).to_be_visible()
    shoot(page, "ops-notice")
    page.click("#nav-usage")
    page.fill("#usage-user", str(user_id))
    page.click("#usage-apply")
    expect(page.locator("#ops-usage-body tr[data-request-id]")).to_have_count(2)
    assert "user_id=" in (page.locator("#usage-csv").get_attribute("href") or "")
    shoot(page, "ops-usage")
    for path in ("/", "/chat", "/console", "/pricing", "/docs", "/ops"):
        page.goto(path)
        expect(page.locator("#site-notice-text")).to_have_text(announcement)
        expect(page.locator("#site-notice-contact")).to_have_text("QQ 群 123456")
        assert page.locator("#site-notice b, #site-notice img").count() == 0
    zh = context(browser, PHONE, mailed.url, ctx.storage_state(), locale="zh-CN").new_page()
    zh.goto("/docs")
    expect(zh.locator("#site-notice-text")).to_have_text(announcement)
    expect(zh.locator("#site-notice")).to_contain_text("联系我们")
    shoot(zh, "docs-notice-zh-phone")
    zh.context.close()
    mailed.admin("PUT", "/admin/v1/notice", {"announcement": "", "contact": ""})
    page.goto("/")
    page.wait_for_load_state("networkidle")
    assert page.locator("#site-notice").count() == 0
    ctx.close()


def test_password_reset_and_change_forms(browser: Browser, mailed: World, inbox: Mailbox) -> None:  # noqa: F811
    user = ConsoleUser(mailed.url).register()
    ctx = context(browser, DESKTOP, mailed.url)
    page = ctx.new_page()
    page.goto("/console")
    page.fill("#email", user.email)
    page.click("#forgot")
    expect(page.locator("#auth-form .hint")).not_to_be_empty()
    page.goto(link(inbox, user.email, "reset"))
    page.fill("#reset-password", "short")
    page.click("#reset-submit")  # the browser's own minlength check keeps it on the form
    expect(page.locator("#reset-form")).to_be_visible()
    shoot(page, "console-reset")
    page.fill("#reset-password", NEW_PASSWORD)
    page.click("#reset-submit")
    expect(page.locator("#auth-form")).to_be_visible()
    assert user.call("GET", "/api/me").status_code == 401  # the old session ended
    sign_in(page, user.email, NEW_PASSWORD)

    page.click("#nav-overview")
    page.fill("#pw-current", "not the password")
    page.fill("#pw-new", PASSWORD)
    page.click("#pw-form button[type=submit]")
    expect(page.locator("#pw-message")).to_have_class("error")
    page.fill("#pw-current", NEW_PASSWORD)
    page.fill("#pw-new", PASSWORD)
    page.click("#pw-form button[type=submit]")
    expect(page.locator("#pw-message")).to_have_class("notice")
    shoot(page, "console-password-changed")
    ConsoleUser(mailed.url, email=user.email).login(PASSWORD)
    ctx.close()


def test_a_console_section_is_replaced_at_once_and_a_slower_earlier_render_gives_way(
        browser: Browser, mailed: World) -> None:  # noqa: F811
    """A form on the page is never one a render already under way is about to throw away (typing
    into it was lost: a CI failure of the test above), and a render whose answers come last does
    not replace a later one's section."""
    user = ConsoleUser(mailed.url).register()
    ctx = context(browser, DESKTOP, mailed.url)
    page = ctx.new_page()
    page.goto("/console")
    sign_in(page, user.email, PASSWORD)
    expect(page.locator("#pw-form")).to_be_visible()
    held: list[Route] = []

    def hold(route: Route) -> None:  # the next render's first question waits here; later ones go on
        if held:
            route.continue_()
        else:
            held.append(route)

    page.route("**/api/me", hold)
    with page.expect_request("**/api/me"):
        page.click("#nav-keys")
    expect(page.locator("#pw-form")).to_have_count(0)  # gone while the keys render still waits
    page.click("#nav-overview")
    expect(page.locator("#pw-form")).to_be_visible()
    with page.expect_response("**/api/me"):
        held[0].continue_()  # the keys render's answer, last
    page.fill("#pw-current", "not the password")
    page.fill("#pw-new", NEW_PASSWORD)
    page.click("#pw-form button[type=submit]")
    expect(page.locator("#pw-message")).to_have_class("error")
    expect(page.locator("#nav-overview")).to_have_class("active")
    expect(page.locator("#key-form")).to_have_count(0)
    ctx.close()


# Every page, and the element that shows it rendered (not merely loaded).
PAGES = {
    "home": ("/", "#home-prices"),
    "docs": ("/docs", "#docs-prices"),
    "pricing": ("/pricing", "#pricing-table"),
    "chat": ("/chat", "#prompt"),
    **{f"console-{s}": (f"/console#{s}", "#content h1") for s in ("overview", "topup", "keys", "usage")},
    **{f"ops-{s}": (f"/ops#{s}", "#content h1")
       for s in ("dashboard", "users", "channels", "prices", "codes", "orders", "usage", "notice", "audit")},
}


def test_every_page_in_both_languages_on_a_desktop_and_a_phone(browser: Browser, world: World,  # noqa: F811
                                                                tmp_path) -> None:
    op = ConsoleUser(world.url).register()
    world.admin("PUT", f"/admin/v1/users/{op.user_id}/role", {"role": "operator"})
    order = op.ok("POST", "/api/payments", {"provider": "demo", "amount": 1}, expect=201)
    pages = {**PAGES, "demo-pay": (f"/pay/demo/{order['id']}", "#demo-pay")}
    shots = tmp_path / "screenshots"
    shots.mkdir()
    for locale, lang in (("zh-CN", "zh-CN"), ("en-US", "en")):
        for size, viewport in (("desktop", DESKTOP), ("phone", {"width": 390, "height": 844})):
            ctx = context(browser, viewport, world.url, locale=locale)
            page = ctx.new_page()
            page.goto("/console")
            sign_in(page, op.email)
            for name, (path, main) in pages.items():
                page.goto(path)
                expect(page.locator(main).first).to_be_visible()
                assert page.evaluate("document.documentElement.lang") == lang, name
                page.wait_for_load_state("networkidle")
                page.screenshot(path=str(shots / f"{name}-{lang}-{size}.png"))
                if size == "phone":
                    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
                    assert overflow <= 0, f"{name} ({lang}) is {overflow}px wider than the phone"
            ctx.close()
    made = sorted(p.name for p in shots.iterdir())
    assert len(made) == len(pages) * 4 and all((shots / n).stat().st_size > 1000 for n in made)
