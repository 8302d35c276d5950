"""Model aliases: a public name standing for another model, listed, routed, sent upstream and
priced as its target, changed and removed by the operator."""
from __future__ import annotations

import secrets
from decimal import Decimal

import requests

from tests.world import World
from tools.stack import wait_until

MSG = [{"role": "user", "content": "Say this is a test!"}]


def _models(world: World, key: str) -> set[str]:
    resp = requests.get(world.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    return {m["id"] for m in resp.json()["data"]}


def test_an_alias_is_served_as_its_target(world: World) -> None:
    target = world.model(prompt=1, completion=2)
    _, tag = world.channel([target], model_map={target: "upstream-" + target})
    alias = f"retired-{secrets.token_hex(3)}"
    assert world.admin("PUT", f"/admin/v1/aliases/{alias}", {"target": target}) == {"name": alias, "target": target}
    assert {"name": alias, "target": target} in world.admin("GET", "/admin/v1/aliases")["data"]
    t = world.tenant(credits=100)
    assert {alias, target} <= _models(world, t.key)
    reply = t.client.chat.completions.create(model=alias, messages=MSG)
    assert reply.model == alias and reply.choices[0].message.content == "This is a test! You said: Say this is a test!"
    assert world.mock.received(tag)[-1].body["model"] == "upstream-" + target  # the target's upstream name
    [row] = world.usage(t.user_id)
    assert row["model"] == target  # priced as the target
    expected = (Decimal(reply.usage.prompt_tokens) * 1 + Decimal(reply.usage.completion_tokens) * 2) / 1000
    assert world.balance(t.user_id) == 100 - expected
    # Streamed too.
    chunks = list(t.client.chat.completions.create(model=alias, messages=MSG, stream=True))
    assert {c.model for c in chunks} == {alias}

    # Re-pointed, then removed: within a second everywhere.
    other = world.model()
    _, other_tag = world.channel([other])
    world.admin("PUT", f"/admin/v1/aliases/{alias}", {"target": other})
    t.client.chat.completions.create(model=alias, messages=MSG)
    assert world.mock.received(other_tag)[-1].body["model"] == other
    world.admin("DELETE", f"/admin/v1/aliases/{alias}", expect=204)
    wait_until(lambda: alias not in _models(world, t.key), 5, "the alias to leave /v1/models")
    gone = requests.post(world.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {t.key}"},
                         json={"model": alias, "messages": MSG}, timeout=30)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"


def test_a_name_a_channel_serves_is_not_overridden(world: World) -> None:
    direct, direct_tag = world.served_model()
    target, target_tag = world.served_model()
    world.admin("PUT", f"/admin/v1/aliases/{direct}", {"target": target})
    t = world.tenant()
    t.client.chat.completions.create(model=direct, messages=MSG)
    assert world.mock.received(direct_tag)[-1].body["model"] == direct
    assert world.mock.received(target_tag) == []
    world.admin("DELETE", f"/admin/v1/aliases/{direct}", expect=204)


def test_bad_aliases_are_refused(world: World) -> None:
    target = world.model()
    alias = f"a-{secrets.token_hex(3)}"
    world.admin("PUT", f"/admin/v1/aliases/{alias}", {"target": target})
    for name, body, param in [(f"b-{secrets.token_hex(3)}", {}, "target"),
                              (f"b-{secrets.token_hex(3)}", {"target": 5}, "target"),
                              (target, {"target": target}, "target"),
                              (f"b-{secrets.token_hex(3)}", {"target": alias}, "target"),
                              (target, {"target": "x-" + target}, "name")]:
        resp = world.http.put(world.url + f"/admin/v1/aliases/{name}", json=body, timeout=10)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == param, (name, body, resp.text)
    missing = world.http.delete(world.url + "/admin/v1/aliases/never-made", timeout=10)
    assert missing.status_code == 404
    assert requests.put(world.url + f"/admin/v1/aliases/{alias}", json={"target": target}, timeout=10).status_code \
        == 401
    world.admin("DELETE", f"/admin/v1/aliases/{alias}", expect=204)
