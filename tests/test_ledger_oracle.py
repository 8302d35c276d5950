"""The ledger oracle shown to fail: every invariant `store.verify_ledger` checks, broken on a
throwaway database by one SQL statement, is reported, and `ok` is then false.

Dozens of tests and every stack's teardown end in `/admin/v1/ledger/verify` → ok; this file is
what makes that worth something. The books are made by billing's own store functions (grants,
top-ups, holds, settlements, releases), then each break runs in a transaction that is rolled
back, so every case starts from the same whole books.
"""
from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest
from psycopg import AsyncConnection

from services.billing import store
from services.billing.pricing import Price, Usage, cost, rates_of
from tests.world import World

PRICE = Price(model="gpt-3.5-turbo", prompt=1_500, completion=2_000, min_charge=0, context_window=16_385,
              max_output_tokens=4_096)


async def _reserve(conn: AsyncConnection, request_id: str, user_id: int, amount: int, key_id: int = 1,
                   credit_limit: int = 0) -> int:
    held = await store.reserve(conn, request_id=request_id, user_id=user_id, key_id=key_id,
                               credit_limit=credit_limit, model=PRICE.model, rates=rates_of(PRICE),
                               prompt_tokens=10, desired=amount, minimum=1, channel_id=0, ttl_s=600)
    assert held == amount
    return held


async def _settle(conn: AsyncConnection, request_id: str, usage: Usage, status: str, source: str) -> tuple[int, int]:
    """Settle as billing does, with its store's own statements: the request and the user
    locked, the hold charged up to the call's cost and the rest released."""
    async with conn.transaction():
        call = await store.lock_request(conn, request_id)
        assert call is not None and call.state == "held"
        await store.lock_balance(conn, call.user_id)
        charged = min(cost(call.rates, usage), call.hold)
        await store.close_request(conn, request_id=request_id, usage=usage, status=status, usage_source=source,
                                  channel_id=0, from_held=charged, from_balance=0, released=call.hold - charged,
                                  unpaid=0, late=False)
    return charged, call.hold - charged


@pytest.fixture(scope="module")
def books_url(make_database) -> str:
    return make_database()


@pytest.fixture
async def books(books_url: str) -> AsyncIterator[AsyncConnection]:
    """Whole books on a throwaway database: users granted and topped up, holds open, settled
    (charged) and released; the connection the breaks run on, inside a transaction."""
    async with await AsyncConnection.connect(books_url, autocommit=True) as conn:
        if (await (await conn.execute("SELECT count(*) FROM users")).fetchone())[0] == 0:
            alice = await store.create_user(conn, "alice", 100_000_000)
            bob = await store.create_user(conn, "bob", 50_000_000)
            assert await store.top_up(conn, bob.id, 7_000_000, "ref-1", "topup") is not None
            await _reserve(conn, "r-settled", alice.id, 3_000_000)
            assert await _settle(conn, "r-settled", Usage(prompt=100, completion=200), "complete",
                                 "upstream") == (550, 2_999_450)
            await _reserve(conn, "r-released", alice.id, 2_000_000)
            assert await _settle(conn, "r-released", Usage(), "upstream_error", "counted") == (0, 2_000_000)
            await _reserve(conn, "r-open", alice.id, 1_000_000)
            await _reserve(conn, "r-open-bob", bob.id, 4_000_000, key_id=9, credit_limit=10_000_000)
            # carol pays an order, starts a call, and the order is refunded in full: the
            # balance goes, the hold stays, its release pays the debt down to the call's cost.
            carol = await store.create_user(conn, "carol", 0)
            await store.create_order(conn, order_id="ord_carol", user_id=carol.id, provider="stripe", currency="USD",
                                     amount=500, credits=5_000_000, ttl_s=600)
            assert (await store.credit_order(conn, "ord_carol", "pi_carol", 10)).order is not None
            await _reserve(conn, "r-carol", carol.id, 2_000_000)
            refund = await store.refund_order(conn, "ord_carol", 5_000_000, True)
            assert (refund.taken, refund.owed) == (3_000_000, 2_000_000)
            assert await _settle(conn, "r-carol", Usage(prompt=100, completion=200), "complete",
                                 "upstream") == (550, 1_999_450)
            assert (await store.get_user(conn, carol.id)).balance == 0
        report = await store.verify_ledger(conn)
        assert report["problems"] == [] and report["open_holds"] == 2, report
        await conn.set_autocommit(False)
        try:
            yield conn
        finally:
            await conn.rollback()


async def _broken(conn: AsyncConnection, statement: str) -> list[str]:
    await conn.execute(statement)
    return (await store.verify_ledger(conn))["problems"]


