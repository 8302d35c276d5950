"""Billing's writer and callers that leave: a hold committed after its caller's Reserve was
cancelled is released by the writer itself, at once — not left to the sweeper (the caller,
gone, never learns it was placed), and never charged.

The writer's batch is held at its first statement by a lock another session keeps on the
user's row, so the cancellation certainly arrives while the hold is being written."""
from __future__ import annotations

import asyncio

import psycopg
from psycopg import AsyncConnection

from services.billing.batcher import Batcher, HoldAsk
from services.billing.pricing import TokenRates
from tests.writer import books_balanced, writer

RATES = TokenRates(1_500, 2_000, 1_500, 1_500, 0)


async def _no_retried(conn: psycopg.AsyncConnection, ask: HoldAsk) -> int | None:
    raise AssertionError("no retried attempt here")


async def _closed(url: str, request_id: str) -> tuple:
    """(state, status, credits) of the call once its hold is no longer open."""
    async with asyncio.timeout(30):
        while True:
            async with await AsyncConnection.connect(url, autocommit=True) as conn:
                row = await (await conn.execute("SELECT state, status, credits FROM requests WHERE request_id = %s",
                                                (request_id,))).fetchone()
            if row is not None and row[0] != "held":
                return row
            await asyncio.sleep(0.02)


async def test_a_hold_whose_caller_left_while_it_was_written_is_released(make_database) -> None:
    url = make_database()
    async with writer(url, "leaver", _no_retried) as (batcher, user_id):
        async with await AsyncConnection.connect(url) as blocker:
            await blocker.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", (user_id,))
            ask = HoldAsk("r-left", user_id, 1, 0, "m", RATES, 10, 2_000_000, 1, 0, 1)
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
        assert await _closed(url, "r-left") == ("released", "client_gone", 0)
        assert caller.cancelled()
        await books_balanced(url, user_id)


async def test_a_hold_whose_caller_left_as_its_answer_came_is_released(make_database, monkeypatch) -> None:
    """The caller is cancelled after the writer committed its hold and answered, before the caller
    ran again: the answer is lost with it, so the writer releases the hold."""
    callers: list[asyncio.Task[int]] = []
    commit = Batcher._commit

    async def commit_then_cancel(self: Batcher, batch: list) -> None:  # noqa: ANN001 - the batcher's items
        await commit(self, batch)  # the hold is committed and its caller's future has the amount
        for caller in callers:
            caller.cancel()  # before the caller has run again

    monkeypatch.setattr(Batcher, "_commit", commit_then_cancel)
    url = make_database()
    async with writer(url, "late-leaver", _no_retried) as (batcher, user_id):
        callers.append(asyncio.create_task(batcher.reserve(
            HoldAsk("r-answered", user_id, 1, 0, "m", RATES, 10, 2_000_000, 1, 0, 1))))
        callers_done = await asyncio.wait(callers, timeout=30)
        assert not callers_done[1] and callers[0].cancelled()
        callers.clear()
        assert await _closed(url, "r-answered") == ("released", "client_gone", 0)
        await books_balanced(url, user_id)
