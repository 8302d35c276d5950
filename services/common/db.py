"""One PostgreSQL pool per process; the caller owns the transaction."""
from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger(__name__)


class PoolCollector(Collector):
    """Connection-pool usage, read from psycopg_pool when scraped (no per-query cost)."""

    def __init__(self) -> None:
        self._pools: dict[str, AsyncConnectionPool] = {}

    def watch(self, name: str, pool: AsyncConnectionPool) -> None:
        self._pools[name] = pool

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("chatkore_db_pool_connections",
                                   "PostgreSQL pool: size, max, idle connections and callers waiting",
                                   labels=["pool", "state"])
        for name, pool in self._pools.items():
            stats = pool.get_stats()
            for state, key in (("size", "pool_size"), ("max", "pool_max"), ("idle", "pool_available"),
                               ("waiting", "requests_waiting")):
                family.add_metric([name, state], stats.get(key, 0))
        yield family


POOLS = PoolCollector()
REGISTRY.register(POOLS)


async def open_pool(url: str, *, name: str, min_size: int = 2, max_size: int = 20) -> AsyncConnectionPool:
    """Open a pool of autocommit connections and wait until it can serve."""
    pool = AsyncConnectionPool(
        url,
        open=False,
        min_size=min_size,
        max_size=max_size,
        name=name,
        # Waiting longer for a connection only delays the 503 a caller gets while the
        # database is away.
        timeout=2.0,
        kwargs={"autocommit": True, "application_name": f"chatkore-{name}"},
    )
    await pool.open(wait=True, timeout=30.0)
    POOLS.watch(name, pool)
    return pool


async def ping(pool: AsyncConnectionPool) -> bool:
    try:
        async with pool.connection(timeout=2.0) as conn:
            await conn.execute("SELECT 1")
        return True
    except Exception:  # any failure means "not reachable now"
        return False
