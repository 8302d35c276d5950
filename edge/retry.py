"""The one place a call is made again: the edge repeats a call whose replica was lost on the way.

A call that failed in transport (a replica died or is stopping, a connection broke: no
ErrorDetail, peers.transport_failure) and is safe to repeat goes again, and the balancer sends
it to another replica. Nothing behind the edge retries a call a client waits for (inference
and auth make each billing call once), so one client call is at most ATTEMPTS tries of anything.

Each try at a relayed call carries its number (RelayRequest.try_number: 1, 2, 3), which
inference passes to billing: billing orders a call's holds by it, so a retry takes over what an
earlier try held and a late earlier try moves nothing (billing.proto ReserveRequest).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from services.common import peers

log = logging.getLogger(__name__)

# Calls a second replica may repeat without changing the outcome: reads, and writes keyed so
# that a repeat lands on the same row (Relay because it only reserves and settles by its request
# id, a later try taking over an earlier one's hold). CreateUser, TopUp without a reference,
# CreateKey, CreateChannel, DeleteChannel, CreateRedeemCodes and Redeem are not here: a repeat of
# one that did run would act twice or answer with a misleading error. RelayStream is repeated by
# its reader (first_event), which knows whether anything reached the client.
IDEMPOTENT = frozenset({
    "/chatkore.v1.Auth/Authenticate", "/chatkore.v1.Auth/AuthorizeAdmin", "/chatkore.v1.Auth/ListKeys",
    "/chatkore.v1.Auth/RevokeKey", "/chatkore.v1.Auth/KeyChanges", "/chatkore.v1.Auth/GetNotice",
    "/chatkore.v1.Billing/GetBalanceAlert",
    "/chatkore.v1.Billing/GetUser", "/chatkore.v1.Billing/SetPrice", "/chatkore.v1.Billing/ListPrices",
    "/chatkore.v1.Billing/ListUsage", "/chatkore.v1.Billing/GetSpend", "/chatkore.v1.Billing/VerifyLedger",
    "/chatkore.v1.Inference/Relay", "/chatkore.v1.Inference/ListModels", "/chatkore.v1.Inference/ListChannels",
    "/chatkore.v1.Inference/UpdateChannel",
})
ATTEMPTS = 3
BACKOFF_S = (0.02, 0.1)  # before the 2nd and 3rd try: time for the balancer to drop a dead replica

M = TypeVar("M", bound=Message)


def numbered(request: M, try_number: int) -> M:
    """`request` as try `try_number` (1 for the first) when its message carries one; else as is."""
    if "try_number" not in request.DESCRIPTOR.fields_by_name or request.try_number == try_number:  # type: ignore[attr-defined]
        return request
    numbered_copy = type(request)()
    numbered_copy.CopyFrom(request)
    numbered_copy.try_number = try_number  # type: ignore[attr-defined]
    return numbered_copy


def _with_timeout(details: grpc.aio.ClientCallDetails, timeout: float) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(details.method, timeout, details.metadata, details.credentials,
                                      details.wait_for_ready)


class RetryInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Idempotent unary calls lost in transport go again, numbered, within the call's one deadline."""

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        if method not in IDEMPOTENT:
            return await continuation(details, request)
        timeout = details.timeout if details.timeout is not None else peers.DEFAULT_DEADLINE_S
        deadline = time.monotonic() + timeout
        for tried in range(ATTEMPTS):
            remaining = max(0.001, deadline - time.monotonic())
            call = await continuation(_with_timeout(details, remaining), numbered(request, tried + 1))
            try:
                await call
                return call
            except grpc.aio.AioRpcError as err:
                if not peers.transport_failure(err) or tried == ATTEMPTS - 1:
                    return call  # the caller sees the failure when it awaits the call
                pause = BACKOFF_S[tried]
                if time.monotonic() + pause >= deadline:
                    return call
                log.warning("%s lost its replica (%s); trying again", method, err.details())
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")


class Opened:
    """The stream being read (the last one tried), so that whoever leaves early can cancel it."""

    call: grpc.aio.UnaryStreamCall | None = None


async def first_event(open_call: Callable[[int], grpc.aio.UnaryStreamCall], opened: Opened) -> object:
    """A stream's first event; a stream whose replica was lost before it is opened again as the
    next try (`open_call(try_number)`): nothing had reached the client yet."""
    for tried in range(ATTEMPTS):
        opened.call = open_call(tried + 1)
        try:
            return await opened.call.read()  # a failure here raises, and becomes an ordinary error reply
        except grpc.aio.AioRpcError as err:
            if not peers.transport_failure(err) or tried == ATTEMPTS - 1:
                raise
            log.warning("relay stream lost its replica before the first event; trying again")
        await asyncio.sleep(BACKOFF_S[tried])
    raise AssertionError("unreachable")
