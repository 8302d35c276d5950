"""gRPC channels to peer services: balanced, kept alive, carrying the request id."""
from __future__ import annotations

from typing import Any

import grpc

from services.common.logs import request_id_var

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


def _with_request_id(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    rid = request_id_var.get()
    if not rid:
        return details
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    metadata.add("x-request-id", rid)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class RequestIdInterceptor(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_request_id(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_request_id(details), request)


def channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=CLIENT_OPTIONS, interceptors=[RequestIdInterceptor()])
