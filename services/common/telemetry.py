"""Where a process exposes its metrics, and OpenTelemetry traces when an OTLP endpoint is set.

Tracing is off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set: then
nothing of OpenTelemetry is even imported, and every hook below is a no-op or absent.
When on, spans follow one request edge → auth/billing/inference → upstream, carried in
W3C `traceparent` headers and gRPC metadata.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import grpc

from services.common.config import env_int, env_optional, env_str


@dataclass(frozen=True)
class Telemetry:
    metrics_host: str
    metrics_port: int        # 0: no separate metrics server (the edge then serves /metrics itself)
    traces_endpoint: str     # empty: tracing off

    @classmethod
    def from_env(cls) -> Telemetry:
        endpoint = env_optional("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env_optional("OTEL_EXPORTER_OTLP_ENDPOINT")
        disabled = (os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true"
                    or os.environ.get("OTEL_TRACES_EXPORTER", "").lower() == "none")
        return cls(
            metrics_host=env_str("CHATKORE_METRICS_HOST", "0.0.0.0"),  # a pod's port is reached on its IP
            metrics_port=env_int("CHATKORE_METRICS_PORT", 0),
            traces_endpoint="" if disabled or not endpoint else endpoint,
        )


class _Tracing:
    """The process's tracer; set once at start-up, like the logging root handler."""

    tracer: Any = None


def start(service: str, telemetry: Telemetry) -> None:
    """Install the OTLP exporter when an endpoint is configured; otherwise do nothing."""
    if not telemetry.traces_endpoint:
        return
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": f"chatkore-{service}"}
    provider = TracerProvider(resource=Resource.create(attributes))  # flushes at exit by itself
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _Tracing.tracer = trace.get_tracer("chatkore")


def enabled() -> bool:
    return _Tracing.tracer is not None


# --- gRPC ------------------------------------------------------------------------------


async def _traced_call(self: Any, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any) -> Any:
    """A CLIENT span per outgoing call, its context sent along in the metadata."""
    from opentelemetry import propagate, trace

    method = details.method.decode() if isinstance(details.method, bytes) else details.method
    span = _Tracing.tracer.start_span(method.lstrip("/"), kind=trace.SpanKind.CLIENT,
                                      attributes={"rpc.system": "grpc"})
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    for key, value in carrier.items():
        metadata.add(key, value)
    details = grpc.aio.ClientCallDetails(details.method, details.timeout, metadata, details.credentials,
                                         details.wait_for_ready)
    try:
        call = await continuation(details, request)
    except BaseException:
        span.end()
        raise

    async def finish(done: Any) -> None:
        code = grpc.StatusCode.CANCELLED if done.cancelled() else await done.code()
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code != grpc.StatusCode.OK:
            span.set_status(trace.Status(trace.StatusCode.ERROR, code.name))
        span.end()

    def finished(done: Any) -> None:
        task = asyncio.get_running_loop().create_task(finish(done))
        self.pending.add(task)  # held until done, so the task is not collected early
        task.add_done_callback(self.pending.discard)

    call.add_done_callback(finished)
    return call



class _Traced:
    def __init__(self) -> None:
        self.pending: set[asyncio.Task[None]] = set()


# grpc.aio files an interceptor under its first matching kind only: one class per kind.
class UnaryClientInterceptor(_Traced, grpc.aio.UnaryUnaryClientInterceptor):
    """A CLIENT span per outgoing call, its context sent along in the metadata."""

    intercept_unary_unary = _traced_call


class StreamClientInterceptor(_Traced, grpc.aio.UnaryStreamClientInterceptor):
    """A CLIENT span per outgoing stream, its context sent along in the metadata."""

    intercept_unary_stream = _traced_call


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    return [UnaryClientInterceptor(), StreamClientInterceptor()] if enabled() else []


