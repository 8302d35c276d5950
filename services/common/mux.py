"""The client side of the multiplexed streams (mux.proto): a channel that generated stubs take in
place of a grpc.aio.Channel, carrying every call to a peer over one long-lived bidi stream per
replica, matched by id.

Whatever is queued when a stream's writer runs goes as one message; nothing waits for a batch
to fill. Calls go round-robin over the replicas whose stream is open. A stream that breaks fails
its calls in flight with UNAVAILABLE and no ErrorDetail, as a dead replica's unary call does
(peers.transport_failure), so callers retry and fail over exactly as before; it reopens after
100 ms, doubling to 1 s. A `dns:///host:port` target is resolved here, every few seconds and
whenever a stream breaks, to one stream per address. Methods of other services (health) go over
an ordinary channel to the target.
"""
from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import itertools
import logging
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc

from chatkore.v1 import mux_pb2
from services.common import mtls
from services.common.errors import DETAILS_KEY
from services.common.logs import request_id_var
from services.common.mtls import GrpcTls

log = logging.getLogger(__name__)

OPEN = "/chatkore.v1.Mux/Open"
MUXED = ("/chatkore.v1.Auth/", "/chatkore.v1.Billing/", "/chatkore.v1.Inference/")
MAX_QUEUED = 1024          # calls waiting for a stream's writer; more wait for room
RESOLVE_EVERY_S = 5.0
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.1, 1.0
RETIRE_WAIT_S = 600.0      # a replica gone from DNS keeps its stream this long for the calls on it

_CODES = {code.value[0]: code for code in grpc.StatusCode}
Serializer = Callable[[Any], bytes] | None


def _error(code: grpc.StatusCode, details: str, headers: Sequence[Any] = (),
           detail: bytes = b"") -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata((DETAILS_KEY, detail)) if detail else grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(*headers), trailing, details)


def _reply_error(reply: mux_pb2.Reply) -> grpc.aio.AioRpcError:
    return _error(_CODES.get(reply.code, grpc.StatusCode.UNKNOWN), reply.details,
                  [(h.key, h.value) for h in reply.headers], reply.error_detail)


class _Inbox:
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


