"""The price list, cached in memory and refreshed so admin changes apply within a second."""
from __future__ import annotations

import asyncio
import logging

from psycopg_pool import AsyncConnectionPool

from services.billing import store
from services.billing.pricing import Price

log = logging.getLogger(__name__)


class PriceBook:
    def __init__(self, pool: AsyncConnectionPool, refresh_s: float = 0.5) -> None:
        self._pool = pool
        self._refresh_s = refresh_s
        self._prices: dict[str, Price] = {}
        # Prices saved here while a reload's read is in flight: that read may predate the save
        # and must not put the old row back (a change applies to the next call, not 0.5 s later).
        self._saved_during_reload: dict[str, Price] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.reload()
        self._task = asyncio.create_task(self._refresh_forever())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()

    async def reload(self) -> None:
        saved: dict[str, Price] = {}
        self._saved_during_reload = saved
        try:
            async with self._pool.connection() as conn:
                fresh = {p.model: p for p in await store.list_prices(conn)}
        finally:
            self._saved_during_reload = None
        fresh.update(saved)
        self._prices = fresh

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.reload()
            except Exception as exc:  # keep serving the last good list while the database is away
                log.warning("price refresh failed: %s", exc)

    async def get(self, model: str) -> Price | None:
        price = self._prices.get(model)
        if price is None:
            # A model priced a moment ago on another replica: ask the database once.
            async with self._pool.connection() as conn:
                price = await store.get_price(conn, model)
            if price is not None:
                self._prices[model] = price
        return price

    def put(self, price: Price) -> None:
        """A price this replica has just committed."""
        self._prices[price.model] = price
        if self._saved_during_reload is not None:
            self._saved_during_reload[price.model] = price