# (what is broken, the one statement that breaks it, the problem that must be reported)
BREAKS = [
    ("an unmatched ledger entry",
     "INSERT INTO ledger (movement, kind, ref, user_id, account, amount) "
     "VALUES (nextval('ledger_movement_seq'), 'grant', 'stray', NULL, 'funding', -5)",
     "ledger sums to -5, not 0"),
    ("a movement whose two entries no longer sum to zero (the ledger as a whole still does)",
     "UPDATE ledger SET movement = (SELECT max(movement) FROM ledger) + 1 "
     "WHERE id = (SELECT min(id) FROM ledger WHERE account = 'available')",
     "sums to"),
    ("balance + 1",
     "UPDATE users SET balance = balance + 1 WHERE name = 'alice'",
     "balance 98999451 vs ledger 98999450"),
    ("held + 1, against both the ledger and the open holds",
     "UPDATE users SET held = held + 1 WHERE name = 'alice'",
     "held 1000001 vs ledger 1000000 vs open holds 1000000"),
    ("an open hold that no longer matches what the user has set aside",
     "UPDATE requests SET hold = hold + 1 WHERE request_id = 'r-open'",
     "held 1000000 vs ledger 1000000 vs open holds 1000001"),
    ("revenue differing from the charges",
     "UPDATE requests SET credits = credits + 1 WHERE request_id = 'r-settled'",
     "revenue 1100 differs from the sum of charges 1101"),
    ("an open hold that carries a charge",
     "UPDATE requests SET credits = 1 WHERE request_id = 'r-open'",
     "1 open holds already charged"),
    ("a debt that is not the ledger's",
     "UPDATE users SET owed = owed + 1 WHERE name = 'carol'",
     "owed 551 vs ledger 550"),
    ("a debt, in the books, left uncollected while the balance is positive",
     "WITH d AS (INSERT INTO ledger (movement, kind, ref, user_id, account, amount) "
     "SELECT m.id, 'refund', 'stray', e.uid, e.account, e.amount "
     "FROM (SELECT nextval('ledger_movement_seq') AS id) m, (VALUES ((SELECT id FROM users WHERE name = 'alice'), "
     "'owed', -1), (NULL, 'funding', 1)) AS e(uid, account, amount)) "
     "UPDATE users SET owed = owed + 1 WHERE name = 'alice'",
     "owes 1 uncollected while the balance is 98999450"),
]


@pytest.mark.parametrize(("what", "statement", "problem"), BREAKS, ids=[b[0] for b in BREAKS])
async def test_each_broken_invariant_is_reported(books: AsyncConnection, what: str, statement: str,
                                                 problem: str) -> None:
    problems = await _broken(books, statement)
    assert any(problem in p for p in problems), (what, problems)


async def test_the_movement_that_lost_an_entry_is_named(books: AsyncConnection) -> None:
    cur = await books.execute("SELECT movement, amount FROM ledger WHERE account = 'available' ORDER BY id LIMIT 1")
    movement, amount = await cur.fetchone()
    problems = await _broken(books, BREAKS[1][1])
    assert f"movement {movement} sums to {-amount}" in problems
    assert not any("not 0" in p for p in problems)


def test_the_endpoint_says_not_ok(world: World) -> None:
    """`ok` is what every test reads, over HTTP: one user's balance off by a micro-credit on the
    shared stack turns it false and names the user; put back, the books verify again."""
    user = world.user(credits=1)
    with psycopg.connect(world.stack.database_url, autocommit=True) as conn:
        conn.execute("UPDATE users SET balance = balance + 1 WHERE id = %s", (user["id"],))
        try:
            report = world.verify()
        finally:
            conn.execute("UPDATE users SET balance = balance - 1 WHERE id = %s", (user["id"],))
    assert report["ok"] is False
    assert f"user {user['id']}: balance 1000001 vs ledger 1000000, held 0 vs ledger 0 vs open holds 0" \
        in report["problems"]
    assert world.verify()["ok"] is True


# Invariants PostgreSQL itself enforces: the statement is refused. With its constraint dropped
# (on this throwaway database, inside the rolled-back transaction), verify still catches it.
GUARDED = [
    # (A charge above its hold is no longer a broken book: usage an upstream reports past the
    # hold is charged from the balance, DESIGN section 6. A negative charge still is.)
    ("a negative charge", "requests",
     "UPDATE requests SET credits = -1 WHERE request_id = 'r-settled'",
     "revenue 1100 differs from the sum of charges 549"),
    ("a negative balance", "users",
     "UPDATE users SET balance = -1 WHERE name = 'bob'",
     "1 users with a negative balance"),
    ("a negative debt", "users",
     "UPDATE users SET owed = -1 WHERE name = 'bob'",
     "1 users with a negative balance"),
]


@pytest.mark.parametrize(("what", "table", "statement", "problem"), GUARDED, ids=[g[0] for g in GUARDED])
async def test_guarded_invariants_are_refused_and_still_reported(books: AsyncConnection, what: str, table: str,
                                                                 statement: str, problem: str) -> None:
    async with books.transaction(force_rollback=True):
        with pytest.raises(psycopg.errors.CheckViolation) as refused:
            await books.execute(statement)
    constraint = refused.value.diag.constraint_name
    assert constraint
    await books.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{constraint}"')
    problems = await _broken(books, statement)
    assert any(problem in p for p in problems), (what, problems)


async def test_a_debt_is_collected_first_from_the_next_credit(books: AsyncConnection) -> None:
    """carol owes 550 (her refunded order's call): a top-up pays it first, in the same
    statement, with its ledger movement; the books still verify."""
    carol = (await (await books.execute("SELECT id FROM users WHERE name = 'carol'")).fetchone())[0]
    user = await store.top_up(books, carol, 300, "ref-carol", "topup")
    assert (user.balance, (await _owed(books, carol))) == (0, 250)
    user = await store.top_up(books, carol, 1_000_000, "ref-carol-2", "topup")
    assert (user.balance, (await _owed(books, carol))) == (999_750, 0)
    # All of the debt, 2 credits: 1.99945 when the hold was released, the last 550 now.
    cur = await books.execute("SELECT account, sum(amount)::bigint FROM ledger WHERE kind = 'collect'"
                              " AND user_id = %s GROUP BY account ORDER BY account", (carol,))
    assert await cur.fetchall() == [("available", -2_000_000), ("owed", 2_000_000)]
    assert (await store.verify_ledger(books))["problems"] == []


async def _owed(conn: AsyncConnection, user_id: int) -> int:
    return (await (await conn.execute("SELECT owed FROM users WHERE id = %s", (user_id,))).fetchone())[0]
