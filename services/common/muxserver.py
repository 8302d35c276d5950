"""The server side of the multiplexed streams (mux.proto): every call on a stream runs as its own
task against the service's own method handlers, and what is ready in one loop turn goes back as
one message.

The handlers are the generated `add_XServicer_to_server`'s, collected by `HandlerTable`; the
work grpcserver.ServiceInterceptor does per unary call (the caller's certificate checked against
the method, the request id in contextvars, errors mapped to a status, the metrics and log line)
is done here once per call, with no interceptor chain.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Iterable
from typing import Any

import grpc
import psycopg
import psycopg_pool

from chatkore.v1 import mux_pb2, mux_pb2_grpc
from services.common import mtls, rpcstatus, telemetry
from services.common.errors import DETAILS_KEY
from services.common.logs import request_id_var

log = logging.getLogger(__name__)

OPEN = "/chatkore.v1.Mux/Open"
# A stream is ended (its client opens the next one) after about this long: the server's
# grpc.max_connection_age closes idle connections to let clients find new replicas, and a
# stream that stayed open would keep its connection past that age's grace.
MAX_STREAM_AGE_S = 300.0


class HandlerTable:
    """What a generated `add_XServicer_to_server` registers, recorded by method path (and passed
    on to a real server when given one)."""

    def __init__(self, server: grpc.aio.Server | None = None) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        if self._server is not None:
            self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        for name, handler in handlers.items():
            self.handlers[f"/{service}/{name}"] = handler
        if self._server is not None:
            self._server.add_registered_method_handlers(service, handlers)


class _Abort(Exception):
    """A handler's `context.abort`: the call ends with this status."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: Any) -> None:
        super().__init__(details)
        self.code, self.details, self.trailing = code, details, trailing


