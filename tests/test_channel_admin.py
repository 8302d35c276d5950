"""Operating channels: the test call, and upstream keys that are useless without CHATKORE_SECRET_KEY."""
from __future__ import annotations

import secrets

import psycopg
import pytest
import requests

from services.common.config import Secret
from services.inference.secretbox import SecretBox
from tests import mock_upstream as up
from tests.world import ISSUED_SECRETS, World
from tools.stack import wait_until

MSG = [{"role": "user", "content": "hi"}]


def _test(world: World, channel_id: int, **body) -> dict:
    return world.admin("POST", f"/admin/v1/channels/{channel_id}/test", body, expect=200)


@pytest.mark.parametrize("kind", ["openai", "azure", "anthropic"])
def test_channel_test_call_reports_latency_and_bills_nobody(world: World, kind: str) -> None:
    model = world.model(prefix=kind)
    channel_id, tag = world.channel([model], type=kind)
    ledger = world.verify()["entries"]
    usage = len(world.admin("GET", "/admin/v1/usage?limit=1000")["data"])
    result = _test(world, channel_id)
    assert result["ok"] is True and result["model"] == model and result["status"] == 200, result
    assert result["latency_ms"] > 0 and result["reply"].startswith("This is a test") and result["error"] is None
    sent = world.mock.received(tag)[-1].body
    assert sent["max_tokens"] == 5 and sent["messages"][-1]["content"] == "Say hi."
    assert world.verify()["entries"] == ledger  # no hold, no charge, no usage row
    assert len(world.admin("GET", "/admin/v1/usage?limit=1000")["data"]) == usage


def test_channel_test_call_failures_and_recovery(world: World) -> None:
    t = world.tenant()
    model = world.model()
    channel_id, tag = world.channel([model])
    world.mock.always(tag, up.fail(500, "boom with sk-upstream-secret-ish"))
    for _ in range(2):
        requests.post(world.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {t.key}"},
                      json={"model": model, "messages": MSG}, timeout=30)
    failed = _test(world, channel_id)
    assert failed["ok"] is False and failed["status"] == 500 and failed["error"].startswith("server:")
    assert f"sk-upstream-{tag}-secret" not in str(failed) and failed["health"] == "cooling"
    world.mock.always(tag, up.fail(401, f"Incorrect API key provided: sk-upstream-{tag}-secret"))
    denied = _test(world, channel_id)
    assert denied["ok"] is False and denied["status"] == 401 and f"sk-upstream-{tag}-secret" not in str(denied)
    # Fixed upstream: a successful test puts the channel back at once, without waiting for a probe.
    world.mock.always(tag, up.ok())
    assert _test(world, channel_id)["health"] == "healthy"
    assert _test(world, channel_id, model=model)["ok"] is True
    resp = world.http.post(world.url + f"/admin/v1/channels/{channel_id}/test", json={"model": "other"}, timeout=30)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "model"
    assert world.http.post(world.url + "/admin/v1/channels/999999/test", timeout=30).status_code == 404
    timed = world.model()
    slow_id, slow = world.channel([timed], settings={"timeout_s": 0.3})
    world.mock.always(slow, up.hang(30))
    hung = _test(world, slow_id)
    assert hung["ok"] is False and hung["error"].startswith("timeout") and hung["latency_ms"] < 3000
    assert requests.post(world.url + f"/admin/v1/channels/{channel_id}/test", timeout=30).status_code == 401


def test_upstream_key_is_unreadable_without_the_secret(make_stack, mock) -> None:
    first = World(make_stack(name="secret-a"), mock)
    model = first.model()
    upstream_key = "sk-live-" + "Zq8" * 12
    channel_id, tag = first.channel([model], api_key=upstream_key)
    listed = first.admin("GET", "/admin/v1/channels")["data"]
    assert upstream_key not in str(listed) and listed[0]["api_key"] == upstream_key[:3] + "..." + upstream_key[-4:]
    with psycopg.connect(first.stack.database_url) as conn:
        row = conn.execute("SELECT * FROM channels WHERE id = %s", (channel_id,)).fetchone()
        sealed = conn.execute("SELECT api_key_enc FROM channels WHERE id = %s", (channel_id,)).fetchone()[0]
    assert upstream_key not in repr(row) and upstream_key.encode() not in bytes(sealed)
    assert SecretBox(Secret(first.stack.secret_key)).open(bytes(sealed)) == upstream_key
    with pytest.raises(ValueError):
        SecretBox(Secret("some-other-secret")).open(bytes(sealed))
    tenant = first.tenant()
    assert tenant.client.chat.completions.create(model=model, messages=MSG).choices[0].message.content
    assert mock.received(tag)[-1].headers["Authorization"] == f"Bearer {upstream_key}"
    # The same database under another CHATKORE_SECRET_KEY (inference is the one process that reads
    # it): the channel is listed as unusable and never called.
    other_secret = secrets.token_hex(16)
    ISSUED_SECRETS.add(other_secret)
    first.stack.restart("inference", env={"CHATKORE_SECRET_KEY": other_secret})
    first.stack.wait_healthy(60)
    second = first
    calls = len(mock.received(tag))
    channel = next(c for c in second.admin("GET", "/admin/v1/channels")["data"] if c["id"] == channel_id)
    assert channel["health"] == "key_unreadable" and channel["api_key"] == listed[0]["api_key"]
    resp = requests.post(second.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {tenant.key}"},
                         json={"model": model, "messages": MSG}, timeout=30)
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "no_available_channel"
    assert _test(second, channel_id)["ok"] is False
    assert len(mock.received(tag)) == calls
    # A new key, set under the new secret, makes the channel usable again.
    second.admin("PATCH", f"/admin/v1/channels/{channel_id}", {"api_key": "sk-rotated-key-0001"})
    wait_until(lambda: requests.post(second.url + "/v1/chat/completions", timeout=30,
                                     headers={"Authorization": f"Bearer {tenant.key}"},
                                     json={"model": model, "messages": MSG}).status_code == 200, 5, "the new key")
    assert mock.received(tag)[-1].headers["Authorization"] == "Bearer sk-rotated-key-0001"