class _Stream:
    """One open Mux stream to one replica: its calls in flight, and the calls waiting for its writer."""

    def __init__(self, replica: _Replica, call: grpc.aio.StreamStreamCall, max_queued: int) -> None:
        self.replica = replica
        self.call = call
        self.pending: dict[int, _Inbox] = {}
        self.messages = 0            # Calls messages written (each carries every call queued meanwhile)
        self.draining = False        # told to take no new calls: half-close once the calls in flight end
        self._ids = itertools.count(1)
        self._out: list[mux_pb2.Call] = []
        self._max_queued = max_queued
        self._wake: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        loop = asyncio.get_running_loop()
        self.leaving: asyncio.Future[bool] = loop.create_future()  # True: the server told it to go; False: over
        self.over: asyncio.Future[None] = loop.create_future()     # no call can end on it any more

    async def opened(self) -> tuple[bool, str]:
        """Whether the server took the stream (it answers with its initial metadata at once), and why not."""
        try:
            await self.call.initial_metadata()
            if self.call.done():
                code = await self.call.code()
                why = f"{code.name}: {await self.call.details()}"
                if code != grpc.StatusCode.UNAVAILABLE:  # refused, not unreachable: a configuration to fix
                    log.warning("mux stream to %s refused: %s", self.replica.address, why)
                return False, why
        except grpc.aio.AioRpcError as err:
            return False, f"{err.code().name}: {err.details()}"
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._write()), loop.create_task(self._read())]
        return True, ""

    async def submit(self, method: str, payload: bytes, timeout: float | None, request_id: str,
                     metadata: Sequence[mux_pb2.Header], inbox: _Inbox) -> int:
        """Queue one call; its id. Waits while the queue is full."""
        while len(self._out) >= self._max_queued and not self.over.done():
            if self._room is None or self._room.done():
                self._room = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._room)
        if self.over.done() or self.draining:
            raise _error(grpc.StatusCode.UNAVAILABLE, f"the stream to {self.replica.address} closed")
        call_id = next(self._ids)
        self.pending[call_id] = inbox
        self._out.append(mux_pb2.Call(id=call_id, method=method, payload=payload, request_id=request_id,
                                      timeout_ms=max(1, int(timeout * 1000)) if timeout is not None else 0,
                                      metadata=metadata))
        self._wake_writer()
        return call_id

    def cancel(self, call_id: int) -> None:
        """The caller gave up on the call: forget it, and tell the server to cancel its handler."""
        if self.pending.pop(call_id, None) is None:
            return
        if not self.over.done():
            self._out.append(mux_pb2.Call(id=call_id, cancel=True))
        self._wake_writer()

    def _wake_writer(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def drain(self) -> None:
        """No new calls: the stream half-closes once the calls on it have ended."""
        if not self.draining:
            self.draining = True
            self._wake_writer()
        if not self.leaving.done():
            self.leaving.set_result(True)
        self.replica.stream_leaving(self)

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self._out:
                    if self.draining and not self.pending:
                        await self.call.done_writing()
                        return
                    self._wake = loop.create_future()
                    await self._wake
                    self._wake = None
                    continue
                out, self._out = self._out, []
                if self._room is not None and not self._room.done():
                    self._room.set_result(None)
                self.messages += 1
                await self.call.write(mux_pb2.Calls(calls=out))
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            return  # the stream broke; the reader sees it and fails the calls

    async def _read(self) -> None:
        reason = "closed"
        try:
            while True:
                message = await self.call.read()
                if message is grpc.aio.EOF:
                    break
                for reply in message.replies:
                    if reply.id == 0:
                        self.drain()  # the server stops, or the stream is old: the next calls go elsewhere
                        continue
                    inbox = self.pending.get(reply.id)
                    if inbox is None:
                        continue  # a call its caller gave up on
                    if reply.last:
                        del self.pending[reply.id]
                        if self.draining and not self.pending:
                            self._wake_writer()
                    inbox.push(reply)
        except grpc.aio.AioRpcError as err:
            reason = f"{err.code().name}: {err.details()}"
        finally:
            self._end(reason)

    def _end(self, reason: str) -> None:
        if self.over.done():
            return
        self.over.set_result(None)
        if not self.leaving.done():
            self.leaving.set_result(False)
        self.replica.stream_leaving(self)
        lost = list(self.pending.values())
        self.pending.clear()
        if lost:
            log.warning("mux stream to %s broke with %d calls in flight (%s)", self.replica.address, len(lost), reason)
        err = _error(grpc.StatusCode.UNAVAILABLE, f"the connection to {self.replica.address} broke ({reason})")
        for inbox in lost:
            inbox.fail(err)
        if self._room is not None and not self._room.done():
            self._room.set_result(None)
        self._wake_writer()

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.call.cancel()
        err = _error(grpc.StatusCode.CANCELLED, "the channel was closed")
        for inbox in self.pending.values():
            inbox.fail(err)
        self.pending.clear()
        if not self.over.done():
            self.over.set_result(None)
        if not self.leaving.done():
            self.leaving.set_result(False)


class _Replica:
    """One address of the peer: a grpc channel, and the Mux stream on it, reopened when it breaks."""

    def __init__(self, mux: MuxChannel, address: str) -> None:
        self.mux = mux
        self.address = address
        self.channel = mtls.secure_channel(mux.tls, address, mux.peer, mux.options, [])
        self.stream: _Stream | None = None   # open and taking calls
        self.connecting = True
        self.retired = False
        self._streams: set[_Stream] = set()  # every stream not yet over, draining ones too
        self._pause: asyncio.Future[None] | None = None
        # A task of its own context: whichever call started it, its lines carry no request id.
        self._task = asyncio.get_running_loop().create_task(self._keep_open(), context=contextvars.Context())

    async def _keep_open(self) -> None:
        delay = BACKOFF_MIN_S
        down_since: float | None = None  # one line when a replica becomes unreachable, one when it is back
        loop = asyncio.get_running_loop()
        while not self.retired:
            self.connecting = True
            self.mux.replicas_changed()
            call = self.channel.stream_stream(OPEN, request_serializer=mux_pb2.Calls.SerializeToString,
                                              response_deserializer=mux_pb2.Replies.FromString)()
            stream = _Stream(self, call, self.mux.max_queued)
            ok, why = await stream.opened()
            if ok:
                if down_since is not None:
                    log.info("mux stream to %s open again after %.1fs", self.address, loop.time() - down_since)
                    down_since = None
                self._streams.add(stream)
                stream.over.add_done_callback(lambda _f, s=stream: self._streams.discard(s))
                self.stream, self.connecting = stream, False
                self.mux.replicas_changed()
                delay = BACKOFF_MIN_S
                told_to_go = await asyncio.shield(stream.leaving)
                if self.stream is stream:
                    self.stream = None
                if told_to_go:
                    continue  # the server ends this stream gracefully (its calls run on): open the next now
            else:
                call.cancel()
                if down_since is None:
                    down_since = loop.time()
                    log.warning("mux stream to %s cannot open (%s); trying again every second at most",
                                self.address, why)
            self.connecting = False
            self.mux.replicas_changed()
            self.mux.resolve_soon()
            pause = self._pause = loop.create_future()
            timer = loop.call_later(delay, _resolve, pause)
            await pause  # the back-off, or until a call wants this replica now (kick)
            timer.cancel()
            self._pause = None
            delay = min(BACKOFF_MAX_S, delay * 2)

    def kick(self) -> bool:
        """Cut the back-off short: a call is waiting and no replica is open. Whether it will try now."""
        if self._pause is None or self._pause.done() or self.retired:
            return False
        self._pause.set_result(None)
        self.connecting = True
        return True

    def stream_leaving(self, stream: _Stream) -> None:
        """`stream` takes no new calls (the server asked, or it broke)."""
        if self.stream is stream:
            self.stream = None
            self.mux.replicas_changed()

    async def retire(self) -> None:
        """Gone from DNS: no new calls; the calls on its streams run to their end, then it closes."""
        self.retired = True
        self._task.cancel()
        self.stream = None
        self.connecting = False
        self.mux.replicas_changed()
        streams = list(self._streams)
        for stream in streams:
            stream.drain()
        if streams:
            await asyncio.wait([s.over for s in streams], timeout=RETIRE_WAIT_S)
        await self.close()

    async def close(self) -> None:
        self.retired = True
        self._task.cancel()
        for stream in list(self._streams):
            stream.close()
        self.stream = None
        await self.channel.close()


def _addresses(target: str) -> tuple[list[str], tuple[str, int] | None]:
    """A target's fixed addresses, or the (host, port) that DNS resolves to the replicas."""
    if target.startswith(("ipv4:", "ipv6:")):
        scheme, _, rest = target.partition(":")
        return [f"{scheme}:{address}" for address in rest.split(",") if address], None
    if target.startswith("dns:"):
        name = target.removeprefix("dns:").lstrip("/")
        host, _, port = name.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"a dns: target needs host:port, got {target!r}")
        return [], (host.strip("[]"), int(port))
    return [target], None


