"""Build, start and stop the billing service."""
from __future__ import annotations

import asyncio

from chatkore.v1 import billing_pb2_grpc
from services.billing.books import Books
from services.billing.config import BillingConfig
from services.billing.prices import PriceBook
from services.billing.servicer import BillingServicer
from services.common import db, grpcserver


async def serve(cfg: BillingConfig) -> None:
    pool = await db.open_pool(cfg.database_url.reveal(), name="billing", max_size=cfg.pool_size)
    prices = PriceBook(pool)
    await prices.start()
    books = Books(pool, prices, hold_ttl_s=cfg.hold_ttl_s, signup_credits=cfg.signup_credits)
    sweeper = asyncio.create_task(books.sweep_forever(cfg.sweep_interval_s))
    try:
        await grpcserver.serve(
            name="billing",
            listen=cfg.listen,
            register=lambda server: billing_pb2_grpc.add_BillingServicer_to_server(BillingServicer(books), server),
            ready=lambda: db.ping(pool),
            pool=pool,
            grace_s=cfg.grace_s,
        )
    finally:
        sweeper.cancel()
        await prices.stop()
        await pool.close()
