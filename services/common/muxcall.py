"""What a stub's call on a MuxChannel (mux.py) returns: objects that behave as grpc.aio's call
objects do for chatkore's callers (awaited, read, iterated, cancelled, asked for their initial
metadata and status), failing with real grpc.aio.AioRpcErrors; and how a call's replies wait for
their reader."""
from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

import grpc

from chatkore.v1 import mux_pb2
from services.common.errors import DETAILS_KEY

_CODES = {code.value[0]: code for code in grpc.StatusCode}
Serializer = Callable[[Any], bytes] | None


class Channel(Protocol):
    """What a call needs of its channel (mux.MuxChannel)."""

    unary_interceptors: list[Any]
    stream_interceptors: list[Any]

    async def start_call(self, method: str, payload: bytes, timeout: float | None, metadata: Any,
                         inbox: Inbox) -> tuple[Any, int]: ...


def rpc_error(code: grpc.StatusCode, details: str, headers: Sequence[Any] = (),
              detail: bytes = b"") -> grpc.aio.AioRpcError:
    """A failed call as grpc.aio reports one (`detail`: the ErrorDetail's trailing value, errors.py)."""
    trailing = grpc.aio.Metadata((DETAILS_KEY, detail)) if detail else grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(*headers), trailing, details)


def _reply_error(reply: mux_pb2.Reply) -> grpc.aio.AioRpcError:
    return rpc_error(_CODES.get(reply.code, grpc.StatusCode.UNKNOWN), reply.details,
                     [(h.key, h.value) for h in reply.headers], reply.error_detail)

class Inbox:
    """The replies of one call, as they arrive, until its end (a last reply or a failure)."""

    __slots__ = ("replies", "end", "_waiter", "timer")

    def __init__(self) -> None:
        self.replies: collections.deque[mux_pb2.Reply] = collections.deque()
        self.end: grpc.aio.AioRpcError | None = None  # a failure that came other than by a reply
        self._waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def push(self, reply: mux_pb2.Reply) -> None:
        self.replies.append(reply)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def fail(self, err: grpc.aio.AioRpcError) -> None:
        if self.end is None:
            self.end = err
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def peek(self) -> mux_pb2.Reply:
        """The next reply, left in place; a failure raises."""
        while not self.replies:
            if self.end is not None:
                raise self.end
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self.replies[0]

    async def next(self) -> mux_pb2.Reply:
        """The next reply; a failure (a broken stream, the deadline) raises."""
        while not self.replies:
            if self.end is not None:
                raise self.end
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self.replies.popleft()

async def _intercepted(interceptors: Sequence[Any], name: str, details: grpc.aio.ClientCallDetails,
                       request: Any, last: Callable[[grpc.aio.ClientCallDetails, Any], Any]) -> Any:
    """Run `interceptors` around `last` as grpc.aio does: each gets a continuation to the next."""
    if not interceptors:
        return last(details, request)
    continuation = functools.partial(_intercepted, interceptors[1:], name, last=last)
    return await getattr(interceptors[0], name)(
        lambda d, r: continuation(d, r), details, request)


