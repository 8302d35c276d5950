"""Prometheus metrics of every chatkore process.

Each process registers only what it records; names are shared so dashboards sum across
replicas. Labels are bounded: routes are route patterns, models only ones that a channel
serves, channels by id. This module needs nothing but prometheus_client, so importing it
costs no process a web framework or a database driver: the page that shows the metrics is
services/common/metrics_http.py (or the edge's own route), the pool gauges live in
services/common/db.py.
"""
from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

# From a cached key check to a long completion.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

# --- edge -----------------------------------------------------------------------------
HTTP_REQUESTS = Counter("chatkore_http_requests_total", "HTTP requests answered by the edge",
                        ["route", "model", "status"])
HTTP_LATENCY = Histogram("chatkore_http_request_duration_seconds",
                         "Time to answer an HTTP request (a stream: until its end)", ["route", "model"],
                         buckets=LATENCY_BUCKETS)
FIRST_CHUNK = Histogram("chatkore_http_first_chunk_seconds", "Time from request to the first streamed chunk",
                        ["model"], buckets=LATENCY_BUCKETS)
STREAMS = Gauge("chatkore_http_streams_in_flight", "Event streams being relayed to clients now")

# --- gRPC services --------------------------------------------------------------------
RPCS = Counter("chatkore_grpc_requests_total", "gRPC calls served", ["method", "code"])
RPC_LATENCY = Histogram("chatkore_grpc_request_duration_seconds", "Time to serve a gRPC call (a stream: its end)",
                        ["method"], buckets=LATENCY_BUCKETS)

# --- inference ------------------------------------------------------------------------
UPSTREAM = Counter("chatkore_upstream_requests_total",
                   "Upstream calls by channel and outcome (ok, connect, timeout, rate_limited, server, auth, rejected)",
                   ["channel", "outcome"])
UPSTREAM_LATENCY = Histogram("chatkore_upstream_response_seconds", "Time until an upstream answered (headers)",
                             ["channel"], buckets=LATENCY_BUCKETS)
UNBILLED = Counter("chatkore_upstream_unbilled_tokens_total",
                   "Tokens an upstream may bill for attempts that failed on its side (free for the client)",
                   ["reason"])
TOKENS = Counter("chatkore_tokens_total", "Tokens of completed calls", ["model", "kind"])

# --- billing --------------------------------------------------------------------------
CREDITS = Counter("chatkore_credits_charged_total", "Credits charged at settlement, by how the request ended",
                  ["status"])
UNPAID = Counter("chatkore_unpaid_credits_total",
                 "Credits of usage that neither hold nor balance could pay (over_hold: usage past the hold;"
                 " late: settled after its hold was swept)", ["reason"])
BATCH_SIZE = Histogram("chatkore_billing_batch_size",
                       "Holds, settlements and heartbeats committed together by billing's writer",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
BATCH_QUEUE = Gauge("chatkore_billing_queued", "Holds, settlements and heartbeats waiting for billing's writer")
HOLDS_OPEN = Gauge("chatkore_holds_open", "Holds not yet settled (all replicas: the database's count)")
NOTIFICATIONS_DROPPED = Counter(
    "chatkore_payment_notifications_dropped_total",
    "Unverified payment notifications answered but not stored: over the limit per source address (source) or"
    " in all (total), per minute", ["provider", "limit"])


T = TypeVar("T")


def upstream_call(post: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Count an upstream call by channel and outcome (the failure's `kind`), and time its answer."""

    @functools.wraps(post)
    async def observed(self: Any, target: Any, *args: Any, **kwargs: Any) -> T:
        started = time.perf_counter()
        label = str(getattr(target, "channel", target).id)  # a Channel, or an exchange with one
        try:
            response = await post(self, target, *args, **kwargs)
        except Exception as exc:
            kind = getattr(exc, "kind", None)
            UPSTREAM.labels(label, getattr(kind, "value", "error")).inc()
            raise
        UPSTREAM.labels(label, "ok").inc()
        UPSTREAM_LATENCY.labels(label).observe(time.perf_counter() - started)
        return response

    return observed


def exposition() -> tuple[bytes, str]:
    """The text every /metrics page answers with, and its Content-Type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
