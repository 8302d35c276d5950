"""Reads after writes: a call's settlement follows its reply (issue 16), so before the edge
serves a read of balances or usage it waits, briefly, for the calls it has answered to settle."""
from __future__ import annotations

import logging
import time

import grpc
from aiohttp import web

from chatkore.v1 import billing_pb2
from edge.state import PEERS

log = logging.getLogger(__name__)

READS = ("/api/", "/admin/", "/v1/dashboard/")  # what shows balances, usage and the books
WAIT_MS = 2000        # a settlement lands in milliseconds; past this the read goes ahead
FORGET_AFTER_S = 10.0  # an answered call not seen settled by then is the sweeper's business
MAX_AWAITED = 1024


class AnsweredCalls:
    """Request ids of relayed calls this edge answered whose settlement it has not seen land."""

    def __init__(self) -> None:
        self._ids: dict[str, float] = {}

    def answered(self, request_id: str) -> None:
        self._ids[request_id] = time.monotonic()
        if len(self._ids) > 4 * MAX_AWAITED:
            for rid in list(self._ids)[: len(self._ids) - MAX_AWAITED]:
                del self._ids[rid]

    def pending(self) -> list[str]:
        return list(self._ids)[-MAX_AWAITED:]

    def seen_settled(self, request_ids: list[str], still_held: set[str]) -> None:
        stale = time.monotonic() - FORGET_AFTER_S
        for rid in request_ids:
            if rid not in still_held or self._ids.get(rid, 0.0) < stale:
                self._ids.pop(rid, None)


ANSWERED = web.AppKey("answered_calls", AnsweredCalls)


@web.middleware
async def read_after_write(request: web.Request, handler: web.RequestHandler) -> web.StreamResponse:
    answered = request.app[ANSWERED]
    if request.path.startswith(READS) and request.method != "OPTIONS":
        ids = answered.pending()
        if ids:
            try:
                reply = await request.app[PEERS].billing.AwaitSettled(
                    billing_pb2.AwaitSettledRequest(request_ids=ids, timeout_ms=WAIT_MS),
                    timeout=WAIT_MS / 1000 + 1)
                answered.seen_settled(ids, set(reply.still_held))
            except grpc.aio.AioRpcError as exc:  # a read is never refused for this; it may lag
                log.warning("could not wait for settlements before a read: %s", exc.code().name)
    try:
        return await handler(request)
    finally:
        if request.get("relayed"):
            answered.answered(request["request_id"])