class _Call:
    """What the unary and the stream call objects share: the outcome, and who waits for it."""

    def __init__(self, channel: Channel, method: str, request: Any, serialize: Serializer,
                 deserialize: Callable[[bytes], Any] | None, timeout: float | None, metadata: Any,
                 interceptors: Sequence[Any]) -> None:
        self._channel = channel
        self._method = method
        self._request = request
        self._serialize = serialize
        self._deserialize = deserialize
        self._timeout = timeout
        self._metadata = metadata
        self._interceptors = interceptors
        self._inbox = Inbox()
        self._stream: Any = None
        self._call_id = 0
        self._headers: grpc.aio.Metadata | None = None
        self._error: grpc.aio.AioRpcError | None = None
        self._code: grpc.StatusCode | None = None
        self._callbacks: list[Callable[[Any], None]] = []
        self._finished: asyncio.Future[None] | None = None
        self._deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout

    def _payload(self) -> bytes:
        return self._serialize(self._request) if self._serialize is not None else self._request

    async def _send(self) -> None:
        self._stream, self._call_id = await self._channel.start_call(
            self._method, self._payload(), self._timeout, self._metadata, self._inbox)

    def _note_headers(self, reply: mux_pb2.Reply) -> None:
        if self._headers is None:
            self._headers = grpc.aio.Metadata(*((h.key, h.value) for h in reply.headers))

    def _finish(self, error: grpc.aio.AioRpcError | None) -> None:
        if self._code is not None:
            return
        if self._inbox.timer is not None:
            self._inbox.timer.cancel()
        self._error = error
        self._code = grpc.StatusCode.OK if error is None else error.code()
        if self._finished is not None and not self._finished.done():
            self._finished.set_result(None)
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)

    async def _until_finished(self) -> None:
        if self._code is None:
            if self._finished is None:
                self._finished = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._finished)

    def cancel(self) -> bool:
        if self._code is not None:
            return False
        if self._stream is not None:
            self._stream.cancel(self._call_id)
        error = rpc_error(grpc.StatusCode.CANCELLED, "Locally cancelled by application!")
        self._inbox.fail(error)
        self._finish(error)
        return True

    def cancelled(self) -> bool:
        return self._code == grpc.StatusCode.CANCELLED

    def done(self) -> bool:
        return self._code is not None

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._code is not None:
            callback(self)
        else:
            self._callbacks.append(callback)

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - asyncio.get_running_loop().time())

    async def code(self) -> grpc.StatusCode:
        await self._until_finished()
        assert self._code is not None
        return self._code

    async def details(self) -> str:
        await self._until_finished()
        return self._error.details() or "" if self._error is not None else ""

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        await self._until_finished()
        return self._error.trailing_metadata() if self._error is not None else grpc.aio.Metadata()

    async def debug_error_string(self) -> str:
        return await self.details()

    async def wait_for_connection(self) -> None:
        return None


class _UnaryCall(_Call):
    """What `stub.Method(request)` returns: awaiting it makes the call, once; awaiting it again
    gives the same outcome."""

    _running = False
    _response: Any = None
    _inner: _UnaryCall | None = None

    def __await__(self) -> Any:
        if not self._running:
            self._running = True
            return self._run().__await__()
        return self._outcome().__await__()

    async def _outcome(self) -> Any:
        await self._until_finished()
        if self._error is not None:
            raise self._error
        return self._response

    def _made(self, details: grpc.aio.ClientCallDetails, request: Any) -> _UnaryCall:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        return _UnaryCall(self._channel, method, request, self._serialize, self._deserialize, details.timeout,
                          details.metadata, ())

    async def _run(self) -> Any:
        try:
            if self._interceptors:
                details = grpc.aio.ClientCallDetails(self._method, self._timeout, self._metadata, None, None)
                made = await _intercepted(self._interceptors, "intercept_unary_unary", details, self._request,
                                          self._made)
                if isinstance(made, _UnaryCall):
                    self._inner = made
                    response = await made
                else:
                    response = made  # an interceptor answered by itself
            else:
                response = await self._exchange()
        except grpc.aio.AioRpcError as err:
            self._finish(err)
            raise
        except asyncio.CancelledError:
            self.cancel()
            raise
        self._response = response
        self._finish(None)
        return response

    async def _exchange(self) -> Any:
        await self._send()
        assert self._stream is not None
        try:
            reply = await self._inbox.next()
        except asyncio.CancelledError:
            self._stream.cancel(self._call_id)  # the caller left: the server cancels the handler
            raise
        self._note_headers(reply)
        if reply.code:
            raise _reply_error(reply)
        return self._deserialize(reply.payload) if self._deserialize is not None else reply.payload

    async def initial_metadata(self) -> grpc.aio.Metadata:
        if self._inner is not None:
            return await self._inner.initial_metadata()
        await self._until_finished()
        if self._inner is not None:
            return await self._inner.initial_metadata()
        if self._headers is None and self._error is not None:
            return self._error.initial_metadata()
        return self._headers or grpc.aio.Metadata()


