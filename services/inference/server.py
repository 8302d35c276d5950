"""Build, start and stop the inference service."""
from __future__ import annotations

import asyncio

from chatkore.v1 import inference_pb2_grpc
from services.common import db, grpcserver
from services.inference import tokens
from services.inference.billing_peer import BillingPeer
from services.inference.channels import ChannelBook
from services.inference.config import InferenceConfig
from services.inference.media import Media
from services.inference.relay import Relay
from services.inference.responses.book import ResponseBook
from services.inference.secretbox import SecretBox
from services.inference.servicer import InferenceServicer
from services.inference.upstream import Upstream

# Past the grace, how long the calls still running have to end once cut, their settlements
# sent and acknowledged by billing, before gRPC cancels what is left and the process exits.
CUT_SETTLE_S = 5.0


async def serve(cfg: InferenceConfig) -> None:
    pool = await db.open_pool(cfg.database_url.reveal(), name="inference", max_size=cfg.pool_size)
    book = ChannelBook(pool, SecretBox(cfg.secret_key), cooldown_s=cfg.cooldown_s,
                       failure_threshold=cfg.failure_threshold, destinations=cfg.destinations)
    await book.start()
    # Build the encodings of the models the channels serve before taking traffic, so the first
    # request does not pay for one; an encoding no model uses is never loaded (a channel added
    # later gets its model's encoding on its first count).
    await asyncio.to_thread(tokens.warm, list(book.models()))
    upstream = Upstream(cfg.upstream_timeout_s, cfg.destinations)
    await upstream.start()
    billing = BillingPeer(cfg.billing_addr, cfg.tls, cfg.settle_retry_s)
    responses = ResponseBook(pool)
    relay = Relay(book, upstream, billing, max_stream_s=cfg.max_stream_s, responses=responses,
                  max_json_nodes=cfg.max_json_nodes)

    async def cut_running() -> None:
        # The grace is over: the relay's calls still running are cut here, while the billing
        # channel is open (it closes only once the server has stopped, below), each settled for
        # what it relayed (relay.py); the wait for those settlements is bounded. Billing out of
        # reach for all of it leaves the holds open: billing's sweeper releases them after
        # CHATKORE_HOLD_TTL_S (for free), as for a process that is killed.
        deadline = asyncio.get_running_loop().time() + CUT_SETTLE_S
        await relay.calls.cut(CUT_SETTLE_S)
        await billing.drain(deadline - asyncio.get_running_loop().time())

    async def settle_pending() -> None:
        # Background responses get the grace period to finish; then streams cut by the shutdown
        # (and background responses ended by it) have queued their settlements: let them land.
        if relay.running is not None:
            await relay.running.stop(cfg.grace_s)
        await billing.drain(cfg.grace_s)

    try:
        await grpcserver.serve(
            name="inference",
            listen=cfg.listen,
            register=lambda server: inference_pb2_grpc.add_InferenceServicer_to_server(
                InferenceServicer(relay, book, responses, Media(book, upstream, billing, relay.calls)), server),
            ready=lambda: db.ping(pool),
            pool=pool,
            grace_s=cfg.grace_s,
            telemetry=cfg.telemetry,
            tls=cfg.tls,
            health_listen=cfg.health_listen,
            on_grace_over=cut_running,
            grace_over_s=CUT_SETTLE_S + 1.0,
            on_draining=settle_pending,
        )
    finally:
        await book.stop()
        await upstream.close()
        await billing.close()
        await pool.close()
