"""One PostgreSQL pool per process; the caller owns the transaction."""
from __future__ import annotations

import logging

from psycopg_pool import AsyncConnectionPool

from services.common import metrics

log = logging.getLogger(__name__)


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
    metrics.POOLS.watch(name, pool)
    return pool


async def ping(pool: AsyncConnectionPool) -> bool:
    try:
        async with pool.connection(timeout=2.0) as conn:
            await conn.execute("SELECT 1")
        return True
    except Exception:  # any failure means "not reachable now"
        return False
