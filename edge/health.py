"""GET /healthz: 200 only when every service answers SERVING (each reaches the database); /metrics."""
from __future__ import annotations

import asyncio

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2

from edge.openai_api import json_response
from edge.state import PEERS
from services.common import metrics


async def _status(stub: object) -> str:
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)  # type: ignore[attr-defined]
    except grpc.aio.AioRpcError as exc:
        return exc.code().name.lower()
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status).lower()


async def healthz(request: web.Request) -> web.Response:
    stubs = request.app[PEERS].health
    names = list(stubs)
    results = await asyncio.gather(*(_status(stubs[n]) for n in names))
    services = dict(zip(names, results, strict=True))
    ok = all(s == "serving" for s in results)
    return json_response({"status": "ok" if ok else "unavailable", "services": services}, status=200 if ok else 503)


async def readyz(request: web.Request) -> web.Response:
    """Ready for traffic: the edge itself is up and not draining."""
    return json_response({"status": "ok"})


async def metrics_page(request: web.Request) -> web.Response:
    """Prometheus metrics, when not on a port of their own (CHATKORE_METRICS_PORT, edge/app.py)."""
    body, content_type = metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})
