"""The running stack as a test sees it, with helpers that set things up through the admin API."""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import openai
import requests

from tests.mock_upstream import MockUpstream
from tools.stack import Stack

# Every secret a test run hands out (user keys, upstream keys, admin keys): none may
# ever appear in a log line (tests/hostile/test_secrets_in_logs.py greps for them).
ISSUED_SECRETS: set[str] = set()


def remember_secrets(sent: Any, answer: Any) -> None:
    if isinstance(sent, dict) and isinstance(sent.get("api_key"), str) and len(sent["api_key"]) >= 8:
        ISSUED_SECRETS.add(sent["api_key"])
    if isinstance(answer, dict) and isinstance(answer.get("key"), str):
        ISSUED_SECRETS.add(answer["key"])


class AdminError(Exception):
    """The admin API refused a call a helper expected to succeed (not an assertion: a wait may
    poll through it, e.g. a 503 while a service restarts)."""


@dataclass
class Tenant:
    user_id: int
    key: str
    key_id: int
    client: openai.OpenAI


class World:
    def __init__(self, stack: Stack, mock: MockUpstream) -> None:
        self.stack = stack
        self.mock = mock
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {stack.admin_key}"
        ISSUED_SECRETS.update((stack.admin_key, stack.secret_key))

    @property
    def url(self) -> str:
        return self.stack.url

    def admin(self, method: str, path: str, body: Any = None, expect: int | None = None) -> Any:
        resp = self.http.request(method, self.url + path, json=body, timeout=30)
        if expect is not None:
            assert resp.status_code == expect, f"{method} {path}: {resp.status_code} {resp.text}"
        elif resp.status_code >= 300:
            raise AdminError(f"{method} {path}: {resp.status_code} {resp.text}")
        answer = resp.json() if resp.content else None
        remember_secrets(body, answer)
        return answer

    # --- users and keys -----------------------------------------------------------

    def user(self, credits: float | None = 100) -> dict[str, Any]:
        body: dict[str, Any] = {"name": f"user-{secrets.token_hex(3)}"}
        if credits is not None:
            body["credits"] = credits
        return self.admin("POST", "/admin/v1/users", body, expect=201)

    def key(self, user_id: int, **settings: Any) -> dict[str, Any]:
        return self.admin("POST", f"/admin/v1/users/{user_id}/keys", settings, expect=201)

    def client(self, key: str, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(**{"base_url": self.url + "/v1", "api_key": key, "max_retries": 0, "timeout": 60,
                                **kwargs})

    def async_client(self, key: str, **kwargs: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(**{"base_url": self.url + "/v1", "api_key": key, "max_retries": 0, "timeout": 60,
                                     **kwargs})

    def tenant(self, credits: float | None = 100, **key_settings: Any) -> Tenant:
        user = self.user(credits)
        key = self.key(user["id"], **key_settings)
        return Tenant(user["id"], key["key"], key["id"], self.client(key["key"]))

    def balance(self, user_id: int) -> Decimal:
        user = self.admin("GET", f"/admin/v1/users/{user_id}")
        return Decimal(str(user["balance"]))

    def held(self, user_id: int) -> Decimal:
        return Decimal(str(self.admin("GET", f"/admin/v1/users/{user_id}")["held"]))

    def usage(self, user_id: int, limit: int = 100) -> list[dict[str, Any]]:
        return self.admin("GET", f"/admin/v1/usage?user_id={user_id}&limit={limit}")["data"]

    def verify(self) -> dict[str, Any]:
        return self.admin("GET", "/admin/v1/ledger/verify")

    # --- models and channels ---------------------------------------------------------

    def price(self, model: str, prompt: float, completion: float, min_charge: float | None = None) -> None:
        body: dict[str, Any] = {"prompt": prompt, "completion": completion}
        if min_charge is not None:
            body["min_charge"] = min_charge
        self.admin("PUT", f"/admin/v1/prices/{model}", body)

    def channel(self, models: list[str], tag: str | None = None, **settings: Any) -> tuple[int, str]:
        """A channel on the mock upstream; returns (channel id, mock tag). `type="azure"` or
        `type="anthropic"` points it at the mock's Azure or Anthropic face."""
        tag = tag or f"t{secrets.token_hex(4)}"
        base_url = self.mock.azure_url(tag) if settings.get("type") == "azure" else self.mock.base_url(tag)
        body = {"name": f"ch-{tag}", "base_url": base_url, "api_key": f"sk-upstream-{tag}-secret",
                "models": models, **settings}
        channel = self.admin("POST", "/admin/v1/channels", body, expect=201)
        return channel["id"], tag

    def model(self, prompt: float = 1.5, completion: float = 2.0, min_charge: float | None = None,
              prefix: str = "m") -> str:
        """A fresh model name with a price and no channel yet."""
        name = f"{prefix}-{secrets.token_hex(4)}"
        self.price(name, prompt, completion, min_charge)
        return name

    def served_model(self, prompt: float = 1.5, completion: float = 2.0, min_charge: float | None = None,
                     prefix: str = "m", **channel_settings: Any) -> tuple[str, str]:
        """A fresh priced model served by one mock channel; returns (model, mock tag)."""
        name = self.model(prompt, completion, min_charge, prefix)
        _, tag = self.channel([name], **channel_settings)
        return name, tag