class CallContext:
    """What a servicer method may ask of its context, for one call on a stream."""

    def __init__(self, stream: _Stream, call: mux_pb2.Call, deadline: float | None) -> None:
        self._stream = stream
        self._call = call
        self._deadline = deadline
        self._headers: tuple[tuple[str, str], ...] | None = None
        self._replied = False  # a first reply went out (initial metadata can no longer be sent)
        self._code: grpc.StatusCode | None = None
        self._details = ""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        call = self._call
        return (("x-request-id", call.request_id), *((h.key, h.value) for h in call.metadata))

    async def send_initial_metadata(self, metadata: Iterable[tuple[str, str]]) -> None:
        if self._replied or self._headers is not None:
            raise grpc.aio.UsageError("initial metadata was already sent")
        self._headers = tuple(metadata)

    def take_headers(self) -> tuple[tuple[str, str], ...] | None:
        """The initial metadata to put on the call's first reply (None once it went)."""
        if self._replied:
            return None
        self._replied = True
        return self._headers or ()

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        self._code, self._details = code, details
        raise _Abort(code, details, trailing_metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def peer(self) -> str:
        return self._stream.peer

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._stream.auth

    def cancelled(self) -> bool:
        return self._stream.cancelled_by_caller(self._call.id)


def _headers(pairs: Iterable[tuple[str, Any]]) -> list[mux_pb2.Header]:
    return [mux_pb2.Header(key=k, value=v) for k, v in pairs if isinstance(v, str)]


def _error_detail(trailing: Any) -> bytes:
    for key, value in trailing or ():
        if key == DETAILS_KEY:
            return value
    return b""


class _Stream:
    """One open stream: its calls in flight, and the replies waiting for the writer."""

    def __init__(self, server: MuxServer, context: grpc.aio.ServicerContext, caller: str | None) -> None:
        self.server = server
        self.context = context
        self.caller = caller
        self.peer = context.peer()
        self.auth = context.auth_context()
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self._cancelled: set[int] = set()
        self._out: list[mux_pb2.Reply] = []
        self._wake: asyncio.Future[None] | None = None
        self._finishing = False
        self.notice_sent = False
        self._idle: asyncio.Future[None] | None = None

    def cancelled_by_caller(self, call_id: int) -> bool:
        return call_id in self._cancelled

    def reply(self, reply: mux_pb2.Reply) -> None:
        self._out.append(reply)
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def goaway(self) -> None:
        """Tell the caller to send its next calls elsewhere; it half-closes once its calls here end."""
        if not self.notice_sent:
            self.notice_sent = True
            self.reply(mux_pb2.Reply(id=0, last=True, code=grpc.StatusCode.UNAVAILABLE.value[0],
                                     details="this stream takes no new calls"))

    async def write(self) -> None:
        """Whatever is queued when this runs goes as one message; until `finish` and nothing is left."""
        loop = asyncio.get_running_loop()
        while True:
            if not self._out:
                if self._finishing:
                    return
                self._wake = loop.create_future()
                await self._wake
                self._wake = None
                continue
            out, self._out = self._out, []
            self.server.messages += 1
            await self.context.write(mux_pb2.Replies(replies=out))

    def finish(self) -> None:
        self._finishing = True
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def start(self, call: mux_pb2.Call) -> None:
        if call.cancel:
            task = self.tasks.get(call.id)
            if task is not None:
                self._cancelled.add(call.id)
                task.cancel()
            return
        task = asyncio.get_running_loop().create_task(self.server.run(self, call))
        self.tasks[call.id] = task
        task.add_done_callback(lambda _t, call_id=call.id: self._ended(call_id))

    def _ended(self, call_id: int) -> None:
        self.tasks.pop(call_id, None)
        self._cancelled.discard(call_id)
        if not self.tasks and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    async def idle(self) -> None:
        """Until no call is in flight."""
        if self.tasks:
            self._idle = asyncio.get_running_loop().create_future()
            await self._idle


class MuxServer:
    """The Mux service of one process, dispatching to that process's own handlers."""

    def __init__(self, handlers: dict[str, grpc.RpcMethodHandler], *, authorize: bool = True,
                 pool: psycopg_pool.AsyncConnectionPool | None = None, max_age_s: float = MAX_STREAM_AGE_S) -> None:
        self._handlers = handlers
        self._authorize = authorize
        self._pool = pool
        self._pool_check: asyncio.Task[None] | None = None
        self._max_age_s = max_age_s
        self._streams: set[_Stream] = set()
        self._draining = False
        self.messages = 0  # Replies messages written (each carries every reply ready meanwhile)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        mux_pb2_grpc.add_MuxServicer_to_server(self, server)

    def drain(self) -> None:
        """Shutting down: every stream's caller is told to take its next calls elsewhere; calls in
        flight run on (within the server's grace), and each stream ends once its calls have."""
        self._draining = True
        for stream in self._streams:
            stream.goaway()

    async def Open(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:  # noqa: N802 - gRPC's name
        caller = mtls.caller_of(context) if self._authorize else None
        if self._authorize and not mtls.allowed(OPEN, caller):
            who = caller or "a caller without a certificate"
            log.warning("refused %s from %s (%s)", OPEN.lstrip("/"), who, context.peer())
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{who} may not call {OPEN.lstrip('/')}")
        stream = _Stream(self, context, caller)
        self._streams.add(stream)
        await context.send_initial_metadata(())  # the caller's sign that the stream is open
        loop = asyncio.get_running_loop()
        writer = loop.create_task(stream.write())
        age = loop.call_later(self._max_age_s * random.uniform(0.9, 1.0), stream.goaway)
        if self._draining:
            stream.goaway()
        try:
            while True:
                calls = await context.read()
                if calls is grpc.aio.EOF:
                    break
                for call in calls.calls:
                    stream.start(call)
            # The caller half-closed (it was told to go elsewhere, or it is closing): its calls
            # here end, their last replies go, then the stream.
            await stream.idle()
            stream.finish()
            await writer
        finally:
            age.cancel()
            self._streams.discard(stream)
            for task in list(stream.tasks.values()):
                task.cancel()  # the stream is gone (the caller's connection broke): so are its calls
            writer.cancel()

    def _database_failed(self) -> None:
        if self._pool is not None and (self._pool_check is None or self._pool_check.done()):
            self._pool_check = asyncio.create_task(self._pool.check())

    async def run(self, stream: _Stream, call: mux_pb2.Call) -> None:
        """One call, start to end; its replies queued on `stream`."""
        method = call.method.lstrip("/")
        request_id_var.set(call.request_id)
        started = time.perf_counter()
        deadline = time.monotonic() + call.timeout_ms / 1000 if call.timeout_ms else None
        context = CallContext(stream, call, deadline)
        code = grpc.StatusCode.OK
        expired = False
        timer = None
        if deadline is not None:
            task = asyncio.current_task()
            assert task is not None

            def expire() -> None:
                nonlocal expired
                expired = True
                task.cancel()

            timer = asyncio.get_running_loop().call_later(call.timeout_ms / 1000, expire)
        try:
            handler = self._handlers.get(call.method)
            if self._authorize and not mtls.allowed(call.method, stream.caller):
                who = stream.caller or "a caller without a certificate"
                log.warning("refused %s from %s (%s)", method, who, stream.peer)
                raise _Abort(grpc.StatusCode.PERMISSION_DENIED, f"{who} may not call {method}", ())
            if handler is None or not (handler.unary_unary or handler.unary_stream):
                raise _Abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not served here", ())
            request = handler.request_deserializer(call.payload)
            serialize = handler.response_serializer
            with telemetry.server_span(method, context.invocation_metadata()):
                if handler.unary_unary:
                    response = await handler.unary_unary(request, context)
                    stream.reply(mux_pb2.Reply(id=call.id, payload=serialize(response), last=True,
                                               headers=_headers(context.take_headers() or ())))
                else:
                    async for item in handler.unary_stream(request, context):
                        headers = context.take_headers()
                        stream.reply(mux_pb2.Reply(id=call.id, payload=serialize(item),
                                                   headers=_headers(headers) if headers else ()))
                    stream.reply(mux_pb2.Reply(id=call.id, last=True, headers=_headers(context.take_headers() or ())))
        except asyncio.CancelledError:
            if expired:
                code = grpc.StatusCode.DEADLINE_EXCEEDED
                stream.reply(mux_pb2.Reply(id=call.id, last=True, code=code.value[0], details="Deadline Exceeded"))
            else:
                code = grpc.StatusCode.CANCELLED  # by its caller, or with its stream: nobody waits for a reply
            if not expired:
                raise
        except _Abort as abort:
            code = abort.code
            stream.reply(mux_pb2.Reply(id=call.id, last=True, code=code.value[0], details=abort.details,
                                       error_detail=_error_detail(abort.trailing),
                                       headers=_headers(context.take_headers() or ())))
        except Exception as exc:
            if isinstance(exc, (psycopg.OperationalError, psycopg_pool.PoolTimeout)):
                self._database_failed()
            code, details, trailing = rpcstatus.failure_status(exc)
            stream.reply(mux_pb2.Reply(id=call.id, last=True, code=code.value[0], details=details,
                                       error_detail=_error_detail(trailing),
                                       headers=_headers(context.take_headers() or ())))
        finally:
            if timer is not None:
                timer.cancel()
            rpcstatus.finished(method, code, started)
