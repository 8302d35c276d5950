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


# Users and top-ups written as billing wrote them before 0018: today's store statements answer
# users.owed, which 0018 adds.
async def _user(conn: AsyncConnection, name: str) -> int:
    """A user made with no credits (so no ledger movement); its id."""
    return (await (await conn.execute("INSERT INTO users (name, balance) VALUES (%s, 0) RETURNING id",
                                      (name,))).fetchone())[0]


async def _top_up(conn: AsyncConnection, user_id: int, credits: int, reference: str, kind: str) -> int:
    """Credits added once per reference, in one ledger movement; the balance after."""
    cur = await conn.execute(
        "WITH t AS (INSERT INTO topups (reference, user_id, credits) VALUES (%(ref)s, %(uid)s, %(credits)s)"
        " RETURNING user_id, credits),"
        " u AS (UPDATE users SET balance = users.balance + t.credits FROM t WHERE users.id = t.user_id"
        " RETURNING users.balance),"
        " mv AS (SELECT nextval('ledger_movement_seq') AS id FROM u),"
        " led AS (INSERT INTO ledger (movement, kind, ref, user_id, account, amount)"
        " SELECT mv.id, %(kind)s, %(ref)s, e.uid, e.account, e.amount FROM mv,"
        " (VALUES (%(uid)s::bigint, 'available', %(credits)s::bigint), (NULL, 'funding', -%(credits)s::bigint))"
        " AS e(uid, account, amount))"
        " SELECT balance FROM u",
        {"ref": reference, "uid": user_id, "credits": credits, "kind": kind})
    return (await cur.fetchone())[0]


async def _paid(conn: AsyncConnection, order_id: str, user_id: int, credits: int) -> None:
    """An order paid as the code before 0018 paid it."""
    await store.create_order(conn, order_id=order_id, user_id=user_id, provider="stripe", currency="USD",
                             amount=credits // 10_000, credits=credits, ttl_s=600)
    await conn.execute("UPDATE orders SET status = 'paid', paid_at = now() WHERE id = %s", (order_id,))
    assert await _top_up(conn, user_id, credits, f"order:{order_id}", "payment") == credits


async def test_old_debts_become_ledger_debts_and_old_rewards_follow_their_order(old_books: str) -> None:
    async with await AsyncConnection.connect(old_books, autocommit=True) as conn:
        alice, bob, carol = [await _user(conn, name) for name in ("alice", "bob", "carol")]
        # bob, invited by alice, pays his first order: alice gets 10%.
        await conn.execute("UPDATE users SET invited_by = %s, invite_rewarded = true WHERE id = %s",
                           (alice, bob))
        await _paid(conn, "ord_bob", bob, 2_000_000)
        assert await _top_up(conn, alice, 200_000, f"invite:{bob}", "invite") == 200_000
        # carol pays 5 credits, a call holds 1 of them, the order is refunded in full: the old
        # code took the 4 the balance had and noted 1 as owed on the order, nowhere else...
        await _paid(conn, "ord_carol", carol, 5_000_000)
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
            {"uid": carol, "model": PRICE.model, "pp": rates_of(PRICE).prompt, "cp": rates_of(PRICE).completion})
        await conn.execute(
            "WITH u AS (UPDATE users SET balance = balance - 4000000 WHERE id = %(uid)s RETURNING id),"
            " mv AS (SELECT nextval('ledger_movement_seq') AS id FROM u)"
            " INSERT INTO ledger (movement, kind, ref, user_id, account, amount)"
            " SELECT mv.id, 'refund', 'refund:ord_carol:5000000', e.uid, e.account, e.amount FROM mv,"
            " (VALUES (%(uid)s::bigint, 'available', -4000000::bigint), (NULL, 'funding', 4000000)) AS e(uid, account,"
            " amount)", {"uid": carol})
        await conn.execute("UPDATE orders SET refunded = 5000000, owed = 1000000, status = 'refunded'"
                           " WHERE id = 'ord_carol'")
        # ... and a later top-up of 3 went to her balance whole.
        assert await _top_up(conn, carol, 3_000_000, "ref-carol", "topup") == 3_000_000

    assert apply_all(old_books) == [p.stem for p in sorted(MIGRATIONS_DIR.glob("*.sql")) if p.stem >= BEFORE]

    async with await AsyncConnection.connect(old_books, autocommit=True) as conn:
        assert (await store.verify_ledger(conn))["problems"] == []
        row = await (await conn.execute("SELECT balance, held, owed FROM users WHERE id = %s", (carol,))).fetchone()
        assert row == (2_000_000, 1_000_000, 0)  # the debt, collected from what she had; the hold untouched
        row = await (await conn.execute("SELECT credited, inviter, invite_reward FROM orders WHERE id = 'ord_bob'"
                                        )).fetchone()
        assert row == (2_000_000, alice, 200_000)
        # A refund after the upgrade takes the reward back in proportion.
        refund = await store.refund_order(conn, "ord_bob", 1_000_000, False)
        assert (refund.taken, refund.owed, refund.invite_taken, refund.invite_owed) == (1_000_000, 0, 100_000, 0)
        assert (await store.get_user(conn, alice)).balance == 100_000
        assert (await store.verify_ledger(conn))["problems"] == []
