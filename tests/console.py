"""A console user as a browser would be, over plain HTTP: a cookie jar and the CSRF token."""
from __future__ import annotations

import secrets
from typing import Any

import requests

from tests.world import ISSUED_SECRETS

PASSWORD = "correct horse battery staple"
SESSION_COOKIE = "ck_session"
# Fields of a console call that carry a password: once a call with one succeeds, the password is
# an account's, and joins the secrets no log may hold (tests/hostile/test_secrets_in_logs.py).
PASSWORD_FIELDS = ("password", "new_password", "current_password")


class ConsoleUser:
    def __init__(self, base_url: str, email: str | None = None) -> None:
        self.url = base_url
        self.email = email or f"u{secrets.token_hex(4)}@example.com"
        self.http = requests.Session()
        self.csrf = ""
        self.user_id = 0
        self.first_key = ""
        self.password = ""
        self.session_cookies: set[str] = set()  # every session cookie this user was given

    def call(self, method: str, path: str, body: Any = None, *, csrf: bool = True,
             headers: dict[str, str] | None = None) -> requests.Response:
        sent = dict(headers or {})
        if csrf and self.csrf:
            sent.setdefault("X-CSRF-Token", self.csrf)
        resp = self.http.request(method, self.url + path, json=body, headers=sent, timeout=30)
        self._remember_secrets(body, resp)
        return resp

    def _remember_secrets(self, body: Any, resp: requests.Response) -> None:
        """The console's secrets: the session cookie and CSRF token it hands out, the keys the key
        form makes, and the passwords of calls that succeeded."""
        cookie = self.http.cookies.get(SESSION_COOKIE)
        if cookie:
            ISSUED_SECRETS.add(cookie)
            self.session_cookies.add(cookie)
        if resp.status_code >= 300:
            return
        if isinstance(body, dict):
            ISSUED_SECRETS.update(body[f] for f in PASSWORD_FIELDS
                                  if isinstance(body.get(f), str) and len(body[f]) >= 12)
        try:
            answer = resp.json()
        except ValueError:
            return
        if isinstance(answer, dict):
            for field in ("key", "first_key", "csrf_token"):
                if isinstance(answer.get(field), str) and len(answer[field]) >= 16:
                    ISSUED_SECRETS.add(answer[field])

    def ok(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        resp = self.call(method, path, body)
        assert resp.status_code == expect, f"{method} {path}: {resp.status_code} {resp.text}"
        return resp.json() if resp.content else None

    def register(self, password: str = PASSWORD) -> ConsoleUser:
        reply = self.ok("POST", "/api/register", {"email": self.email, "password": password}, expect=201)
        self.password = password
        self.csrf, self.user_id = reply["csrf_token"], reply["account"]["user_id"]
        self.first_key = reply["first_key"]
        ISSUED_SECRETS.add(self.first_key)
        return self

    def login(self, password: str = PASSWORD) -> ConsoleUser:
        reply = self.ok("POST", "/api/login", {"email": self.email, "password": password})
        self.password = password
        self.csrf, self.user_id = reply["csrf_token"], reply["account"]["user_id"]
        return self

    def me(self) -> dict[str, Any]:
        return self.ok("GET", "/api/me")
