"""Migration 0018 on books written before it: an order's owed part (which only the order
noted) becomes the user's ledger debt and is collected from what the balance already has; the
invite reward of a paid order is tied to it, so a refund after the upgrade takes it back."""
from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import AsyncConnection

from services.billing import store
from services.billing.pricing import Price, rates_of
from services.common.migrations import MIGRATIONS_DIR, apply_all
from tools import pg

BEFORE = "0018_refunds_owed"
PRICE = Price(model="gpt-3.5-turbo", prompt=1_500, completion=2_000, min_charge=0, context_window=16_385,
              max_output_tokens=4_096)


@pytest.fixture
def old_books(pg_server: str) -> Iterator[str]:
    """A database migrated up to, not including, 0018."""
    name = f"chatkore_test_{secrets.token_hex(4)}"
    url = pg.ensure_database(pg_server, name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_migrations (version text PRIMARY KEY,"
                     " applied_at timestamptz NOT NULL DEFAULT now())")
        for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
            if path.stem >= BEFORE:
                break
            with conn.transaction():
                conn.execute(path.read_text())
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (path.stem,))
    yield url
    pg.drop_database(pg_server, name)


async def _paid(conn: AsyncConnection, order_id: str, user_id: int, credits: int) -> None:
    """An order paid as the code before 0018 paid it."""
    await store.create_order(conn, order_id=order_id, user_id=user_id, provider="stripe", currency="USD",
                             amount=credits // 10_000, credits=credits, ttl_s=600)
    await conn.execute("UPDATE orders SET status = 'paid', paid_at = now() WHERE id = %s", (order_id,))
    assert await store.top_up(conn, user_id, credits, f"order:{order_id}", "payment") is not None


async def test_old_debts_become_ledger_debts_and_old_rewards_follow_their_order(old_books: str) -> None:
    async with await AsyncConnection.connect(old_books, autocommit=True) as conn:
        alice = await store.create_user(conn, "alice", 0)
        bob = await store.create_user(conn, "bob", 0)
        carol = await store.create_user(conn, "carol", 0)
        # bob, invited by alice, pays his first order: alice gets 10%.
        await conn.execute("UPDATE users SET invited_by = %s, invite_rewarded = true WHERE id = %s",
                           (alice.id, bob.id))
        await _paid(conn, "ord_bob", bob.id, 2_000_000)
        assert await store.top_up(conn, alice.id, 200_000, f"invite:{bob.id}", "invite") is not None
        # carol pays 5 credits, a call holds 1 of them, the order is refunded in full: the old
        # code took the 4 the balance had and noted 1 as owed on the order, nowhere else...
        await _paid(conn, "ord_carol", carol.id, 5_000_000)
        # An open hold of 1 credit, written as billing wrote holds before 0018 (today's store
        # statements name columns later migrations add).
        await conn.execute(
            "WITH u AS (UPDATE users SET balance = balance - 1000000, held = held + 1000000 WHERE id = %(uid)s"
            " RETURNING id),"
            " r AS (INSERT INTO requests (request_id, user_id, key_id, model, hold, prompt_price, completion_price,"
            " min_charge, cached_prompt_price, cache_write_price, prompt_tokens, deadline, try_number)"
            " SELECT 'r-carol', id, 1, %(model)s, 1000000, %(pp)s, %(cp)s, 0, %(pp)s, %(pp)s, 10,"
            " now() + interval '600 seconds', 0 FROM u RETURNING request_id),"
            " mv AS (SELECT nextval('ledger_movement_seq') AS id FROM r)"
            " INSERT INTO ledger (movement, kind, ref, user_id, account, amount)"
            " SELECT mv.id, 'hold', 'r-carol', %(uid)s, e.account, e.amount FROM mv,"
            " (VALUES ('available', -1000000::bigint), ('held', 1000000::bigint)) AS e(account, amount)",
            {"uid": carol.id, "model": PRICE.model, "pp": rates_of(PRICE).prompt, "cp": rates_of(PRICE).completion})
        await conn.execute(
            "WITH u AS (UPDATE users SET balance = balance - 4000000 WHERE id = %(uid)s RETURNING id),"
            " mv AS (SELECT nextval('ledger_movement_seq') AS id FROM u)"
            " INSERT INTO ledger (movement, kind, ref, user_id, account, amount)"
            " SELECT mv.id, 'refund', 'refund:ord_carol:5000000', e.uid, e.account, e.amount FROM mv,"
            " (VALUES (%(uid)s::bigint, 'available', -4000000::bigint), (NULL, 'funding', 4000000)) AS e(uid, account,"
            " amount)", {"uid": carol.id})
        await conn.execute("UPDATE orders SET refunded = 5000000, owed = 1000000, status = 'refunded'"
                           " WHERE id = 'ord_carol'")
        # ... and a later top-up of 3 went to her balance whole.
        assert (await store.top_up(conn, carol.id, 3_000_000, "ref-carol", "topup")).balance == 3_000_000

    assert apply_all(old_books) == [p.stem for p in sorted(MIGRATIONS_DIR.glob("*.sql")) if p.stem >= BEFORE]

    async with await AsyncConnection.connect(old_books, autocommit=True) as conn:
        assert (await store.verify_ledger(conn))["problems"] == []
        row = await (await conn.execute("SELECT balance, held, owed FROM users WHERE id = %s", (carol.id,))).fetchone()
        assert row == (2_000_000, 1_000_000, 0)  # the debt, collected from what she had; the hold untouched
        row = await (await conn.execute("SELECT credited, inviter, invite_reward FROM orders WHERE id = 'ord_bob'"
                                        )).fetchone()
        assert row == (2_000_000, alice.id, 200_000)
        # A refund after the upgrade takes the reward back in proportion.
        refund = await store.refund_order(conn, "ord_bob", 1_000_000, False)
        assert (refund.taken, refund.owed, refund.invite_taken, refund.invite_owed) == (1_000_000, 0, 100_000, 0)
        assert (await store.get_user(conn, alice.id)).balance == 100_000
        assert (await store.verify_ledger(conn))["problems"] == []
