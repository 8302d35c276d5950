"""The optional sign-up captcha: verified server-side against the provider's siteverify (faked
here on loopback) before any account is made; a failed one makes nothing. Only when it is
configured does the console page load the provider's script, and only then does its CSP allow it."""
from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import psycopg
import pytest
import requests
from playwright.sync_api import expect, sync_playwright

from edge.captcha import CaptchaConfig, csp
from edge.pages import HEADERS
from services.common.config import Secret
from tests.console import PASSWORD
from tests.test_web_browser import CHROMIUM, DESKTOP, FLAGS
from tests.world import ISSUED_SECRETS, World

SECRET = "captcha-secret-" + secrets.token_hex(8)
GOOD = "solved-" + secrets.token_hex(8)
ISSUED_SECRETS.add(SECRET)  # never in any log of the run (tests/hostile/test_secrets_in_logs.py)


class Siteverify:
    """A fake provider: `success` only for the GOOD token sent with the right secret."""

    def __init__(self) -> None:
        self.asked: list[dict[str, str]] = []
        box = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers["Content-Length"])).decode()
                form = {k: v[0] for k, v in parse_qs(raw).items()}
                box.asked.append(form)
                ok = form.get("secret") == SECRET and form.get("response") == GOOD
                body = json.dumps({"success": ok, "error-codes": [] if ok else ["invalid-input-response"]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/siteverify"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def siteverify() -> Iterator[Siteverify]:
    fake = Siteverify()
    yield fake
    fake.server.shutdown()


@pytest.fixture(scope="module")
def guarded(make_stack, mock, siteverify: Siteverify) -> World:
    return World(make_stack(name="captcha", env={
        "CHATKORE_CAPTCHA": "turnstile", "CHATKORE_CAPTCHA_SITE_KEY": "0x4AAAAAAA-site-key",
        "CHATKORE_CAPTCHA_SECRET": SECRET, "CHATKORE_CAPTCHA_VERIFY_URL": siteverify.url,
    }), mock)


def _accounts(world: World, email: str) -> int:
    with psycopg.connect(world.stack.database_url) as conn:
        return conn.execute("SELECT count(*) FROM accounts WHERE lower(email) = lower(%s)", (email,)).fetchone()[0]


def _register(world: World, email: str, **extra: object) -> requests.Response:
    return requests.post(world.url + "/api/register", json={"email": email, "password": PASSWORD, **extra},
                         timeout=30, headers={"Accept-Language": "zh-CN"})


def test_a_failed_captcha_makes_no_account(guarded: World, siteverify: Siteverify) -> None:
    email = f"bot{secrets.token_hex(4)}@example.com"
    users_before = len(guarded.admin("GET", "/admin/v1/users?limit=500")["data"])
    for extra in ({}, {"captcha": ""}, {"captcha": 42}, {"captcha": "x" * 5000}, {"captcha": "forged"}):
        refused = _register(guarded, email, **extra)
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["code"] == "captcha_failed" and error["param"] == "captcha"
        assert error["message"] == "人机验证未通过，请重试。"
        assert SECRET not in refused.text
    assert _accounts(guarded, email) == 0
    assert len(guarded.admin("GET", "/admin/v1/users?limit=500")["data"]) == users_before
    # Only a token worth asking about was sent to the provider, with the secret and the address.
    assert [a["response"] for a in siteverify.asked] == ["forged"]
    assert siteverify.asked[0]["secret"] == SECRET and siteverify.asked[0]["remoteip"] == "127.0.0.1"

    made = _register(guarded, email, captcha=GOOD)
    assert made.status_code == 201, made.text
    assert _accounts(guarded, email) == 1 and made.json()["first_key"].startswith("sk-")
    assert guarded.verify()["ok"]
    log = (guarded.stack.log_dir / "edge.log").read_text(errors="replace")
    assert SECRET not in log and GOOD not in log


def test_the_console_loads_the_widget_only_when_configured(guarded: World, world: World) -> None:
    page = requests.get(guarded.url + "/console", timeout=30)
    assert '<meta name="ck-captcha" content="turnstile" data-site-key="0x4AAAAAAA-site-key">' in page.text
    script = "https://challenges.cloudflare.com/turnstile/v0/api.js?render=explicit&amp;onload=ckCaptchaReady"
    assert f'<script src="{script}" async defer></script>' in page.text
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self' https://challenges.cloudflare.com;" in policy
    assert "frame-src https://challenges.cloudflare.com" in policy
    assert SECRET not in page.text
    # Every other page, and every page of a server without a captcha, keeps the strict policy.
    for url in (guarded.url + "/chat", guarded.url + "/", world.url + "/console"):
        other = requests.get(url, timeout=30)
        assert other.headers["Content-Security-Policy"] == HEADERS["Content-Security-Policy"], url
        assert "ck-captcha" not in other.text and "{{captcha}}" not in other.text
    plain = requests.post(world.url + "/api/register", timeout=30,
                          json={"email": f"nocaptcha{secrets.token_hex(4)}@example.com", "password": PASSWORD})
    assert plain.status_code == 201


def test_hcaptcha_policy() -> None:
    cfg = CaptchaConfig("hcaptcha", "site", Secret("s"), "https://api.hcaptcha.com/siteverify")
    policy = csp(HEADERS["Content-Security-Policy"], cfg)
    assert "script-src 'self' https://hcaptcha.com https://*.hcaptcha.com;" in policy
    assert "style-src 'self' https://hcaptcha.com https://*.hcaptcha.com;" in policy
    assert policy.endswith("; frame-src https://hcaptcha.com https://*.hcaptcha.com")
    assert csp(HEADERS["Content-Security-Policy"], None) == HEADERS["Content-Security-Policy"]


# The provider's script, played on the provider's own origin (Playwright answers for it, as the
# machine is offline): the page's CSP must let it load, and the form must send what it answers.
FAKE_TURNSTILE = """
window.turnstile = {
  render(box, opts) {
    const b = document.createElement("button");
    b.type = "button"; b.id = "fake-captcha"; b.textContent = "human";
    b.onclick = () => opts.callback(GOOD_TOKEN);
    box.append(b);
    window.ckRendered = opts.sitekey;
    return "widget-1";
  },
  reset(id) { window.ckResets = (window.ckResets || 0) + 1; },
};
if (window.ckCaptchaReady) window.ckCaptchaReady();
""".replace("GOOD_TOKEN", json.dumps(GOOD))


def test_the_sign_up_form_sends_the_widgets_answer(guarded: World) -> None:
    email = f"human{secrets.token_hex(4)}@example.com"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_context(viewport=DESKTOP, base_url=guarded.url).new_page()
        blocked: list[str] = []
        page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
        page.route("https://challenges.cloudflare.com/**",
                   lambda route: route.fulfill(body=FAKE_TURNSTILE, content_type="text/javascript"))
        page.goto("/console")
        page.click("#tab-register")
        expect(page.locator("#fake-captcha")).to_be_visible()
        assert page.evaluate("window.ckRendered") == "0x4AAAAAAA-site-key"
        page.fill("#email", email)
        page.fill("#password", PASSWORD)
        page.click("#auth-submit")  # not solved yet: refused, nothing made
        expect(page.locator("#auth-form .error")).to_have_text("The captcha was not solved. Please try again.")
        assert page.evaluate("window.ckResets") == 1 and _accounts(guarded, email) == 0
        page.click("#tab-login")
        expect(page.locator("#captcha")).to_be_hidden()
        page.click("#tab-register")
        page.click("#fake-captcha")
        page.click("#auth-submit")
        expect(page.locator("#balance")).to_be_visible()
        assert _accounts(guarded, email) == 1 and blocked == []
        browser.close()
