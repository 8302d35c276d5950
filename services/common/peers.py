"""gRPC channels to peer services: balanced, kept alive, carrying the request id, with a
deadline on every call. Calls are not repeated here: the edge alone makes a call again on
another replica (edge/retry.py)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from services.common import mtls, telemetry
from services.common.config import ConfigError, env_optional
from services.common.errors import detail_of
from services.common.logs import request_id_var
from services.common.mtls import GrpcTls
from services.common.mux import MuxChannel

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


def _details(details: grpc.aio.ClientCallDetails, timeout: float | None) -> grpc.aio.ClientCallDetails:
    metadata = details.metadata
    rid = request_id_var.get()
    if rid:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add("x-request-id", rid)
    return grpc.aio.ClientCallDetails(details.method, timeout, metadata, details.credentials, details.wait_for_ready)


# grpc.aio files an interceptor under its first matching kind only, so one class serves
# unary calls and another streams.


class UnaryInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Request id into the metadata and a deadline on every call."""

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        timeout = details.timeout if details.timeout is not None else DEFAULT_DEADLINE_S
        return await continuation(_details(details, timeout), request)


class StreamInterceptor(grpc.aio.UnaryStreamClientInterceptor):
    """Request id into the metadata and a deadline on every stream."""

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        timeout = details.timeout if details.timeout is not None else DEFAULT_DEADLINE_S
        return await continuation(_details(details, timeout), request)


MUX_VAR = "CHATKORE_GRPC_MUX"


def mux_enabled() -> bool:
    """Whether calls to peers go over multiplexed streams (services/common/mux.py): yes unless `CHATKORE_GRPC_MUX=0`."""
    flag = env_optional(MUX_VAR)
    if flag not in (None, "0", "1"):
        raise ConfigError(f"{MUX_VAR} must be 0 or 1, got {flag!r}")
    return flag != "0"


def channel(target: str, peer: str, tls: GrpcTls, outer: Sequence[grpc.aio.ClientInterceptor] = (), *,
            mux: bool | None = None, affinity: bool = False) -> grpc.aio.Channel | MuxChannel:
    """A channel to the service `peer` at `target`, authenticated both ways by `tls` (services/common/mtls.py).
    `outer` interceptors see each call before the request id and deadline are added (the edge's retry).

    A MuxChannel (one long-lived stream per replica carrying every call; the same interceptors)
    unless `mux` is off: by default CHATKORE_GRPC_MUX (on unless 0), read when the channel is made, at start-up.
    `affinity`: a request's calls all go to one replica, chosen by its request id (mux.py)."""
    interceptors = [*outer, UnaryInterceptor(), StreamInterceptor(), *telemetry.client_interceptors()]
    if mux_enabled() if mux is None else mux:
        return MuxChannel(target, peer, tls, CLIENT_OPTIONS, interceptors, affinity=affinity)
    return mtls.secure_channel(tls, target, peer, CLIENT_OPTIONS, interceptors)
