"""Charges follow the price formula on the upstream's usage; the books show it and balance."""
from __future__ import annotations

from decimal import Decimal

import psycopg

from tests import mock_upstream as up
from tests.world import World

MSG = [{"role": "user", "content": "Say this is a test!"}]


def _charge(prompt_tokens: int, completion_tokens: int, prompt_price: str, completion_price: str) -> Decimal:
    micro = (prompt_tokens * Decimal(prompt_price) + completion_tokens * Decimal(completion_price)) * 1000
    return Decimal(int(-(-micro // 1))) / 1_000_000


def test_charge_is_the_formula_on_upstream_usage(world: World) -> None:
    model, tag = world.served_model(prompt=1.5, completion=2)
    world.mock.always(tag, up.ok(usage_override={"prompt_tokens": 1234, "completion_tokens": 567,
                                                  "total_tokens": 1801}))
    t = world.tenant(credits=100)
    reply = t.client.chat.completions.create(model=model, messages=MSG)
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (1234, 567)
    expected = _charge(1234, 567, "1.5", "2")  # 1.851 + 1.134 = 2.985 credits
    assert expected == Decimal("2.985")
    assert world.balance(t.user_id) == 100 - expected
    assert world.held(t.user_id) == 0
    [row] = world.usage(t.user_id)
    assert row["request_id"].startswith("req_") and row["model"] == model
    assert (row["prompt_tokens"], row["completion_tokens"]) == (1234, 567)
    assert Decimal(str(row["credits"])) == expected
    assert row["status"] == "complete" and row["usage_source"] == "upstream"
    assert row["key_id"] == t.key_id
    assert world.verify()["ok"]


def test_usage_row_id_is_the_response_request_id(world: World) -> None:
    model, _ = world.served_model()
    t = world.tenant()
    raw = t.client.chat.completions.with_raw_response.create(model=model, messages=MSG)
    [row] = world.usage(t.user_id)
    assert row["request_id"] == raw.headers["x-request-id"]


def test_counted_when_upstream_sends_no_usage(world: World) -> None:
    model, tag = world.served_model(prompt=1, completion=1)
    world.mock.always(tag, up.ok(usage=False, content="one two three"))
    t = world.tenant()
    reply = t.client.chat.completions.create(model=model, messages=MSG)
    assert reply.usage.prompt_tokens == 13 and reply.usage.completion_tokens == 3
    [row] = world.usage(t.user_id)
    assert row["usage_source"] == "counted"
    assert world.balance(t.user_id) == 100 - _charge(13, 3, "1", "1")


def test_minimum_charge_applies(world: World) -> None:
    model, _ = world.served_model(prefix="text-embedding", prompt=0.25, completion=0)
    t = world.tenant()
    t.client.embeddings.create(model=model, input="hi")
    assert world.balance(t.user_id) == 96  # 4 credits, embeddings' default minimum


def test_topup_and_signup_bonus(world: World) -> None:
    user = world.user(credits=None)
    assert user["balance"] == 100  # the sign-up bonus
    uid = user["id"]
    first = world.admin("POST", f"/admin/v1/users/{uid}/topups", {"credits": 12.5, "reference": f"pay-{uid}"})
    again = world.admin("POST", f"/admin/v1/users/{uid}/topups", {"credits": 12.5, "reference": f"pay-{uid}"})
    assert first["balance"] == again["balance"] == 112.5
    world.admin("POST", f"/admin/v1/users/{uid}/topups", {"credits": 1, "reference": f"pay-{uid}"}, expect=409)
    assert world.balance(uid) == Decimal("112.5")
    assert world.verify()["ok"]


def test_no_plaintext_key_anywhere_in_postgres(world: World) -> None:
    t = world.tenant()
    t.client.chat.completions.create(model="gpt-3.5-turbo", messages=MSG)
    secret = t.key.removeprefix("sk-")
    with psycopg.connect(world.stack.database_url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")]
        assert "api_keys" in tables
        for table in tables:
            hits = conn.execute(
                f'SELECT count(*) FROM "{table}" t WHERE position(%s in t::text) > 0', (secret,)).fetchone()[0]
            assert hits == 0, f"plaintext key found in {table}"
        # And the upstream key is stored sealed, not as text.
        channel_keys = conn.execute("SELECT count(*) FROM channels c WHERE position('sk-upstream' in c::text) > 0"
                                    " OR position(convert_to('sk-upstream', 'UTF8') in api_key_enc) > 0").fetchone()
        assert channel_keys[0] == 0
