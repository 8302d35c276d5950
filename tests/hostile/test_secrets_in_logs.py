"""No key (a user's, an upstream's, the admin's) ever reaches a log line or a client.

The last test of the run greps every log of every stack the run started for every
secret the run issued (tests/world.py records them), after tests that make upstreams
echo their own key back in every way an upstream can.
"""
from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
import requests

from tests import mock_upstream as up
from tests.conftest import ARTIFACTS
from tests.console import ConsoleUser
from tests.world import ISSUED_SECRETS, World
from tools.stack import wait_until

MSG = [{"role": "user", "content": "hello"}]


def _leaky_upstreams(key: str) -> list[tuple[object, bool]]:
    """Upstream answers that quote the channel's key, with whether the call streams and the status
    the client gets (DESIGN §4: a bad channel key or garbage is 502, the upstream's own validation
    and rate limits pass through, a stream already under way reports its error in-band)."""
    error = {"error": {"message": f"Incorrect API key provided: {key}", "type": "invalid_request_error",
                       "param": None, "code": "invalid_api_key"}}
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]}
    stream = (b"data: " + json.dumps(chunk).encode() + b"\n\n"
              b"data: " + json.dumps({"error": {"message": f"key {key} was revoked"}}).encode() + b"\n\n")
    return [
        (up.fail(401, f"Incorrect API key provided: {key}"), False, 502),
        (up.fail(500, f"internal error for key {key}"), False, 502),
        (up.fail(422, f"bad parameter (key {key})", error_type="invalid_request_error"), False, 422),
        (up.fail(429, f"key {key} is over its quota"), True, 429),
        (up.raw(200, json.dumps(error).encode()), False, 502),
        (up.raw(200, json.dumps(error).encode()), True, 502),
        (up.raw(200, stream, "text/event-stream"), True, 200),  # the error travels in-band, scrubbed
        (up.raw(200, b"not json at all " + key.encode()), False, 502),
    ]


@pytest.mark.parametrize("prefix", ["sk-upstream-", "upk_live_"])
def test_upstream_quoting_its_key_is_scrubbed(tight: World, prefix: str) -> None:
    """Our scrubbing removes the channel's own key whatever it looks like, not only sk-... ones."""
    key = prefix + secrets.token_hex(16)
    t = tight.tenant()
    for behavior, stream, status in _leaky_upstreams(key):
        model = tight.model()  # a channel each: a 401 cools its channel down for minutes
        _, tag = tight.channel([model], api_key=key)
        tight.mock.script(tag, behavior)
        resp = requests.post(tight.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {t.key}"},
                             json={"model": model, "messages": MSG, "stream": stream}, timeout=30)
        assert resp.status_code == status, (behavior, stream, resp.status_code, resp.text)
        if status == 200:
            assert resp.text.endswith("data: [DONE]\n\n") and '"error"' in resp.text
        assert key not in resp.text and key[len(prefix):] not in resp.text
    assert key in ISSUED_SECRETS
    listing = tight.admin("GET", "/admin/v1/channels")
    assert key not in json.dumps(listing)
    wait_until(lambda: tight.held(t.user_id) == 0, 10, "every hold to close")


def _logs() -> dict[Path, str]:
    return {path: path.read_text(errors="replace") for path in (ARTIFACTS / "logs").rglob("*.log")}


def test_no_issued_secret_in_any_log(world: World) -> None:
    """Runs last (tests/hostile/conftest.py): every log line of the run, every secret of the run."""
    world.tenant()  # at least one user key and the session's admin key are on the list
    # The console's secrets are on it too: a password, the session cookie, the CSRF token, the
    # first key and a key made with the key form (tests/console.py records them as they go by).
    user = ConsoleUser(world.url).register(password="a console passphrase " + secrets.token_hex(4))
    made = user.ok("POST", "/api/keys", {"name": "grep me"}, expect=201)["key"]
    user.ok("POST", "/api/logout", expect=204)
    user.login(password=user.password)
    assert {user.password, user.first_key, made, user.csrf} <= ISSUED_SECRETS
    assert user.session_cookies <= ISSUED_SECRETS and len(user.session_cookies) == 2
    logs = _logs()
    assert logs and ISSUED_SECRETS
    assert sum(len(text) for text in logs.values()) > 0
    leaks = [(str(path), secret[:12] + "...") for path, text in logs.items() for secret in ISSUED_SECRETS
             if secret in text]
    assert not leaks, f"secrets in logs: {leaks}"
