"""Request ids, path clean-up, and the one place every failure becomes OpenAI's error shape."""
from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

import grpc
from aiohttp import web
from aiohttp.web_urldispatcher import UrlMappingMatchInfo

from edge.errors import OpenAIError, from_rpc
from edge.i18n import localize
from edge.state import COUNTERS
from services.common import metrics
from services.common.logs import request_id_var

log = logging.getLogger("edge.access")

_SLASHES = re.compile(r"/{2,}")
# Answers that mean the model was never resolved: its name stays out of the metric labels,
# which only ever carry models some channel serves.
_NO_MODEL_LABEL = frozenset({400, 404, 413})


def normalize_path(path: str) -> str:
    """`//v1/x` (a base URL with a trailing slash) and `/v1/v1/x` (chatgpt-web) mean `/v1/x`."""
    path = _SLASHES.sub("/", path)
    while path.startswith("/v1/v1/") or path == "/v1/v1":
        path = path[3:]
    return path


class Router(web.UrlDispatcher):
    async def resolve(self, request: web.Request) -> UrlMappingMatchInfo:  # type: ignore[override]
        path = request.rel_url.path
        clean = normalize_path(path)
        if clean != path:
            request = request.clone(rel_url=request.rel_url.with_path(clean))
        return await super().resolve(request)  # type: ignore[return-value]


def _http_error(exc: web.HTTPException, request: web.Request) -> OpenAIError:
    if exc.status == 404:
        return OpenAIError(404, f"Invalid URL ({request.method} {request.path})", code="unknown_url")
    if exc.status == 405:
        return OpenAIError(405, f"Method {request.method} is not allowed for {request.path}",
                           code="method_not_allowed")
    if exc.status == 413:
        return OpenAIError(413, "The request body is too large.", code="request_too_large")
    return OpenAIError(exc.status, exc.reason or "Request failed", type="invalid_request_error")


@web.middleware
async def errors(request: web.Request, handler: web.RequestHandler) -> web.StreamResponse:
    rid = "req_" + uuid.uuid4().hex
    request["request_id"] = rid
    token = request_id_var.set(rid)
    started = time.perf_counter()
    request["started"] = started
    status = 500
    counters = request.app[COUNTERS]
    counters.requests_in_flight += 1
    try:
        response = await handler(request)
        status = response.status
        return response
    except OpenAIError as exc:
        status = exc.status
        return localize(request, exc).response()
    except grpc.aio.AioRpcError as exc:
        error = from_rpc(exc)
        status = error.status
        return localize(request, error).response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = _http_error(exc, request)
        status = error.status
        return localize(request, error).response()
    except (asyncio.CancelledError, ConnectionResetError):
        status = 499  # the client went away
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return localize(request, OpenAIError(
            500, "The server had an error while processing your request. Sorry about that!",
            type="server_error")).response()
    finally:
        elapsed = time.perf_counter() - started
        counters.requests_in_flight -= 1
        log.info("%s %s %d", request.method, request.path, status,
                 extra={"status": status, "ms": round(elapsed * 1000, 2)})
        _observe(request, status, elapsed)
        request_id_var.reset(token)


def _observe(request: web.Request, status: int, elapsed: float) -> None:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    model = "" if status in _NO_MODEL_LABEL else request.get("model", "")
    metrics.HTTP_REQUESTS.labels(route, model, str(status)).inc()
    metrics.HTTP_LATENCY.labels(route, model).observe(elapsed)


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    rid = request.get("request_id")
    if rid:
        response.headers["x-request-id"] = rid
