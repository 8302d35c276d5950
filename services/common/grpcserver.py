"""One lifecycle for every gRPC service: interceptors, health, signals, graceful stop."""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import psycopg
import psycopg_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common import metrics_http, mtls, muxserver, rpcstatus, telemetry
from services.common.errors import ServiceError
from services.common.logs import request_id_var
from services.common.mtls import GrpcTls
from services.common.telemetry import Telemetry

log = logging.getLogger(__name__)

# Peers send keepalive pings; allow them, and messages as large as an embeddings reply.
SERVER_OPTIONS = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.so_reuseport", 0),
    # Clients find replicas by DNS, but re-resolve only when a connection changes: closing each
    # connection after a while (calls on it run to their end, streams included) lets a new
    # replica take its share within about a minute of becoming ready.
    ("grpc.max_connection_age_ms", 30_000),
    ("grpc.max_connection_age_grace_ms", 700_000),
]

Behavior = Callable[..., Any]


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id":
            return value
    return ""


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """Turn any exception into a status the caller can map; never leak a traceback."""
    code, details, trailing = rpcstatus.failure_status(exc)
    await context.abort(code, details, trailing)


def _code_of(exc: BaseException, context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    if isinstance(exc, ServiceError):
        return exc.grpc_code
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code()
    if isinstance(exc, grpc.aio.AbortError):
        return context.code() or grpc.StatusCode.UNKNOWN
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return grpc.StatusCode.CANCELLED
    if isinstance(exc, (psycopg.OperationalError, psycopg_pool.PoolTimeout)):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """The caller's certificate checked against the method; request id into contextvars; every
    exception out as a mapped status."""

    def __init__(self, pool: psycopg_pool.AsyncConnectionPool | None = None, authorize: bool = True) -> None:
        self._pool = pool
        self._pool_check: asyncio.Task[None] | None = None
        self._authorize = authorize

    async def _check_caller(self, path: str, context: grpc.aio.ServicerContext) -> None:
        """Abort (PERMISSION_DENIED) a call whose certificate does not name a process that
        mtls.CALLERS lets call this method; no certificate (the plaintext health port) calls none."""
        if not self._authorize:
            return
        caller = mtls.caller_of(context)
        if mtls.allowed(path, caller):
            return
        who = caller or "a caller without a certificate"
        log.warning("refused %s from %s (%s)", path.lstrip("/"), who, context.peer())
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{who} may not call {path.lstrip('/')}")

    def _database_failed(self) -> None:
        # The database went away (a restart, a failover): test every idle connection
        # now, so the broken ones are replaced before the next calls pick them up.
        if self._pool is not None and (self._pool_check is None or self._pool_check.done()):
            self._pool_check = asyncio.create_task(self._pool.check())

    async def _fail(self, context: grpc.aio.ServicerContext, exc: Exception) -> None:
        if isinstance(exc, (psycopg.OperationalError, psycopg_pool.PoolTimeout)):
            self._database_failed()
        await _abort(context, exc)

    def _wrap_unary(self, method: str, behavior: Behavior) -> Behavior:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = request_id_var.set(_request_id(context))
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                await self._check_caller("/" + method, context)
                with telemetry.server_span(method, context.invocation_metadata()):
                    return await behavior(request, context)
            except (asyncio.CancelledError, grpc.aio.AbortError) as exc:
                code = _code_of(exc, context)
                raise
            except Exception as exc:
                code = _code_of(exc, context)
                await self._fail(context, exc)
            finally:
                rpcstatus.finished(method, code, started)
                request_id_var.reset(token)

        return call


    def _wrap_stream(self, method: str, behavior: Behavior) -> Behavior:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            rid = _request_id(context)
            started = time.perf_counter()
            span = telemetry.start_server_span(method, context.invocation_metadata())
            code = grpc.StatusCode.OK
            await self._check_caller("/" + method, context)
            stream = behavior(request, context)
            try:
                while True:
                    # grpc.aio may advance a streaming handler from a fresh context at each step,
                    # so the request id (and the trace) are put in place around every step.
                    token, active = request_id_var.set(rid), telemetry.activate(span)
                    try:
                        item = await anext(stream)
                    except StopAsyncIteration:
                        break
                    finally:
                        telemetry.deactivate(active)
                        request_id_var.reset(token)
                    yield item
            except (asyncio.CancelledError, grpc.aio.AbortError, GeneratorExit) as exc:
                code = _code_of(exc, context)
                raise
            except Exception as exc:
                code = _code_of(exc, context)
                token = request_id_var.set(rid)
                try:
                    await self._fail(context, exc)
                finally:
                    request_id_var.reset(token)
            finally:
                token = request_id_var.set(rid)
                try:
                    await stream.aclose()
                    rpcstatus.finished(method, code, started)
                finally:
                    request_id_var.reset(token)
                    telemetry.end_span(span, code.name)

        return call

    def _wrap_client_streaming(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """Calls that stream requests get the caller check too (no method does today)."""
        if handler.stream_unary:
            behavior = handler.stream_unary

            async def unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                await self._check_caller("/" + method, context)
                return await behavior(requests, context)

            return grpc.stream_unary_rpc_method_handler(unary, request_deserializer=handler.request_deserializer,
                                                        response_serializer=handler.response_serializer)
        bidi = handler.stream_stream

        async def stream(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._check_caller("/" + method, context)
            async for item in bidi(requests, context):
                yield item

        return grpc.stream_stream_rpc_method_handler(stream, request_deserializer=handler.request_deserializer,
                                                     response_serializer=handler.response_serializer)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(mtls.OPEN_PREFIX) or details.method == muxserver.OPEN:
            return handler  # health is open to all; a mux stream checks its caller and each call itself
        method = details.method.lstrip("/")
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return self._wrap_client_streaming(method, handler)


def build(register: Callable[[grpc.aio.Server], None], *, authorize: bool,
          pool: psycopg_pool.AsyncConnectionPool | None = None) -> tuple[grpc.aio.Server, muxserver.MuxServer]:
    """A server with the service's methods, alone (ServiceInterceptor) and on multiplexed streams
    (muxserver.py, dispatching to the same handlers); not yet listening."""
    server = grpc.aio.server(interceptors=[ServiceInterceptor(pool, authorize=authorize)], options=SERVER_OPTIONS)
    handlers = muxserver.HandlerTable(server)
    register(handlers)  # type: ignore[arg-type] - it takes what add_XServicer_to_server gives a server
    mux = muxserver.MuxServer(handlers.handlers, authorize=authorize, pool=pool)
    mux.add_to_server(server)
    return server, mux


async def serve(
    *,
    name: str,
    listen: str,
    register: Callable[[grpc.aio.Server], None],
    ready: Callable[[], Awaitable[bool]],
    grace_s: float,
    tls: GrpcTls,
    health_listen: str | None = None,
    pool: psycopg_pool.AsyncConnectionPool | None = None,
    on_draining: Callable[[], Awaitable[None]] | None = None,
    on_grace_over: Callable[[], Awaitable[None]] | None = None,
    grace_over_s: float = 0.0,
    telemetry: Telemetry | None = None,
) -> None:
    """Run a gRPC server until SIGTERM/SIGINT, then drain and stop.

    `ready` is polled each second; its answer is the health status peers see
    (a service is SERVING only while it reaches the database). The health service
    `liveness` stays SERVING while the process runs: a liveness probe must not
    restart a healthy process because the database is away.

    `listen` takes mutual TLS only (unless `tls` is insecure); `health_listen`, when set, is a
    plaintext port on which only the health service answers (for probes that have no certificate).

    `on_grace_over`, when set, runs once `grace_s` has passed with calls still in flight: the
    service ends them itself (and settles them) within `grace_over_s`, after which gRPC cancels
    whatever is left. `on_draining` runs once the server has stopped.
    """
    server, mux = build(register, authorize=not tls.insecure, pool=pool)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if tls.insecure:
        port = server.add_insecure_port(listen)
    else:
        port = server.add_secure_port(listen, tls.server_credentials())
    if port == 0 or (health_listen and server.add_insecure_port(health_listen) == 0):
        raise SystemExit(f"chatkore-{name}: cannot listen on {listen if port == 0 else health_listen}")
    await server.start()
    await health_servicer.set("liveness", health_pb2.HealthCheckResponse.SERVING)
    log.info("%s listening on %s", name, listen, extra={"port": port})
    metrics_server = None
    if telemetry is not None and telemetry.metrics_port:
        metrics_server = await metrics_http.serve(telemetry.metrics_host, telemetry.metrics_port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def watch_readiness() -> None:
        last = None
        while True:
            ok = await ready()
            status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            if status != last:
                await health_servicer.set("", status)
                await health_servicer.set(f"chatkore.v1.{name.capitalize()}", status)
                log.info("health %s", "serving" if ok else "not serving")
                last = status
            await asyncio.sleep(1.0)

    watcher = asyncio.create_task(watch_readiness())
    await stop.wait()
    log.info("%s draining (grace %.0fs)", name, grace_s)
    watcher.cancel()
    await health_servicer.enter_graceful_shutdown()
    mux.drain()  # callers send new calls elsewhere; the calls in flight on the streams run on
    stopping = asyncio.ensure_future(server.stop(grace_s + grace_over_s if on_grace_over else grace_s))
    if on_grace_over is not None:
        done, _ = await asyncio.wait({stopping}, timeout=grace_s)
        if not done:
            log.info("%s: grace over with calls in flight, ending them", name)
            await on_grace_over()
    await stopping
    if on_draining is not None:
        await on_draining()
    if metrics_server is not None:
        await metrics_server.cleanup()
    log.info("%s stopped", name)
