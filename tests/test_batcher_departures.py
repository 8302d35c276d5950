"""Billing's writer and callers that leave: a hold committed after its caller's Reserve was
cancelled is released by the writer itself, at once — not left to the sweeper (the caller,
gone, never learns it was placed), and never charged.

The writer's batch is held at its first statement by a lock another session keeps on the
user's row, so the cancellation certainly arrives while the hold is being written."""
from __future__ import annotations

import asyncio

import psycopg
from psycopg import AsyncConnection

from services.billing import store
from services.billing.batcher import Batcher, HoldAsk
from services.billing.pricing import TokenRates

RATES = TokenRates(1_500, 2_000, 1_500, 1_500, 0)


async def test_a_hold_whose_caller_left_while_it_was_written_is_released(make_database) -> None:
    url = make_database()
    async with await AsyncConnection.connect(url, autocommit=True) as conn:
        user = await store.create_user(conn, "leaver", 10_000_000)

    async def retried(conn: psycopg.AsyncConnection, ask: HoldAsk) -> int | None:
        raise AssertionError("no retried attempt here")

    batcher = Batcher(url, hold_ttl_s=600, retried=retried)
    batcher.start()
    try:
        async with await AsyncConnection.connect(url) as blocker:
            await blocker.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", (user.id,))
            ask = HoldAsk("r-left", user.id, 1, 0, "m", RATES, 10, 2_000_000, 1, 0, 1)
            caller = asyncio.create_task(batcher.reserve(ask))
            async with await AsyncConnection.connect(url, autocommit=True) as watcher:
                async def writer_waits() -> bool:
                    cur = await watcher.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'chatkore-billing-writer'"
                        " AND wait_event_type = 'Lock' AND datname = current_database()")
                    return (await cur.fetchone())[0] == 1

                async with asyncio.timeout(30):
                    while not await writer_waits():  # the batch has the hold and waits for the row
                        await asyncio.sleep(0.02)
            caller.cancel()  # the caller leaves while its hold is being written
            await blocker.rollback()  # the batch goes on and commits the hold
        async with asyncio.timeout(30):
            while True:
                async with await AsyncConnection.connect(url, autocommit=True) as conn:
                    row = await (await conn.execute(
                        "SELECT state, status, credits FROM requests WHERE request_id = 'r-left'")).fetchone()
                    if row is not None and row[0] != "held":
                        break
                await asyncio.sleep(0.02)
        assert row == ("released", "client_gone", 0)
        assert caller.cancelled()
        async with await AsyncConnection.connect(url, autocommit=True) as conn:
            account = await store.get_user(conn, user.id)
            assert (account.balance, account.held) == (10_000_000, 0)
            report = await store.verify_ledger(conn)
            assert report["problems"] == [] and report["open_holds"] == 0, report
    finally:
        await batcher.stop()
