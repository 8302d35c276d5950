"""Money in: the public price list, payment orders and their crediting (exactly once),
the demo provider, and invite rewards — over real HTTP against the session's stack."""
from __future__ import annotations

from decimal import Decimal

import requests

from tests.world import World


def test_pricing_is_public_and_lists_only_served_models(world: World) -> None:
    unserved = world.model(prompt=7, completion=9)
    served, _ = world.served_model(prompt=0.25, completion=1.125, min_charge=0.5)
    resp = requests.get(world.url + "/api/pricing", timeout=30)  # no session, no key
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "list"
    rows = {row["model"]: row for row in body["data"]}
    assert unserved not in rows
    assert rows[served]["prompt"] == 0.25 and rows[served]["completion"] == 1.125
    assert rows[served]["min_charge"] == 0.5 and rows[served]["unit"] == "credits per 1K tokens"
    assert rows["gpt-3.5-turbo"]["prompt"] == 1.5 and rows["gpt-3.5-turbo"]["max_output"] == 4096
    assert rows["text-embedding-ada-002"]["min_charge"] == 4 and "max_output" not in rows["text-embedding-ada-002"]
    assert Decimal(str(body["credits_per_cny"])) == 140 and Decimal(str(body["credits_per_usd"])) == 1000


def test_pricing_page_and_openapi(world: World) -> None:
    page = requests.get(world.url + "/pricing", timeout=30)
    assert page.status_code == 200 and "pricing.js" in page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    for name in ("chat.js", "console.js", "ops.js", "pricing.js"):
        assert requests.get(f"{world.url}/static/{name}", timeout=30).status_code == 200
    common = requests.get(world.url + "/static/common.js", timeout=30).text
    assert '"/pricing"' in common  # the top bar of every page links the price list
    document = requests.get(world.url + "/openapi.json", timeout=30).json()
    assert "/api/pricing" in document["paths"]
    assert document["paths"]["/api/pricing"]["get"]["security"] == []