class _StreamCall(_Call):
    """What `stub.StreamingMethod(request)` returns: read it (`read()`, `async for`); the call is
    sent at the first read or `initial_metadata()`."""

    _starting: asyncio.Future[None] | None = None
    _inner: _StreamCall | None = None
    _locally_cancelled = False

    async def _start(self) -> None:
        if self._starting is not None:
            if not self._starting.done():
                await asyncio.shield(self._starting)
            return
        self._starting = asyncio.get_running_loop().create_future()
        try:
            if self._interceptors:
                details = grpc.aio.ClientCallDetails(self._method, self._timeout, self._metadata, None, None)
                made = await _intercepted(self._interceptors, "intercept_unary_stream", details, self._request,
                                          self._made)
                if not isinstance(made, _StreamCall):
                    raise TypeError("a stream interceptor must return the call its continuation made")
                self._inner = made
                made.add_done_callback(lambda inner: self._finish(inner._error))
            elif self._code is None:
                await self._send()
        except grpc.aio.AioRpcError as err:
            self._finish(err)
        finally:
            self._starting.set_result(None)

    def _made(self, details: grpc.aio.ClientCallDetails, request: Any) -> _StreamCall:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        return _StreamCall(self._channel, method, request, self._serialize, self._deserialize, details.timeout,
                           details.metadata, ())

    async def read(self) -> Any:
        await self._start()
        if self._inner is not None:
            return await self._inner.read()
        if self._locally_cancelled:
            raise asyncio.CancelledError()
        if self._code is not None and not self._inbox.replies:
            if self._error is not None:
                raise self._error
            return grpc.aio.EOF
        try:
            reply = await self._inbox.next()
        except grpc.aio.AioRpcError as err:
            self._finish(err)
            if self._locally_cancelled:
                raise asyncio.CancelledError() from None
            raise
        except asyncio.CancelledError:
            self.cancel()  # the reader left: so does the call
            raise
        self._note_headers(reply)
        if reply.last:
            if reply.code:
                error = _reply_error(reply)
                self._finish(error)
                raise error
            self._finish(None)
            return grpc.aio.EOF
        return self._deserialize(reply.payload) if self._deserialize is not None else reply.payload

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            item = await self.read()
            if item is grpc.aio.EOF:
                return
            yield item

    async def initial_metadata(self) -> grpc.aio.Metadata:
        await self._start()
        if self._inner is not None:
            return await self._inner.initial_metadata()
        if self._headers is None and self._code is None:
            try:
                first = await self._inbox.peek()
            except grpc.aio.AioRpcError as err:
                self._finish(err)
                return err.initial_metadata()
            self._note_headers(first)
        return self._headers or grpc.aio.Metadata()

    def cancel(self) -> bool:
        if self._inner is not None:
            self._locally_cancelled = True
            return self._inner.cancel()
        if self._code is not None:
            return False
        self._locally_cancelled = True
        return super().cancel()

    async def code(self) -> grpc.StatusCode:
        if self._inner is not None:
            return await self._inner.code()
        return await super().code()


class UnaryMethod:
    def __init__(self, channel: Channel, method: str, serialize: Serializer,
                 deserialize: Callable[[bytes], Any] | None) -> None:
        self._channel, self._method, self._serialize, self._deserialize = channel, method, serialize, deserialize

    def __call__(self, request: Any, *, timeout: float | None = None, metadata: Any = None, credentials: Any = None,
                 wait_for_ready: bool | None = None, compression: Any = None) -> _UnaryCall:
        return _UnaryCall(self._channel, self._method, request, self._serialize, self._deserialize, timeout,
                          metadata, self._channel.unary_interceptors)


class StreamMethod:
    def __init__(self, channel: Channel, method: str, serialize: Serializer,
                 deserialize: Callable[[bytes], Any] | None) -> None:
        self._channel, self._method, self._serialize, self._deserialize = channel, method, serialize, deserialize

    def __call__(self, request: Any, *, timeout: float | None = None, metadata: Any = None, credentials: Any = None,
                 wait_for_ready: bool | None = None, compression: Any = None) -> _StreamCall:
        return _StreamCall(self._channel, self._method, request, self._serialize, self._deserialize, timeout,
                           metadata, self._channel.stream_interceptors)
