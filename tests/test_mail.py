"""Accounts that can be recovered, over real mail: a real SMTP server (aiosmtpd) on loopback
receives what auth sends; the reset link is followed as a user would, and works once, for an
hour; a password change needs the current one; both end the other sessions. Without SMTP the
mail is written to auth's log."""
from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes, policy
from email.message import EmailMessage

import psycopg
import pytest
import requests
from aiosmtpd.controller import Controller

from tests.console import PASSWORD, ConsoleUser
from tests.world import World
from tools.stack import Stack, free_port, wait_until

NEW_PASSWORD = "a brand new passphrase"


class Mailbox:
    """What the SMTP server received, parsed."""

    def __init__(self) -> None:
        self.mails: list[EmailMessage] = []
        self.port = 0

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:  # noqa: N802
        self.mails.append(message_from_bytes(envelope.content, policy=policy.default))  # type: ignore[attr-defined]
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.mails if m["To"] == address]

    def resets(self, address: str) -> list[EmailMessage]:
        """Password reset mails only (sign-up also mails a verification link)."""
        return [m for m in self.to(address) if "?reset=" in m.get_content()]


@contextmanager
def open_mailbox() -> Iterator[Mailbox]:
    """A real SMTP server (aiosmtpd) on loopback, keeping what chatkore sends."""
    box = Mailbox()
    box.port = free_port()
    server = Controller(box, hostname="127.0.0.1", port=box.port)
    server.start()
    try:
        yield box
    finally:
        server.stop()


def mail_env(box: Mailbox) -> dict[str, str]:
    """A stack's settings for mailing through `box`."""
    return {
        "CHATKORE_SMTP_URL": f"smtp://127.0.0.1:{box.port}",
        "CHATKORE_MAIL_FROM": "chatkore <noreply@chatkore.test>",
        "CHATKORE_PUBLIC_URL": "https://chatkore.test",
    }


@pytest.fixture(scope="module")
def mailbox() -> Iterator[Mailbox]:
    with open_mailbox() as box:
        yield box


@pytest.fixture(scope="module")
def mailing(make_stack, mailbox: Mailbox) -> Stack:
    return make_stack(name="mail", env=mail_env(mailbox))


def reset_link(mail: EmailMessage) -> str:
    found = re.search(r"https://chatkore\.test/console\?reset=([\w-]+)", mail.get_content())
    assert found, mail.get_content()
    return found.group(1)


def reset(url: str, token: str, password: str = NEW_PASSWORD) -> requests.Response:
    return requests.post(url + "/api/password/reset/confirm", json={"token": token, "password": password}, timeout=30)


def test_reset_by_mail_works_once_for_an_hour_and_ends_every_session(mailing: Stack, mailbox: Mailbox) -> None:
    user = ConsoleUser(mailing.url).register()
    elsewhere = ConsoleUser(mailing.url, email=user.email).login()
    nobody = f"nobody-{user.email}"
    for email in (nobody, user.email):  # the same answer whether or not there is an account
        asked = requests.post(mailing.url + "/api/password/reset", json={"email": email}, timeout=30,
                              headers={"Accept-Language": "zh-CN,zh;q=0.9"})
        assert asked.status_code == 202 and asked.json() == {}
    mail = wait_until(lambda: mailbox.resets(user.email), 30, "the reset mail")[0]
    assert mail["Subject"] == "重置你的 chatkore 密码" and mail["From"] == "chatkore <noreply@chatkore.test>"
    token = reset_link(mail)
    assert mailbox.to(nobody) == []
    with psycopg.connect(mailing.database_url) as conn:  # stored only as its hash
        stored = conn.execute("SELECT count(*) FROM account_tokens WHERE token_hash = %s",
                              (hashlib.sha256(token.encode()).digest(),))
        assert stored.fetchone()[0] == 1

    short = reset(mailing.url, token, "short")
    assert short.status_code == 400 and short.json()["error"]["param"] == "password"
    assert reset(mailing.url, token).status_code == 204
    for session in (user, elsewhere):  # every session of the account ended
        assert session.call("GET", "/api/me").status_code == 401
    assert ConsoleUser(mailing.url, email=user.email).call(
        "POST", "/api/login", {"email": user.email, "password": PASSWORD}).status_code == 401
    ConsoleUser(mailing.url, email=user.email).login(NEW_PASSWORD)
    again = reset(mailing.url, token, "yet another passphrase")
    assert again.status_code == 400 and again.json()["error"]["code"] == "invalid_token"

    # A link older than an hour is refused too.
    requests.post(mailing.url + "/api/password/reset", json={"email": user.email}, timeout=30)
    mail = wait_until(lambda: mailbox.resets(user.email)[1:], 30, "the second reset mail")[0]
    assert mail["Subject"] == "Reset your chatkore password"
    late = reset_link(mail)
    with psycopg.connect(mailing.database_url) as conn:
        conn.execute("UPDATE account_tokens SET expires_at = now() - interval '1 second' WHERE used_at IS NULL")
    expired = reset(mailing.url, late)
    assert expired.status_code == 400 and expired.json()["error"]["code"] == "invalid_token"
    ConsoleUser(mailing.url, email=user.email).login(NEW_PASSWORD)


