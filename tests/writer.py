"""Billing's writer run inside the test process on a database of its own (no stack): an
account to bill and the books to check afterwards."""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from psycopg import AsyncConnection

from services.billing import store
from services.billing.batcher import Batcher, Retried

CREDITS = 10_000_000  # each test account's starting balance (micro-credits)


@asynccontextmanager
async def writer(url: str, name: str, retried: Retried) -> AsyncIterator[tuple[Batcher, int]]:
    """A started writer on `url` and the id of a fresh account with CREDITS; stopped on leaving."""
    async with await AsyncConnection.connect(url, autocommit=True) as conn:
        user = await store.create_user(conn, name, CREDITS)
    batcher = Batcher(url, hold_ttl_s=600, retried=retried)
    batcher.start()
    try:
        yield batcher, user.id
    finally:
        await batcher.stop()


async def books_balanced(url: str, user_id: int, charged: int = 0) -> None:
    """The account paid exactly `charged` and holds nothing; the ledger verifies with no hold open."""
    async with await AsyncConnection.connect(url, autocommit=True) as conn:
        account = await store.get_user(conn, user_id)
        assert (account.balance, account.held) == (CREDITS - charged, 0)
        report = await store.verify_ledger(conn)
        assert report["problems"] == [] and report["open_holds"] == 0, report
