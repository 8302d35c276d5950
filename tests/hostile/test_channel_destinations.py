"""An operator (or a stolen admin key) points a channel somewhere it should not go: at the
cloud's metadata service, at the cluster inside, or at their own host to walk its key out."""
from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import pytest
from aiohttp import web

from services.common.config import Secret
from services.inference.adapters.base import Exchange
from services.inference.channel import Channel
from services.inference.destinations import DestinationPolicy
from services.inference.upstream import Failure, Upstream, UpstreamError
from tests.mock_upstream import MockUpstream
from tests.world import World
from tools.stack import wait_until

MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("base_url", [
    "http://169.254.169.254/latest/v1",         # the metadata service of AWS, GCP, Azure
    "http://[fd00:ec2::254]/v1",                # AWS's, over IPv6
    "http://100.100.100.200/v1",                # Alibaba Cloud's
    "http://[::ffff:169.254.169.254]/v1",       # the same, IPv4-mapped
    "http://[fe80::1]:8080/v1",                 # link-local
    "http://10.0.0.7:8000/v1",                  # private, and not in CHATKORE_UPSTREAM_ALLOW
    "https://192.168.1.1/v1",
    "http://[fd12:3456::1]/v1",
    "http://127.0.0.2:8080/v1",                 # loopback, but only 127.0.0.1 is allowed in the tests
    "http://0.0.0.0:8080/v1",
])
def test_a_channel_at_a_refused_address_is_refused_and_nothing_changes(world: World, base_url: str) -> None:
    before = world.admin("GET", "/admin/v1/channels")["data"]
    error = world.admin("POST", "/admin/v1/channels", {"name": "sneaky", "base_url": base_url, "api_key": "sk-x",
                                                       "models": ["gpt-3.5-turbo"]}, expect=400)["error"]
    assert error["param"] == "base_url" and "not allowed" in error["message"]
    channel_id, _ = world.channel([world.model()])
    error = world.admin("PATCH", f"/admin/v1/channels/{channel_id}", {"base_url": base_url}, expect=400)["error"]
    assert error["param"] == "base_url"
    after = world.admin("GET", "/admin/v1/channels")["data"]
    assert [c for c in after if c["id"] != channel_id] == before
    assert next(c for c in after if c["id"] == channel_id)["base_url"] != base_url


def _post(policy: str, url: str) -> int:
    """One call through inference's own upstream client, as a channel at `url` makes it."""
    channel = Channel(id=1, name="c", type="openai", base_url=url, api_key=Secret("sk-x"), key_hint="",
                      models=frozenset({"m"}), model_map={}, priority=0, weight=1, enabled=True, settings={},
                      created=0)
    body = json.dumps({"model": "m", "messages": MSG}).encode()

    async def call() -> int:
        upstream = Upstream(10.0, DestinationPolicy.parse(policy))
        await upstream.start()
        try:
            resp = await upstream.post(Exchange(channel, url + "/chat/completions", {}, body), stream=False)
            resp.release()
            return resp.status
        finally:
            await upstream.close()

    return asyncio.run(call())


def test_a_host_name_is_checked_on_the_address_it_resolves_to(mock: MockUpstream) -> None:
    """`localhost` is no IP literal: what it resolves to (127.0.0.1) is checked when the connection
    opens, with its port, so a name that rebinds to an inside address is caught where it lands."""
    tag, port = f"t{secrets.token_hex(4)}", mock.port
    url = f"http://localhost:{port}/{tag}/v1"
    assert _post(f"127.0.0.1:{port}", url) == 200
    for policy in ("", f"127.0.0.1:{port + 1}", "10.0.0.0/8"):
        with pytest.raises(UpstreamError) as err:
            _post(policy, url)
        assert err.value.kind is Failure.CONNECT and "not listed in CHATKORE_UPSTREAM_ALLOW" in str(err.value)
    assert len(mock.received(tag)) == 1  # the refused calls never arrived


def test_a_redirect_is_never_followed(mock: MockUpstream) -> None:
    tag, inside = f"t{secrets.token_hex(4)}", f"t{secrets.token_hex(4)}"

    async def redirect(request: web.Request, body: dict[str, Any], path: str) -> web.StreamResponse:
        return web.Response(status=307, headers={"Location": mock.base_url(inside) + "/chat/completions"})

    mock.script(tag, redirect)
    with pytest.raises(UpstreamError):
        _post(f"127.0.0.1:{mock.port}", mock.base_url(tag))
    assert len(mock.received(tag)) == 1 and mock.received(inside) == []


def test_changing_where_a_channel_points_clears_its_key(world: World) -> None:
    """PATCHing base_url (or type) without a key leaves none: the old key never reaches the new
    destination. A PATCH of anything else, or one that brings its own key, keeps a key."""
    w = world
    model = w.model()
    channel_id, tag = w.channel([model])
    t = w.tenant(credits=10)

    def sent_key(at: str) -> str:
        t.client.chat.completions.create(model=model, messages=MSG)
        return w.mock.received(at)[-1].headers.get("Authorization", "").strip()

    def hint() -> str:
        return next(c for c in w.admin("GET", "/admin/v1/channels")["data"] if c["id"] == channel_id)["api_key"]

    assert sent_key(tag) == f"Bearer sk-upstream-{tag}-secret"
    w.admin("PATCH", f"/admin/v1/channels/{channel_id}", {"priority": 5, "name": f"renamed-{tag}"}, expect=200)
    assert sent_key(tag) == f"Bearer sk-upstream-{tag}-secret" and hint()
    # Same destination written again: nothing changed, the key stays.
    w.admin("PATCH", f"/admin/v1/channels/{channel_id}", {"base_url": w.mock.base_url(tag)}, expect=200)
    assert sent_key(tag) == f"Bearer sk-upstream-{tag}-secret"

    elsewhere = f"t{secrets.token_hex(4)}"
    w.admin("PATCH", f"/admin/v1/channels/{channel_id}", {"base_url": w.mock.base_url(elsewhere)}, expect=200)
    assert hint() == ""
    wait_until(lambda: sent_key(elsewhere) in ("", "Bearer"), 10, "a call at the new destination")
    assert not [r for r in w.mock.received(elsewhere) if "sk-upstream" in str(r.headers)]

    w.admin("PATCH", f"/admin/v1/channels/{channel_id}", {"base_url": w.mock.base_url(tag), "api_key": "sk-new-one"},
            expect=200)
    wait_until(lambda: sent_key(tag) == "Bearer sk-new-one", 10, "the new key to be used")
    w.admin("PATCH", f"/admin/v1/channels/{channel_id}", {"type": "azure"}, expect=200)
    assert hint() == ""
