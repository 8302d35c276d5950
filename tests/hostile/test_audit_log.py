"""Every admin and operator change leaves an entry: who, what, when, from which address — and
never the secret it carried."""
from __future__ import annotations

import json
import secrets
import time
from typing import Any

from tests.console import ConsoleUser
from tests.world import World


def _entries(world: World, **match: Any) -> list[dict[str, Any]]:
    rows = world.admin("GET", "/admin/v1/audit?limit=500")["data"]
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def test_channel_changes_are_listed_without_their_key(world: World) -> None:
    w = world
    started = int(time.time())
    channel_id, tag = w.channel([w.model()])
    secret = f"sk-live-{secrets.token_hex(12)}"
    w.admin("PATCH", f"/admin/v1/channels/{channel_id}",
            {"base_url": f"https://ops:hunter2@api.example.com/v1?token={secret}", "api_key": secret}, expect=200)
    w.admin("PATCH", f"/admin/v1/channels/{channel_id}", {"priority": "high"}, expect=400)
    w.admin("GET", "/admin/v1/channels")

    rows = [r for r in _entries(w, target=str(channel_id)) if "/channels" in r["action"]]
    assert [(r["action"], r["status"]) for r in rows] == [  # newest first; the GET is no change
        ("PATCH /admin/v1/channels/{id}", 400), ("PATCH /admin/v1/channels/{id}", 200)]
    change = rows[1]
    assert change["actor"] == "admin key" and change["address"] == "127.0.0.1"
    assert started - 1 <= change["created"] <= time.time() + 1
    assert sorted(change["details"]["fields"]) == ["api_key", "base_url"]
    assert change["details"]["values"] == {"base_url": "https://api.example.com/v1"}
    everything = json.dumps(w.admin("GET", "/admin/v1/audit?limit=500"))
    assert secret not in everything and "hunter2" not in everything and f"sk-upstream-{tag}" not in everything
    [created] = [r for r in _entries(w, action="POST /admin/v1/channels", status=201)
                 if r["details"]["values"].get("name") == f"ch-{tag}"]
    assert "api_key" in created["details"]["fields"] and "api_key" not in created["details"]["values"]


def test_money_and_role_changes_name_who_made_them(world: World) -> None:
    w = world
    uid = w.user(credits=1)["id"]
    w.admin("POST", f"/admin/v1/users/{uid}/topups", {"credits": 7, "reference": "inv-" + secrets.token_hex(4)})
    [topup] = _entries(w, action="POST /admin/v1/users/{id}/topups", target=str(uid))
    assert topup["status"] == 200 and topup["details"]["values"] == {"credits": 7}
    assert "reference" in topup["details"]["fields"]

    op = ConsoleUser(w.url).register()
    w.admin("PUT", f"/admin/v1/users/{op.user_id}/role", {"role": "operator"})
    op.ok("PATCH", f"/admin/v1/users/{uid}", {"disabled": True})
    [disabled] = _entries(w, action="PATCH /admin/v1/users/{id}", target=str(uid))
    assert disabled["actor"] == f"operator {op.email} (user {op.user_id})"
    assert disabled["details"]["values"] == {"disabled": True} and disabled["address"] == "127.0.0.1"
    [role] = _entries(w, action="PUT /admin/v1/users/{id}/role", target=str(op.user_id))
    assert role["actor"] == "admin key" and role["details"]["values"] == {"role": "operator"}


def test_the_log_pages_back_and_only_the_admin_reads_it(world: World) -> None:
    w = world
    for _ in range(3):
        w.model()  # each PUTs a price: three entries at least
    first = w.admin("GET", "/admin/v1/audit?limit=2")["data"]
    assert len(first) == 2 and first[0]["id"] > first[1]["id"]
    older = w.admin("GET", f"/admin/v1/audit?limit=2&before={first[1]['id']}")["data"]
    assert older and all(r["id"] < first[1]["id"] for r in older)
    t = w.tenant(credits=1)
    assert w.http.get(w.url + "/admin/v1/audit", headers={"Authorization": f"Bearer {t.key}"}).status_code == 401
    user = ConsoleUser(w.url).register()
    assert user.call("GET", "/admin/v1/audit").status_code == 403