def server_span(method: str, metadata: Any) -> AbstractContextManager[Any]:
    """The SERVER span of an incoming call, continuing the caller's trace; a no-op when off."""
    if _Tracing.tracer is None:
        return nullcontext()
    from opentelemetry import propagate, trace

    carrier = {key: value for key, value in (metadata or ()) if isinstance(value, str)}
    return _Tracing.tracer.start_as_current_span(
        method.lstrip("/"), context=propagate.extract(carrier), kind=trace.SpanKind.SERVER,
        attributes={"rpc.system": "grpc"}, record_exception=False, set_status_on_exception=True,
    )


def start_server_span(method: str, metadata: Any) -> Any:
    """The SERVER span of an incoming stream, not yet current (see `activate`); None when off."""
    if _Tracing.tracer is None:
        return None
    from opentelemetry import propagate, trace

    carrier = {key: value for key, value in (metadata or ()) if isinstance(value, str)}
    return _Tracing.tracer.start_span(method.lstrip("/"), context=propagate.extract(carrier),
                                      kind=trace.SpanKind.SERVER, attributes={"rpc.system": "grpc"})


def activate(span: Any) -> Any:
    """Make `span` current for one step of a stream; returns what `deactivate` needs."""
    if span is None:
        return None
    from opentelemetry import context, trace

    return context.attach(trace.set_span_in_context(span))


def deactivate(token: Any) -> None:
    if token is not None:
        from opentelemetry import context

        context.detach(token)


def end_span(span: Any, code: str) -> None:
    if span is None:
        return
    from opentelemetry import trace

    if code != "OK":
        span.set_status(trace.Status(trace.StatusCode.ERROR, code))
    span.end()


# --- HTTP --------------------------------------------------------------------------------


def http_server_middleware() -> Callable[..., Awaitable[Any]] | None:
    """aiohttp middleware opening the SERVER span of each edge request (None when off)."""
    if _Tracing.tracer is None:
        return None
    from aiohttp import web
    from opentelemetry import propagate, trace

    tracer = _Tracing.tracer

    @web.middleware
    async def traced(request: web.Request, handler: Any) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        with tracer.start_as_current_span(
            f"{request.method} {route}", context=propagate.extract(dict(request.headers)),
            kind=trace.SpanKind.SERVER, attributes={"http.request.method": request.method, "http.route": route},
        ) as span:
            response = await handler(request)
            span.set_attribute("http.response.status_code", response.status)
            if rid := request.get("request_id"):
                span.set_attribute("chatkore.request_id", rid)
            return response

    return traced


def http_client_trace_configs() -> list[Any]:
    """aiohttp client hooks: a CLIENT span per upstream call, `traceparent` sent along."""
    if _Tracing.tracer is None:
        return []
    import aiohttp
    from opentelemetry import propagate, trace

    tracer = _Tracing.tracer

    async def on_start(session: Any, ctx: Any, params: aiohttp.TraceRequestStartParams) -> None:
        span = tracer.start_span(f"{params.method} upstream", kind=trace.SpanKind.CLIENT, attributes={
            "http.request.method": params.method, "server.address": params.url.host or "",
            "url.path": params.url.path})
        ctx.span = span
        propagate.inject(params.headers, context=trace.set_span_in_context(span))

    async def on_end(session: Any, ctx: Any, params: aiohttp.TraceRequestEndParams) -> None:
        ctx.span.set_attribute("http.response.status_code", params.response.status)
        if params.response.status >= 400:
            ctx.span.set_status(trace.Status(trace.StatusCode.ERROR))
        ctx.span.end()

    async def on_error(session: Any, ctx: Any, params: aiohttp.TraceRequestExceptionParams) -> None:
        ctx.span.set_status(trace.Status(trace.StatusCode.ERROR, type(params.exception).__name__))
        ctx.span.end()

    config = aiohttp.TraceConfig()
    config.on_request_start.append(on_start)
    config.on_request_end.append(on_end)
    config.on_request_exception.append(on_error)
    return [config]
