"""Prometheus metrics of every chatkore process, and the small HTTP server that shows them.

Each process registers only what it records; names are shared so dashboards sum across
replicas. Labels are bounded: routes are route patterns, models only ones that a channel
serves, channels by id.
"""
from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from psycopg_pool import AsyncConnectionPool

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
HOLDS_OPEN = Gauge("chatkore_holds_open", "Holds not yet settled (all replicas: the database's count)")


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


class PoolCollector(Collector):
    """Connection-pool usage, read from psycopg_pool when scraped (no per-query cost)."""

    def __init__(self) -> None:
        self._pools: dict[str, AsyncConnectionPool] = {}

    def watch(self, name: str, pool: AsyncConnectionPool) -> None:
        self._pools[name] = pool

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("chatkore_db_pool_connections",
                                   "PostgreSQL pool: size, max, idle connections and callers waiting",
                                   labels=["pool", "state"])
        for name, pool in self._pools.items():
            stats = pool.get_stats()
            for state, key in (("size", "pool_size"), ("max", "pool_max"), ("idle", "pool_available"),
                               ("waiting", "requests_waiting")):
                family.add_metric([name, state], stats.get(key, 0))
        yield family


POOLS = PoolCollector()
REGISTRY.register(POOLS)


async def handle(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def serve(host: str, port: int) -> web.AppRunner:
    """A tiny HTTP server with GET /metrics, beside a gRPC service (or the edge)."""
    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
