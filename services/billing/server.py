"""Build, start and stop the billing service."""
from __future__ import annotations

import asyncio
import logging

from chatkore.v1 import billing_pb2_grpc
from services.billing.books import Books
from services.billing.config import BillingConfig
from services.billing.prices import PriceBook
from services.billing.pricing import Rates
from services.billing.servicer import BillingServicer
from services.billing.till import Till
from services.common import db, grpcserver, metrics

log = logging.getLogger(__name__)


async def _count_holds(books: Books, interval_s: float) -> None:
    """Keep the open-holds gauge current (one indexed count per interval)."""
    while True:
        try:
            metrics.HOLDS_OPEN.set(await books.open_holds())
        except Exception as exc:  # the database may be away; the next round tries again
            log.debug("counting open holds failed: %s", exc)
        await asyncio.sleep(interval_s)


async def serve(cfg: BillingConfig) -> None:
    pool = await db.open_pool(cfg.database_url.reveal(), name="billing", max_size=cfg.pool_size)
    prices = PriceBook(pool)
    await prices.start()
    books = Books(pool, prices, hold_ttl_s=cfg.hold_ttl_s, signup_credits=cfg.signup_credits,
                  writer_url=cfg.database_url.reveal())
    books.start()
    rates = Rates(cny=cfg.credits_per_cny, usd=cfg.credits_per_usd)
    till = Till(pool, rates, cfg.payments)
    sweeper = asyncio.create_task(books.sweep_forever(cfg.sweep_interval_s))
    counter = asyncio.create_task(_count_holds(books, cfg.sweep_interval_s))
    try:
        await grpcserver.serve(
            name="billing",
            listen=cfg.listen,
            register=lambda server: billing_pb2_grpc.add_BillingServicer_to_server(
                BillingServicer(books, rates, till), server),
            ready=lambda: db.ping(pool),
            pool=pool,
            grace_s=cfg.grace_s,
            telemetry=cfg.telemetry,
            tls=cfg.tls,
            health_listen=cfg.health_listen,
        )
    finally:
        sweeper.cancel()
        counter.cancel()
        await books.stop()  # after the server: the calls it drained needed the writer
        await prices.stop()
        await pool.close()
