"""Billing's in-memory price list: a change an operator has saved applies to the next call.

The list is reloaded from PostgreSQL every half second; a reload whose read began before a
save must not put the old row back afterwards (it did: a call right after `PUT
/admin/v1/prices/{model}` was held and charged at the old price).
"""
from __future__ import annotations

import asyncio
from dataclasses import replace

from psycopg_pool import AsyncConnectionPool

from services.billing import store
from services.billing.prices import PriceBook
from services.billing.pricing import Price

OLD = Price(model="m-price-book", prompt=1_500, completion=2_000, min_charge=0, context_window=16_385,
            max_output_tokens=4_096)


async def test_a_price_saved_while_a_reload_reads_is_not_undone(make_database, monkeypatch) -> None:
    pool = AsyncConnectionPool(make_database(), min_size=1, max_size=2, open=False)
    await pool.open()
    try:
        async with pool.connection() as conn:
            await store.upsert_price(conn, OLD, frozenset())
        book = PriceBook(pool)
        await book.reload()
        read, release = asyncio.Event(), asyncio.Event()
        list_prices = store.list_prices

        async def read_then_wait(conn):  # noqa: ANN001, ANN202 - store.list_prices' own signature
            rows = await list_prices(conn)  # the old row, read before the save below
            read.set()
            await release.wait()
            return rows

        monkeypatch.setattr(store, "list_prices", read_then_wait)
        reloading = asyncio.create_task(book.reload())
        await asyncio.wait_for(read.wait(), 30)
        async with pool.connection() as conn:
            saved = await store.upsert_price(conn, replace(OLD, prompt=2_000, completion=8_000), frozenset())
        book.put(saved)
        release.set()
        await asyncio.wait_for(reloading, 30)
        price = await book.get(OLD.model)
        assert price is not None and (price.prompt, price.completion) == (2_000, 8_000)
        # The next reload reads the saved row itself.
        monkeypatch.setattr(store, "list_prices", list_prices)
        await book.reload()
        price = await book.get(OLD.model)
        assert price is not None and (price.prompt, price.completion) == (2_000, 8_000)
    finally:
        await pool.close()