def test_reset_finds_the_account_however_its_address_is_typed(mailing: Stack, mailbox: Mailbox) -> None:
    """Signed up as user@bücher.example (stored with the domain in IDNA): asking for a reset with
    the Unicode domain, another case or a trailing dot mails that account; an unknown address in
    the same spellings gets the same answer and no mail."""
    name = f"u{secrets.token_hex(4)}"
    stored = f"{name}@xn--bcher-kva.example"
    user = ConsoleUser(mailing.url, email=f"{name}@b\u00fccher.example").register()
    assert user.call("GET", "/api/me").json()["email"] == stored
    typings = [f"{name}@b\u00fccher.example", f"{name}@B\u00dcCHER.Example", f" {name}@xn--BCHER-kva.example. "]
    for n, typed in enumerate(typings, start=1):
        asked = requests.post(mailing.url + "/api/password/reset", json={"email": typed}, timeout=30)
        assert asked.status_code == 202 and asked.json() == {}
        wait_until(lambda n=n: len(mailbox.resets(stored)) >= n, 30, f"the reset mail asked as {typed!r}")
    stranger = f"x{name}"
    for typed in (f"{stranger}@b\u00fccher.example", f"{stranger}@B\u00dcCHER.Example"):
        asked = requests.post(mailing.url + "/api/password/reset", json={"email": typed}, timeout=30)
        assert asked.status_code == 202 and asked.json() == {}  # the same answer: no enumeration
    ConsoleUser(mailing.url, email=user.email).login()  # sign-in finds it typed the same way
    assert reset(mailing.url, reset_link(mailbox.resets(stored)[-1])).status_code == 204
    ConsoleUser(mailing.url, email=f"{name}@B\u00dcCHER.example").login(NEW_PASSWORD)
    assert not [m for m in mailbox.mails if stranger in str(m["To"])]
    assert len(mailbox.resets(stored)) == len(typings)


def test_change_needs_the_current_password_and_ends_the_other_sessions(mailing: Stack) -> None:
    user = ConsoleUser(mailing.url).register()
    elsewhere = ConsoleUser(mailing.url, email=user.email).login()
    wrong = user.call("POST", "/api/password/change", {"current": "not my password", "new": NEW_PASSWORD})
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "wrong_password"
    assert elsewhere.call("GET", "/api/me").status_code == 200  # a refused change changes nothing
    no_csrf = user.call("POST", "/api/password/change", {"current": PASSWORD, "new": NEW_PASSWORD}, csrf=False)
    assert no_csrf.status_code == 403
    changed = user.call("POST", "/api/password/change", {"current": PASSWORD, "new": NEW_PASSWORD})
    assert changed.status_code == 204
    assert user.call("GET", "/api/me").status_code == 200  # this session goes on
    assert elsewhere.call("GET", "/api/me").status_code == 401  # the others end
    ConsoleUser(mailing.url, email=user.email).login(NEW_PASSWORD)


def test_without_smtp_the_mail_goes_to_the_log(world: World) -> None:
    user = ConsoleUser(world.url).register()
    asked = requests.post(world.url + "/api/password/reset", json={"email": user.email}, timeout=30)
    assert asked.status_code == 202
    log = world.stack.log_dir / "auth.log"
    line = wait_until(lambda: [ln for ln in log.read_text(errors="replace").splitlines()
                               if user.email in ln and "reset=" in ln], 30, "the mail in auth's log")
    assert "CHATKORE_SMTP_URL" in line[0]
