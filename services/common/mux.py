"""The client side of the multiplexed streams (mux.proto): a channel that generated stubs take in
place of a grpc.aio.Channel, carrying every call to a peer over one long-lived bidi stream per
replica, matched by id.

Whatever is queued when a stream's writer runs goes as one message; nothing waits for a batch
to fill. Calls go round-robin over the replicas whose stream is open, or, on a channel made with
`affinity`, by their request id: every call about one request (billing's Reserve, its
cancellation, Settle, KeepAlive) then takes the same stream to the same replica, in order. A stream that breaks fails
its calls in flight with UNAVAILABLE and no ErrorDetail, as a dead replica's unary call does
(peers.transport_failure), so callers retry and fail over exactly as before; it reopens after
100 ms, doubling to 1 s. A `dns:///host:port` target is resolved here, every few seconds and
whenever a stream breaks, to one stream per address. Methods of other services (health) go over
an ordinary channel to the target.
"""
from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import socket
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from chatkore.v1 import mux_pb2
from services.common import mtls
from services.common.logs import request_id_var
from services.common.mtls import GrpcTls
from services.common.muxcall import Inbox, Serializer, StreamMethod, UnaryMethod, rpc_error

log = logging.getLogger(__name__)

OPEN = "/chatkore.v1.Mux/Open"
MUXED = ("/chatkore.v1.Auth/", "/chatkore.v1.Billing/", "/chatkore.v1.Inference/")
MAX_QUEUED = 1024          # calls waiting for a stream's writer; more wait for room
RESOLVE_EVERY_S = 5.0
RECONNECT_WAIT_S = 1.5     # a call that finds every replica backing off waits this long for one
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.1, 1.0
RETIRE_WAIT_S = 600.0      # a replica gone from DNS keeps its stream this long for the calls on it

class _Stream:
    """One open Mux stream to one replica: its calls in flight, and the calls waiting for its writer."""

    def __init__(self, replica: _Replica, call: grpc.aio.StreamStreamCall, max_queued: int) -> None:
        self.replica = replica
        self.call = call
        self.pending: dict[int, Inbox] = {}
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
                     metadata: Sequence[mux_pb2.Header], inbox: Inbox) -> int:
        """Queue one call; its id. Waits while the queue is full."""
        while len(self._out) >= self._max_queued and not self.over.done():
            if self._room is None or self._room.done():
                self._room = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._room)
        if self.over.done() or self.draining:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, f"the stream to {self.replica.address} closed")
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

    def forget(self, call_id: int) -> None:
        """Stop waiting for the call's replies (its deadline passed)."""
        if self.pending.pop(call_id, None) is not None and self.draining and not self.pending:
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
        err = rpc_error(grpc.StatusCode.UNAVAILABLE, f"the connection to {self.replica.address} broke ({reason})")
        for inbox in lost:
            inbox.fail(err)
        if self._room is not None and not self._room.done():
            self._room.set_result(None)
        self._wake_writer()

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.call.cancel()
        err = rpc_error(grpc.StatusCode.CANCELLED, "the channel was closed")
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
                 resolve_every_s: float = RESOLVE_EVERY_S, affinity: bool = False) -> None:
        self.target, self.peer, self.tls = target, peer, tls
        self.affinity = affinity
        self.options = list(options)
        self.max_queued = max_queued
        self._interceptors = list(interceptors)
        self.unary_interceptors = [i for i in interceptors if isinstance(i, grpc.aio.UnaryUnaryClientInterceptor)]
        self.stream_interceptors = [i for i in interceptors if isinstance(i, grpc.aio.UnaryStreamClientInterceptor)]
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
        return UnaryMethod(self, method, request_serializer, response_deserializer)

    def unary_stream(self, method: str, request_serializer: Serializer = None,
                     response_deserializer: Callable[[bytes], Any] | None = None,
                     _registered_method: bool = False) -> Any:
        if not method.startswith(MUXED):
            return self._plain_channel().unary_stream(method, request_serializer, response_deserializer)
        return StreamMethod(self, method, request_serializer, response_deserializer)

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
        # In address order: a request id maps to the same replica in every process that sees the same ones.
        self._ready = [r.stream for r in sorted(self._replicas.values(), key=lambda r: r.address)
                       if r.stream is not None]
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

    async def stream_for(self, deadline: float | None, request_id: str = "") -> _Stream:
        """A stream taking calls, round-robin over the replicas (by `request_id` with affinity);
        waits while one is connecting."""
        ready = self._ready
        if ready:
            if self.affinity and request_id:
                return ready[zlib.crc32(request_id.encode()) % len(ready)]
            self._turn += 1
            return ready[self._turn % len(ready)]
        if not self._started:
            self._start()
        loop = asyncio.get_running_loop()
        kicked = False
        give_up: float | None = None
        while not self._ready:
            if self._closed:
                raise rpc_error(grpc.StatusCode.CANCELLED, "the channel was closed")
            backing_off = self._resolved and not any(r.connecting for r in self._replicas.values())
            if backing_off:
                # Every replica is backing off after a failure: try them once now (a peer that just
                # started, or came back), then wait a little for one (a peer restarting takes a
                # moment to listen again) and fail only if none comes.
                if not kicked and any([r.kick() for r in self._replicas.values()]):
                    kicked = True
                    continue
                if give_up is None:
                    give_up = loop.time() + RECONNECT_WAIT_S
                if loop.time() >= give_up:
                    raise rpc_error(grpc.StatusCode.UNAVAILABLE,
                                    f"no replica of {self.peer} at {self.target} is reachable")
            waiter = loop.create_future()
            self._waiters.append(waiter)
            wait_until = give_up if backing_off else None
            if deadline is None and wait_until is None:
                await waiter
                continue
            until = min(t for t in (deadline, wait_until) if t is not None)
            remaining = until - loop.time()
            if remaining <= 0 and until == deadline:
                raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            try:
                await asyncio.wait_for(waiter, max(remaining, 0.0))
            except TimeoutError:
                if until == deadline:
                    raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
                kicked = False  # the back-off may have passed: the next turn tries once more
        return await self.stream_for(deadline, request_id)

    async def start_call(self, method: str, payload: bytes, timeout: float | None, metadata: Any,
                         inbox: Inbox) -> tuple[_Stream, int]:
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
        stream = await self.stream_for(deadline, request_id)
        remaining = None if deadline is None else deadline - loop.time()
        call_id = await stream.submit(method, payload, remaining, request_id, headers, inbox)
        if remaining is not None:
            inbox.timer = loop.call_later(max(0.0, remaining), _expire, stream, call_id, inbox)
        return stream, call_id

def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _expire(stream: _Stream, call_id: int, inbox: Inbox) -> None:
    # No cancel goes with it: the deadline went with the call, and the server ends the handler at
    # that deadline itself (DEADLINE_EXCEEDED there too), as gRPC does.
    stream.forget(call_id)
    inbox.fail(rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