class MuxChannel:
    """A drop-in for grpc.aio.Channel (as generated stubs use one) that multiplexes calls over Mux streams.

    `interceptors` are grpc.aio client interceptors, run around each call as a grpc.aio channel
    runs them (peers.py's: request id, default deadline, retries of idempotent calls).
    """

    def __init__(self, target: str, peer: str, tls: GrpcTls, options: Sequence[tuple[str, Any]] = (),
                 interceptors: Sequence[Any] = (), *, max_queued: int = MAX_QUEUED,
                 resolve_every_s: float = RESOLVE_EVERY_S) -> None:
        self.target, self.peer, self.tls = target, peer, tls
        self.options = list(options)
        self.max_queued = max_queued
        self._interceptors = list(interceptors)
        self._unary_interceptors = [i for i in interceptors if isinstance(i, grpc.aio.UnaryUnaryClientInterceptor)]
        self._stream_interceptors = [i for i in interceptors if isinstance(i, grpc.aio.UnaryStreamClientInterceptor)]
        self._fixed, self._dns = _addresses(target)
        self._resolve_every_s = resolve_every_s
        self._replicas: dict[str, _Replica] = {}
        self._ready: list[_Stream] = []
        self._turn = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._started = False
        self._closed = False
        self._resolved = self._dns is None
        self._resolver: asyncio.Task[None] | None = None
        self._resolve_now: asyncio.Future[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._plain: grpc.aio.Channel | None = None

    # --- what a generated stub calls -------------------------------------------------------

    def unary_unary(self, method: str, request_serializer: Serializer = None,
                    response_deserializer: Callable[[bytes], Any] | None = None,
                    _registered_method: bool = False) -> Any:
        if not method.startswith(MUXED):
            return self._plain_channel().unary_unary(method, request_serializer, response_deserializer)
        return _UnaryMethod(self, method, request_serializer, response_deserializer)

    def unary_stream(self, method: str, request_serializer: Serializer = None,
                     response_deserializer: Callable[[bytes], Any] | None = None,
                     _registered_method: bool = False) -> Any:
        if not method.startswith(MUXED):
            return self._plain_channel().unary_stream(method, request_serializer, response_deserializer)
        return _StreamMethod(self, method, request_serializer, response_deserializer)

    def stream_unary(self, method: str, request_serializer: Serializer = None,
                     response_deserializer: Callable[[bytes], Any] | None = None,
                     _registered_method: bool = False) -> Any:
        return self._plain_channel().stream_unary(method, request_serializer, response_deserializer)

    def stream_stream(self, method: str, request_serializer: Serializer = None,
                      response_deserializer: Callable[[bytes], Any] | None = None,
                      _registered_method: bool = False) -> Any:
        return self._plain_channel().stream_stream(method, request_serializer, response_deserializer)

    async def close(self, grace: float | None = None) -> None:
        self._closed = True
        if self._resolver is not None:
            self._resolver.cancel()
        for task in self._background:
            task.cancel()
        replicas, self._replicas = list(self._replicas.values()), {}
        self._ready = []
        self._wake_waiters()
        for replica in replicas:
            await replica.close()
        if self._plain is not None:
            await self._plain.close(grace)

    async def __aenter__(self) -> MuxChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _plain_channel(self) -> grpc.aio.Channel:
        if self._plain is None:
            self._plain = mtls.secure_channel(self.tls, self.target, self.peer, self.options, self._interceptors)
        return self._plain

    # --- replicas ---------------------------------------------------------------------------

    def streams(self) -> list[_Stream]:
        """The streams taking calls now (for tests and metrics)."""
        return list(self._ready)

    def _start(self) -> None:
        self._started = True
        for address in self._fixed:
            self._replicas[address] = _Replica(self, address)
        if self._dns is not None:
            self._resolver = asyncio.get_running_loop().create_task(self._resolve_forever(),
                                                                    context=contextvars.Context())

    def replicas_changed(self) -> None:
        self._ready = [r.stream for r in self._replicas.values() if r.stream is not None]
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def resolve_soon(self) -> None:
        if self._resolve_now is not None and not self._resolve_now.done():
            self._resolve_now.set_result(None)

    async def _resolve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            await self._resolve()
            self._resolve_now = loop.create_future()
            try:
                await asyncio.wait_for(self._resolve_now, self._resolve_every_s)
            except TimeoutError:
                pass

    async def _resolve(self) -> None:
        assert self._dns is not None
        host, port = self._dns
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            log.warning("cannot resolve %s: %s", self.target, exc)
            infos = None
        if infos is not None:
            found = {f"ipv6:[{info[4][0]}]:{info[4][1]}" if info[0] == socket.AF_INET6
                     else f"ipv4:{info[4][0]}:{info[4][1]}" for info in infos}
            for address in found - self._replicas.keys():
                self._replicas[address] = _Replica(self, address)
            for address in self._replicas.keys() - found:
                task = asyncio.get_running_loop().create_task(self._replicas.pop(address).retire())
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        self._resolved = True
        self.replicas_changed()

    async def stream_for(self, deadline: float | None) -> _Stream:
        """A stream taking calls, round-robin over the replicas; waits while one is connecting."""
        ready = self._ready
        if ready:
            self._turn += 1
            return ready[self._turn % len(ready)]
        if not self._started:
            self._start()
        loop = asyncio.get_running_loop()
        kicked = False
        while not self._ready:
            if self._closed:
                raise _error(grpc.StatusCode.CANCELLED, "the channel was closed")
            if self._resolved and not any(r.connecting for r in self._replicas.values()):
                # Every replica is backing off after a failure: try them once now (a peer that just
                # started, or came back), and fail only if that fails too.
                if not kicked and any([r.kick() for r in self._replicas.values()]):
                    kicked = True
                    continue
                raise _error(grpc.StatusCode.UNAVAILABLE, f"no replica of {self.peer} at {self.target} is reachable")
            waiter = loop.create_future()
            self._waiters.append(waiter)
            if deadline is None:
                await waiter
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise _error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                raise _error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        return await self.stream_for(deadline)

    async def start_call(self, method: str, payload: bytes, timeout: float | None, metadata: Any,
                         inbox: _Inbox) -> tuple[_Stream, int]:
        """Send one call (after waiting for a stream, and for room on it); the deadline starts now."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout is not None else None
        request_id = ""
        headers = []
        for key, value in metadata or ():
            if key == "x-request-id":
                request_id = value
            elif isinstance(value, str):
                headers.append(mux_pb2.Header(key=key, value=value))
        request_id = request_id or request_id_var.get()
        stream = await self.stream_for(deadline)
        remaining = None if deadline is None else deadline - loop.time()
        call_id = await stream.submit(method, payload, remaining, request_id, headers, inbox)
        if remaining is not None:
            inbox.timer = loop.call_later(max(0.0, remaining), _expire, stream, call_id, inbox)
        return stream, call_id


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _expire(stream: _Stream, call_id: int, inbox: _Inbox) -> None:
    stream.cancel(call_id)
    inbox.fail(_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))


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

    def __init__(self, channel: MuxChannel, method: str, request: Any, serialize: Serializer,
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
        self._inbox = _Inbox()
        self._stream: _Stream | None = None
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
        error = _error(grpc.StatusCode.CANCELLED, "Locally cancelled by application!")
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


class _UnaryMethod:
    def __init__(self, channel: MuxChannel, method: str, serialize: Serializer,
                 deserialize: Callable[[bytes], Any] | None) -> None:
        self._channel, self._method, self._serialize, self._deserialize = channel, method, serialize, deserialize

    def __call__(self, request: Any, *, timeout: float | None = None, metadata: Any = None, credentials: Any = None,
                 wait_for_ready: bool | None = None, compression: Any = None) -> _UnaryCall:
        return _UnaryCall(self._channel, self._method, request, self._serialize, self._deserialize, timeout,
                          metadata, self._channel._unary_interceptors)


class _StreamMethod:
    def __init__(self, channel: MuxChannel, method: str, serialize: Serializer,
                 deserialize: Callable[[bytes], Any] | None) -> None:
        self._channel, self._method, self._serialize, self._deserialize = channel, method, serialize, deserialize

    def __call__(self, request: Any, *, timeout: float | None = None, metadata: Any = None, credentials: Any = None,
                 wait_for_ready: bool | None = None, compression: Any = None) -> _StreamCall:
        return _StreamCall(self._channel, self._method, request, self._serialize, self._deserialize, timeout,
                           metadata, self._channel._stream_interceptors)
