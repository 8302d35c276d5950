"""A console user as a browser would be, over plain HTTP: a cookie jar and the CSRF token."""
from __future__ import annotations

import secrets
from typing import Any

import requests

from tests.world import ISSUED_SECRETS

PASSWORD = "correct horse battery staple"


class ConsoleUser:
    def __init__(self, base_url: str, email: str | None = None) -> None:
        self.url = base_url
        self.email = email or f"u{secrets.token_hex(4)}@example.com"
        self.http = requests.Session()
        self.csrf = ""
        self.user_id = 0
        self.first_key = ""

    def call(self, method: str, path: str, body: Any = None, *, csrf: bool = True,
             headers: dict[str, str] | None = None) -> requests.Response:
        sent = dict(headers or {})
        if csrf and self.csrf:
            sent.setdefault("X-CSRF-Token", self.csrf)
        return self.http.request(method, self.url + path, json=body, headers=sent, timeout=30)

    def ok(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        resp = self.call(method, path, body)
        assert resp.status_code == expect, f"{method} {path}: {resp.status_code} {resp.text}"
        return resp.json() if resp.content else None

    def register(self, password: str = PASSWORD) -> ConsoleUser:
        reply = self.ok("POST", "/api/register", {"email": self.email, "password": password}, expect=201)
        self.csrf, self.user_id = reply["csrf_token"], reply["account"]["user_id"]
        self.first_key = reply["first_key"]
        ISSUED_SECRETS.add(self.first_key)
        return self

    def login(self, password: str = PASSWORD) -> ConsoleUser:
        reply = self.ok("POST", "/api/login", {"email": self.email, "password": password})
        self.csrf, self.user_id = reply["csrf_token"], reply["account"]["user_id"]
        return self

    def me(self) -> dict[str, Any]:
        return self.ok("GET", "/api/me")
