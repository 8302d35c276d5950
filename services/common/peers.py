"""gRPC channels to peer services: balanced, kept alive, carrying the request id, with
deadlines on every call and a retry on another replica where repeating a call is safe."""
from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from typing import Any

import grpc

from services.common import mtls, telemetry
from services.common.errors import detail_of
from services.common.logs import request_id_var
from services.common.mtls import GrpcTls

log = logging.getLogger(__name__)

CLIENT_OPTIONS = [
    # dns:/// targets resolve to every replica behind a headless Service.
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.keepalive_time_ms", 20000),
    ("grpc.keepalive_timeout_ms", 5000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.enable_retries", 1),
    ("grpc.dns_min_time_between_resolutions_ms", 1000),
    # A peer that restarts (a crash, a rolling update) is back in use within a second or
    # two, not after gRPC's default back-off of up to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]

# A call made without a deadline gets this one: no call may wait forever on a lost peer.
DEFAULT_DEADLINE_S = 30.0

# Calls a second replica may repeat without changing the outcome: reads, and writes keyed so
# that a repeat lands on the same row (Reserve and Settle by request id, Relay because it only
# reserves and settles by its request id). CreateUser, TopUp without a reference, CreateKey,
# CreateChannel, DeleteChannel, CreateRedeemCodes and Redeem are not here: a repeat of one that
# did run would act twice or answer with a misleading error.
IDEMPOTENT = frozenset({
    "/chatkore.v1.Auth/Authenticate", "/chatkore.v1.Auth/AuthorizeAdmin", "/chatkore.v1.Auth/ListKeys",
    "/chatkore.v1.Auth/RevokeKey", "/chatkore.v1.Auth/KeyChanges",
    "/chatkore.v1.Billing/Reserve", "/chatkore.v1.Billing/Settle", "/chatkore.v1.Billing/GetUser",
    "/chatkore.v1.Billing/SetPrice", "/chatkore.v1.Billing/ListPrices", "/chatkore.v1.Billing/ListUsage",
    "/chatkore.v1.Billing/GetSpend", "/chatkore.v1.Billing/VerifyLedger",
    "/chatkore.v1.Inference/Relay", "/chatkore.v1.Inference/ListModels", "/chatkore.v1.Inference/ListChannels",
    "/chatkore.v1.Inference/UpdateChannel",
})
ATTEMPTS = 3
BACKOFF_S = (0.02, 0.1)  # before the 2nd and 3rd attempt: time for the balancer to drop a dead replica
# A settlement that billing could not take is retried in the background; the pause between
# tries doubles up to this (times 0.5-1.5 jitter). Billing's sweeper waits out one such pause
# after it starts, so settlements held back by its absence land before it sweeps their holds.
SETTLE_RETRY_MAX_PAUSE_S = 5.0
SETTLE_RETRY_LONGEST_WAIT_S = SETTLE_RETRY_MAX_PAUSE_S * 1.5 + 1.0


def transport_failure(err: grpc.aio.AioRpcError) -> bool:
    """The call failed on the way (a replica died, a connection broke), not in a service's own logic.

    A service's own UNAVAILABLE (an upstream failed, the database is away) carries an
    ErrorDetail; a broken connection or a refused stream carries none.
    """
    return err.code() == grpc.StatusCode.UNAVAILABLE and detail_of(err) is None


# Which try at a call this is (0 for the first), sent as TRY_HEADER on a retry so that the
# callee can order the attempts at one request without trusting clocks. A stream's reader
# (edge/sse.py), which does its own retrying, sets it before opening the stream again.
TRY_HEADER = "x-chatkore-try"
try_var: contextvars.ContextVar[int] = contextvars.ContextVar("chatkore_try", default=0)


def try_of(metadata: Any) -> int:
    """The try number a caller sent (0 when absent or not a small number)."""
    for key, value in metadata or ():
        if key == TRY_HEADER:
            return int(value) if isinstance(value, str) and value.isdigit() and len(value) <= 2 else 0
    return 0


def _details(details: grpc.aio.ClientCallDetails, timeout: float | None, tried: int = 0) -> grpc.aio.ClientCallDetails:
    metadata = details.metadata
    rid = request_id_var.get()
    if rid or tried:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        if rid:
            metadata.add("x-request-id", rid)
        if tried:
            metadata.add(TRY_HEADER, str(tried))
    return grpc.aio.ClientCallDetails(details.method, timeout, metadata, details.credentials, details.wait_for_ready)


# grpc.aio files an interceptor under its first matching kind only, so one class serves
# unary calls and another streams.


class UnaryInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Request id into the metadata, a deadline on every call, idempotent calls retried."""

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        timeout = details.timeout if details.timeout is not None else DEFAULT_DEADLINE_S
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        if method not in IDEMPOTENT:
            return await continuation(_details(details, timeout), request)
        deadline = time.monotonic() + timeout
        for attempt in range(ATTEMPTS):
            call = await continuation(_details(details, max(0.001, deadline - time.monotonic()), attempt), request)
            try:
                await call
                return call
            except grpc.aio.AioRpcError as err:
                if not transport_failure(err) or attempt == ATTEMPTS - 1:
                    return call  # the caller sees the failure when it awaits the call
                pause = BACKOFF_S[attempt]
                if time.monotonic() + pause >= deadline:
                    return call
                log.warning("%s lost its replica (%s); trying again", method, err.details())
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")


class StreamInterceptor(grpc.aio.UnaryStreamClientInterceptor):
    """Request id into the metadata and a deadline on every stream."""

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        # A stream is retried by its reader (edge/sse.py), which knows whether anything was relayed.
        timeout = details.timeout if details.timeout is not None else DEFAULT_DEADLINE_S
        return await continuation(_details(details, timeout, try_var.get()), request)


def channel(target: str, peer: str, tls: GrpcTls) -> grpc.aio.Channel:
    """A channel to the service `peer` at `target`, authenticated both ways by `tls` (services/common/mtls.py)."""
    return mtls.secure_channel(tls, target, peer, CLIENT_OPTIONS,
                               [UnaryInterceptor(), StreamInterceptor(), *telemetry.client_interceptors()])
