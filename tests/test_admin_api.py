"""The admin API of DESIGN §5: shapes, partial updates, masking, and the admin key itself."""
from __future__ import annotations

import requests

from tests.world import World


def test_admin_key_required(world: World) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {world.tenant().key}"}):
        resp = requests.get(world.url + "/admin/v1/prices", headers=headers, timeout=10)
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == "invalid_api_key"


def test_users(world: World) -> None:
    user = world.admin("POST", "/admin/v1/users", {"name": "alice", "credits": 1.234567}, expect=201)
    assert set(user) >= {"id", "name", "balance"} and user["balance"] == 1.234567
    got = world.admin("GET", f"/admin/v1/users/{user['id']}")
    assert got["held"] == 0 and got["name"] == "alice"
    world.admin("GET", "/admin/v1/users/999999999", expect=404)
    world.admin("POST", "/admin/v1/users", {"name": "x", "credits": 1.0000001}, expect=400)
    world.admin("POST", "/admin/v1/users", {"credits": 1}, expect=400)
    world.admin("POST", "/admin/v1/users/999999999/keys", {}, expect=404)


def test_keys_shape(world: World) -> None:
    user = world.user()
    created = world.key(user["id"], name="ci", models=["gpt-4"], rpm=5, credit_limit=2.5)
    assert created["key"].startswith("sk-") and len(created["key"]) >= 43
    listed = world.admin("GET", f"/admin/v1/users/{user['id']}/keys")["data"]
    assert [k["id"] for k in listed] == [created["id"]]
    assert "key" not in listed[0] and created["key"] not in str(listed)
    assert listed[0]["credit_limit"] == 2.5 and listed[0]["models"] == ["gpt-4"]
    world.admin("POST", f"/admin/v1/users/{user['id']}/keys", {"ips": ["not-an-ip"]}, expect=400)
    world.admin("POST", f"/admin/v1/users/{user['id']}/keys", {"expires_at": "yesterday"}, expect=400)
    world.admin("DELETE", "/admin/v1/keys/999999999", expect=404)


def test_channels_masked_and_patched(world: World) -> None:
    model = world.model()
    channel_id, tag = world.channel([model], model_map={model: "upstream-name"})
    listed = {c["id"]: c for c in world.admin("GET", "/admin/v1/channels")["data"]}
    assert f"sk-upstream-{tag}-secret" not in str(listed)
    assert listed[channel_id]["api_key"].startswith("sk-") and "..." in listed[channel_id]["api_key"]
    patched = world.admin("PATCH", f"/admin/v1/channels/{channel_id}", {"priority": 7})
    assert patched["priority"] == 7 and patched["models"] == [model]
    assert patched["model_map"] == {model: "upstream-name"}
    t = world.tenant()
    reply = t.client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert reply.model == model  # the name the client asked for
    assert world.mock.received(tag)[-1].body["model"] == "upstream-name"
    world.admin("PATCH", f"/admin/v1/channels/{channel_id}", {"weight": "heavy"}, expect=400)
    world.admin("POST", "/admin/v1/channels", {"name": "x", "base_url": "ftp://x", "models": ["a"]}, expect=400)
    world.admin("DELETE", f"/admin/v1/channels/{channel_id}", expect=204)
    world.admin("DELETE", f"/admin/v1/channels/{channel_id}", expect=404)
    assert model not in [m.id for m in t.client.models.list()]


def test_prices(world: World) -> None:
    model = world.model(prompt=1, completion=2, min_charge=0.5)
    world.admin("PUT", f"/admin/v1/prices/{model}", {"prompt": 3, "completion": 4})
    prices = {p["model"]: p for p in world.admin("GET", "/admin/v1/prices")["data"]}
    assert prices[model]["prompt"] == 3 and prices[model]["min_charge"] == 0.5  # kept
    assert prices["text-embedding-ada-002"]["min_charge"] == 4
    assert prices["text-embedding-ada-002"]["prompt"] * 6 == prices["gpt-3.5-turbo"]["prompt"]
    new_embedding = world.model(prefix="text-embedding-new", prompt=0.1, completion=0)
    assert {p["model"]: p for p in world.admin("GET", "/admin/v1/prices")["data"]}[new_embedding]["min_charge"] == 4
    world.admin("PUT", f"/admin/v1/prices/{model}", {"prompt": -1, "completion": 1}, expect=400)


def test_redeem_codes_created(world: World) -> None:
    codes = world.admin("POST", "/admin/v1/redeem-codes", {"credits": 5, "count": 3}, expect=201)["codes"]
    assert len(set(codes)) == 3
    world.admin("POST", "/admin/v1/redeem-codes", {"credits": 5, "count": 0}, expect=400)


def test_ledger_verify(world: World) -> None:
    report = world.verify()
    assert report["ok"] is True and report["ledger_sum"] == 0 and report["problems"] == []
