"""Billing's writer and its prepared statements: a small batch runs statements PREPAREd on the
writer's connection (BEGIN, the locks and COMMIT share messages), a large batch sends them one
by one. Nothing psycopg does on that connection may take the prepared statements away, and if
something else does, the writer goes on without them: one batch is answered UNAVAILABLE (its
callers try again), none is lost or charged twice."""
from __future__ import annotations

import asyncio
import secrets

import psycopg
import pytest
from psycopg import AsyncConnection

from services.billing import store
from services.billing.batcher import SMALL_BATCH, Batcher, HoldAsk, SettleAsk
from services.billing.pricing import TokenRates, Usage
from services.common.errors import Conflict, Unavailable
from tests.writer import books_balanced, writer

RATES = TokenRates(1_000_000, 1_000_000, 1_000_000, 1_000_000, 0)  # a credit per 1,000 tokens


def _hold(request_id: str, user_id: int, try_number: int = 1) -> HoldAsk:
    return HoldAsk(request_id, user_id, 1, 0, "m", RATES, 10, 20_000, 1_000, 0, try_number)


def _settle(request_id: str) -> SettleAsk:
    return SettleAsk(request_id, Usage(10, 5), "complete", "upstream", 0, 1, 0)


async def _refused(conn: psycopg.AsyncConnection, ask: HoldAsk) -> int | None:
    """A retried try the one-by-one rules refuse, after a statement in its savepoint."""
    await conn.execute("SELECT 1 FROM requests WHERE request_id = %s FOR UPDATE", (ask.request_id,))
    raise Conflict("a later try holds this call")


async def _large_batches(batcher: Batcher, user_id: int, rounds: int) -> list[str]:
    """`rounds` batches of SMALL_BATCH + 1 holds each (asked in one loop turn: one batch)."""
    placed = []
    for _ in range(rounds):
        ids = [f"big-{secrets.token_hex(6)}" for _ in range(SMALL_BATCH + 1)]
        amounts = await asyncio.gather(*(batcher.reserve(_hold(rid, user_id)) for rid in ids))
        assert amounts == [20_000] * len(ids)
        placed += ids
    return placed


async def test_a_rollback_on_the_writer_leaves_its_statements_in_place(make_database) -> None:
    """Large batches run the same statements again and again (psycopg would prepare them on its
    own and, having some, answer the next rollback with DEALLOCATE ALL); a refused retry rolls
    its savepoint back. The next lone Reserve and Settle still go through at the first try."""
    url = make_database()
    async with writer(url, "rollbacks", _refused) as (batcher, user_id):
        placed = await _large_batches(batcher, user_id, 6)
        with pytest.raises(Conflict):  # its row exists: a retried try, refused
            await batcher.reserve(_hold(placed[0], user_id, try_number=2))
        assert await batcher.reserve(_hold("alone", user_id)) == 20_000
        settled = [await batcher.settle(_settle(rid)) for rid in ["alone", *placed]]
        assert {s.charged for s in settled} == {15_000}
        await books_balanced(url, user_id, 15_000 * len(settled))


async def test_a_writer_whose_statements_are_taken_goes_on_without_them(make_database) -> None:
    """Something runs DEALLOCATE ALL on the writer's session (as a pooler lending it another
    server connection would leave it): the batch that meets it is answered UNAVAILABLE and
    nothing of it is written; its caller's next try, and every batch after, goes through."""
    url = make_database()
    async with writer(url, "deallocated", _refused) as (batcher, user_id):
        assert await batcher.reserve(_hold("first", user_id)) == 20_000
        session = batcher._conn
        assert session is not None
        await session.execute("DEALLOCATE ALL")
        with pytest.raises(Unavailable):
            await batcher.reserve(_hold("second", user_id))
        async with await AsyncConnection.connect(url, autocommit=True) as conn:
            assert await store.get_request(conn, "second") is None  # nothing of it was written
        assert await batcher.reserve(_hold("second", user_id)) == 20_000  # the caller's next try
        placed = await _large_batches(batcher, user_id, 1)
        settled = [await batcher.settle(_settle(rid)) for rid in ["first", "second", *placed]]
        assert {s.charged for s in settled} == {15_000}
        await books_balanced(url, user_id, 15_000 * len(settled))
