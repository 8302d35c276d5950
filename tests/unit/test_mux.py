"""Multiplexed streams between the services (services/common/mux.py, muxserver.py), against real
grpc.aio servers on loopback: in this process, or in processes of their own that the test kills
and starts again (tests/unit/muxpeer.py)."""
from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from chatkore.v1 import inference_pb2, inference_pb2_grpc
from edge.retry import RetryInterceptor
from services.common import peers
from services.common.errors import detail_of, reason_of
from services.common.logs import request_id_var
from services.common.mtls import GrpcTls
from services.common.mux import MuxChannel
from tests.unit import muxpeer
from tools import pki
from tools.stack import free_port

ROOT = Path(__file__).resolve().parents[2]
INSECURE = GrpcTls("edge", insecure=True)


def run(test: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(test, 60))


async def until(check: Callable[[], object], timeout_s: float, what: str) -> None:
    """Wait for `check()` to hold, failing after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():
        if loop.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def until_ok(call: Callable[[], Awaitable[object]], timeout_s: float, what: str) -> object:
    """Repeat `call()` until it answers, failing after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError:
            if loop.time() > deadline:
                raise
        await asyncio.sleep(0.02)


def relay(model: str = "echo", body: bytes = b"", n: int = 0) -> inference_pb2.RelayRequest:
    return inference_pb2.RelayRequest(model=model, body=body, n=n)


def served(method: str, code: str) -> float:
    return REGISTRY.get_sample_value("chatkore_grpc_requests_total",
                                     {"method": f"chatkore.v1.Inference/{method}", "code": code}) or 0.0


class Process:
    """muxpeer.py in a process of its own, on a fixed port (so it can come back on it)."""

    def __init__(self, name: str, port: int) -> None:
        self.name, self.port = name, port
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Process:
        env = {**os.environ, "PYTHONPATH": f"{ROOT / 'gen'}{os.pathsep}{ROOT}"}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.unit.muxpeer", str(self.port), self.name, cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE)
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        assert line.startswith(b"listening"), line
        return self

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)  # no goodbye: the connection just breaks
        await self.proc.wait()

    async def __aenter__(self) -> Process:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            await self.kill()


def test_many_calls_in_flight_on_one_stream_each_get_their_own_reply() -> None:
    async def test() -> None:
        peer = muxpeer.Peer("a")
        server, mux, port = await muxpeer.start(peer)
        channel = MuxChannel(f"127.0.0.1:{port}", "inference", INSECURE)
        stub = inference_pb2_grpc.InferenceStub(channel)
        # Slow ones first, so that the quick ones overtake them on the same stream.
        bodies = [b"0.%d %d" % (i % 3, i) if i % 4 == 0 else b"%d" % i for i in range(300)]
        replies = await asyncio.gather(*(stub.Relay(relay("slow" if b" " in b else "echo", b)) for b in bodies))
        assert [r.body for r in replies] == [b"a:" + b for b in bodies]
        assert [r.credits for r in replies] == [len(b) for b in bodies]
        assert len(channel.streams()) == 1 and len(mux._streams) == 1
        await channel.close()
        await server.stop(None)

    run(test())


def test_calls_queued_in_one_loop_turn_go_as_one_message_each_way() -> None:
    async def test() -> None:
        server, mux, port = await muxpeer.start(muxpeer.Peer("a"))
        channel = MuxChannel(f"127.0.0.1:{port}", "inference", INSECURE)
        stub = inference_pb2_grpc.InferenceStub(channel)
        await stub.Relay(relay())  # the stream is open
        stream = channel.streams()[0]
        sent, written = stream.messages, mux.messages
        replies = await asyncio.gather(*(stub.Relay(relay(body=b"%d" % i)) for i in range(32)))
        assert [r.body for r in replies] == [b"a:%d" % i for i in range(32)]
        assert stream.messages - sent == 1   # 32 calls, one Calls message
        assert mux.messages - written == 1   # 32 answers ready in one turn, one Replies message
        await channel.close()
        await server.stop(None)

    run(test())


def test_a_full_queue_makes_callers_wait_and_loses_nothing() -> None:
    async def test() -> None:
        server, _mux, port = await muxpeer.start(muxpeer.Peer("a"))
        channel = MuxChannel(f"127.0.0.1:{port}", "inference", INSECURE, max_queued=4)
        stub = inference_pb2_grpc.InferenceStub(channel)
        await stub.Relay(relay())
        stream = channel.streams()[0]
        sent = stream.messages
        replies = await asyncio.gather(*(stub.Relay(relay(body=b"%d" % i)) for i in range(40)))
        assert [r.body for r in replies] == [b"a:%d" % i for i in range(40)]
        assert stream.messages - sent >= 10  # never more than 4 calls waiting, so never more than 4 a message
        await channel.close()
        await server.stop(None)

    run(test())


def test_a_deadline_expires_on_the_stream_and_the_handler_is_cancelled() -> None:
    async def test() -> None:
        peer = muxpeer.Peer("a")
        server, _mux, port = await muxpeer.start(peer)
        channel = MuxChannel(f"127.0.0.1:{port}", "inference", INSECURE)
        stub = inference_pb2_grpc.InferenceStub(channel)
        before = served("Relay", "DEADLINE_EXCEEDED")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Relay(relay("slow", b"late"), timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert not peers.transport_failure(err.value)
        await until(lambda: peer.cancelled[b"late"].is_set(), 5, "the server's handler to be cancelled")
        await until(lambda: served("Relay", "DEADLINE_EXCEEDED") == before + 1, 5, "the call to be counted")
        # A stream's deadline covers the whole stream.
        call = stub.RelayStream(relay("slow", b"late stream", n=2), timeout=0.3)
        assert [e.chunk async for e in _until_error(call)] == [b"a:0", b"a:1"]
        assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await until(lambda: peer.cancelled[b"late stream"].is_set(), 5, "the stream's handler to be cancelled")
        assert (await stub.Relay(relay(body=b"next"))).body == b"a:next"  # the stream itself is fine
        await channel.close()
        await server.stop(None)

    run(test())


async def _until_error(call: Any) -> Any:
    try:
        async for event in call:
            yield event
    except grpc.aio.AioRpcError:
        return


def test_a_call_its_caller_gives_up_on_is_cancelled_on_the_server() -> None:
    async def test() -> None:
        peer = muxpeer.Peer("a")
        server, _mux, port = await muxpeer.start(peer)
        channel = MuxChannel(f"127.0.0.1:{port}", "inference", INSECURE)
        stub = inference_pb2_grpc.InferenceStub(channel)
        task = asyncio.ensure_future(stub.Relay(relay("slow", b"bye")))
        await until(lambda: b"bye" in peer.started, 5, "the handler to start")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: peer.cancelled[b"bye"].is_set(), 5, "the server's handler to be cancelled")
        # A stream its reader cancels (the edge does when its client leaves).
        call = stub.RelayStream(relay("slow", b"bye stream", n=1))
        assert (await call.read()).chunk == b"a:0"
        await until(lambda: b"bye stream" in peer.started, 5, "the stream's handler to wait")
        assert call.cancel() and call.cancelled()
        await until(lambda: peer.cancelled[b"bye stream"].is_set(), 5, "the stream's handler to be cancelled")
        assert not channel.streams()[0].pending
        assert (await stub.Relay(relay(body=b"next"))).body == b"a:next"
        await channel.close()
        await server.stop(None)

    run(test())


def test_a_server_stream_brings_its_initial_metadata_and_every_item_in_order() -> None:
    async def test() -> None:
        server, _mux, port = await muxpeer.start(muxpeer.Peer("a"))
        channel = peers.channel(f"127.0.0.1:{port}", "inference", INSECURE, mux=True)
        assert isinstance(channel, MuxChannel)
        stub = inference_pb2_grpc.InferenceStub(channel)
        call = stub.RelayStream(relay(n=50))
        first = await call.read()
        assert (await call.initial_metadata())["x-chatkore-max-tokens"] == "42"
        rest = [event.chunk async for event in call]
        assert [first.chunk, *rest] == [b"a:%d" % i for i in range(50)]
        assert await call.code() == grpc.StatusCode.OK
        # A stream that fails after some items: the items, then the error with its detail.
        call = stub.RelayStream(relay("fail", n=3))
        assert [(await call.read()).chunk for _ in range(3)] == [b"a:0", b"a:1", b"a:2"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and reason_of(err.value) == "UNAVAILABLE"
        assert not peers.transport_failure(err.value)
        await channel.close()
        await server.stop(None)

    run(test())


def test_errors_arrive_with_their_detail_intact_and_nothing_leaks() -> None:
    async def test() -> None:
        server, _mux, port = await muxpeer.start(muxpeer.Peer("a"))
        channel = MuxChannel(f"127.0.0.1:{port}", "inference", INSECURE)
        stub = inference_pb2_grpc.InferenceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Relay(relay("fail"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        detail = detail_of(err.value)
        assert detail is not None and (detail.message, detail.param, detail.code) == \
            ("that will not do", "messages[0]", "bad_thing")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Relay(relay("down"))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and reason_of(err.value) == "UNAVAILABLE"
        assert not peers.transport_failure(err.value)  # the service's own failure: not retried elsewhere
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Relay(relay("crash"))
        assert (err.value.code(), err.value.details()) == (grpc.StatusCode.INTERNAL, "internal error")
        assert detail_of(err.value) is None
        await channel.close()
        await server.stop(None)

    run(test())


def test_the_request_id_and_metadata_travel_with_each_call_and_are_counted() -> None:
    async def test() -> None:
        peer = muxpeer.Peer("a")
        server, _mux, port = await muxpeer.start(peer)
        channel = peers.channel(f"127.0.0.1:{port}", "inference", INSECURE, mux=True)
        stub = inference_pb2_grpc.InferenceStub(channel)
        before = served("Relay", "OK")

        async def one(rid: str) -> None:
            request_id_var.set(rid)
            await stub.Relay(relay(body=rid.encode()), metadata=(("traceparent", "00-" + rid),))

        await asyncio.gather(*(one(f"req_{i}") for i in range(10)))
        assert sorted(seen[0] for seen in peer.seen) == sorted(f"req_{i}" for i in range(10))
        for rid, metadata in peer.seen:
            assert ("x-request-id", rid) in metadata and ("traceparent", "00-" + rid) in metadata
        assert served("Relay", "OK") == before + 10
        await channel.close()
        await server.stop(None)

    run(test())


def test_each_call_on_a_stream_is_checked_against_the_callers_certificate(tmp_path: Path) -> None:
    async def test() -> None:
        root = pki.ensure(tmp_path / "pki", ("edge", "auth", "billing", "inference"))
        tls = {name: GrpcTls.from_dir(name, root / name) for name in ("edge", "auth", "billing", "inference")}
        server, _mux, port = await muxpeer.start(muxpeer.Peer("a"), authorize=True,
                                                 credentials=tls["inference"].server_credentials())
        target = f"127.0.0.1:{port}"
        channels = [MuxChannel(target, "inference", tls[name]) for name in ("edge", "auth", "billing")]
        edge = inference_pb2_grpc.InferenceStub(channels[0])
        assert (await edge.Relay(relay(body=b"ok"))).body == b"a:ok"
        # auth may open a stream (it calls billing), but not relay: each call is checked.
        auth = inference_pb2_grpc.InferenceStub(channels[1])
        for call in (lambda: auth.Relay(relay()), lambda: auth.RelayStream(relay(n=1)).read()):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call()
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "auth may not call chatkore.v1.Inference/Relay" in err.value.details()
        # billing calls nobody: it may not even open a stream.
        billing = channels[2]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await inference_pb2_grpc.InferenceStub(billing).Relay(relay())
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and not billing.streams()
        for channel in channels:
            await channel.close()
        await server.stop(None)

    run(test())


def test_a_peer_killed_mid_call_fails_the_calls_in_flight_as_a_transport_failure() -> None:
    async def test() -> None:
        async with Process("a", free_port()) as peer:
            channel = MuxChannel(f"127.0.0.1:{peer.port}", "inference", INSECURE)
            stub = inference_pb2_grpc.InferenceStub(channel)
            assert (await stub.Relay(relay(body=b"x"))).body == b"a:x"
            calls = [asyncio.ensure_future(stub.Relay(relay("slow", b"x%d" % i))) for i in range(5)]
            stream = channel.streams()[0]
            await until(lambda: len(stream.pending) == 5 and not stream._out, 5, "the calls to be sent")
            await peer.kill()
            for outcome in await asyncio.gather(*calls, return_exceptions=True):
                assert isinstance(outcome, grpc.aio.AioRpcError), outcome
                assert outcome.code() == grpc.StatusCode.UNAVAILABLE and detail_of(outcome) is None
                assert peers.transport_failure(outcome)
            await channel.close()

    run(test())


def test_the_stream_reopens_when_the_peer_comes_back_on_its_port() -> None:
    async def test() -> None:
        port = free_port()
        channel = MuxChannel(f"127.0.0.1:{port}", "inference", INSECURE)
        stub = inference_pb2_grpc.InferenceStub(channel)
        async with Process("first", port) as peer:
            assert (await stub.Relay(relay(body=b"x"))).body == b"first:x"
            await peer.kill()
        with pytest.raises(grpc.aio.AioRpcError) as err:  # nobody there: it says so at once
            await stub.Relay(relay(body=b"x"), timeout=10)
        assert peers.transport_failure(err.value)
        async with Process("second", port):
            reply = await until_ok(lambda: stub.Relay(relay(body=b"y"), timeout=10), 15, "the stream to reopen")
            assert reply.body == b"second:y"
            replies = await asyncio.gather(*(stub.Relay(relay(body=b"%d" % i)) for i in range(20)))
            assert {r.body.split(b":")[0] for r in replies} == {b"second"}
        await channel.close()

    run(test())


def test_calls_spread_over_two_replicas_and_continue_on_one_when_the_other_dies() -> None:
    async def test() -> None:
        async with Process("a", free_port()) as a, Process("b", free_port()) as b:
            # As the edge dials: its retry makes an idempotent call lost in transport again (edge/retry.py).
            channel = peers.channel(f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}", "inference", INSECURE,
                                    outer=[RetryInterceptor()], mux=True)
            assert isinstance(channel, MuxChannel)
            stub = inference_pb2_grpc.InferenceStub(channel)
            await until_ok(lambda: stub.Relay(relay()), 10, "a first answer")
            await until(lambda: len(channel.streams()) == 2, 10, "both streams to open")
            replies = await asyncio.gather(*(stub.Relay(relay(body=b"%d" % i)) for i in range(40)))
            by = [r.body.split(b":")[0] for r in replies]
            assert by.count(b"a") == by.count(b"b") == 20
            # Calls in flight on both; one replica dies; the ones it had are made again on the other.
            slow = [asyncio.ensure_future(stub.Relay(relay("slow", b"0.5 %d" % i))) for i in range(10)]
            await until(lambda: all(len(s.pending) == 5 for s in channel.streams()), 5, "the calls to be in flight")
            await a.kill()
            replies = await asyncio.gather(*slow)
            assert sorted(r.body for r in replies) == sorted(b"b:0.5 %d" % i for i in range(10))
            replies = await asyncio.gather(*(stub.Relay(relay(body=b"%d" % i)) for i in range(20)))
            assert {r.body.split(b":")[0] for r in replies} == {b"b"}
            assert len(channel.streams()) == 1
            await channel.close()

    run(test())


def test_with_affinity_every_call_about_one_request_goes_to_one_replica() -> None:
    """Billing's channel: a request's Reserve, its cancellation, release and Settle reach the one
    replica its request id maps to (in order on one stream); requests still spread over both."""
    async def test() -> None:
        async with Process("a", free_port()) as a, Process("b", free_port()) as b:
            channel = peers.channel(f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}", "inference", INSECURE,
                                    mux=True, affinity=True)
            assert isinstance(channel, MuxChannel)
            stub = inference_pb2_grpc.InferenceStub(channel)
            await until_ok(lambda: stub.Relay(relay()), 10, "a first answer")
            await until(lambda: len(channel.streams()) == 2, 10, "both streams to open")
            where: dict[str, set[bytes]] = {}
            for n in range(40):
                rid = f"req-{n}"
                replies = await asyncio.gather(*(stub.Relay(relay(body=b"%d" % i), metadata=(("x-request-id", rid),))
                                                 for i in range(5)))
                where[rid] = {r.body.split(b":")[0] for r in replies}
            assert all(len(replicas) == 1 for replicas in where.values()), where
            counts = [sum(replicas == {name} for replicas in where.values()) for name in (b"a", b"b")]
            assert counts == [20, 20], counts  # req-0..req-39: CRC-32 even for 20 of them, odd for 20
            # The same request ids map to the same replicas again (in any process seeing both).
            again = {rid: {(await stub.Relay(relay(), metadata=(("x-request-id", rid),))).body.split(b":")[0]}
                     for rid in where}
            assert again == where
            await channel.close()

    run(test())


def test_a_server_that_stops_lets_the_calls_on_its_streams_finish_and_takes_no_new_ones() -> None:
    async def test() -> None:
        peer = muxpeer.Peer("a")
        server, mux, port = await muxpeer.start(peer)
        channel = MuxChannel(f"127.0.0.1:{port}", "inference", INSECURE)
        stub = inference_pb2_grpc.InferenceStub(channel)
        call = asyncio.ensure_future(stub.Relay(relay("slow", b"0.5 last")))
        stream_call = stub.RelayStream(relay(n=1))
        assert (await stream_call.read()).chunk == b"a:0"
        await until(lambda: b"0.5 last" in peer.started, 5, "the call to start")
        mux.drain()  # what grpcserver.serve does on SIGTERM, before server.stop(grace)
        stopping = asyncio.ensure_future(server.stop(30))
        await until(lambda: not channel.streams(), 5, "the client to stop sending on the stream")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Relay(relay(body=b"new"), timeout=5)
        assert peers.transport_failure(err.value)  # refused, so a caller may go to another replica
        assert (await call).body == b"a:0.5 last"
        assert await stream_call.read() is grpc.aio.EOF
        await until(lambda: not mux._streams, 5, "the stream to end once its calls had")
        await stopping
        await channel.close()

    run(test())


def test_a_dns_target_opens_a_stream_per_address() -> None:
    async def test() -> None:
        server, _mux, port = await muxpeer.start(muxpeer.Peer("a"))
        channel = MuxChannel(f"dns:///localhost:{port}", "inference", INSECURE)
        stub = inference_pb2_grpc.InferenceStub(channel)
        assert (await stub.Relay(relay(body=b"x"))).body == b"a:x"
        assert {r.address for r in channel._replicas.values()} >= {f"ipv4:127.0.0.1:{port}"}
        await channel.close()
        await server.stop(None)

    run(test())


def test_the_switch_picks_the_channel_and_refuses_a_value_it_does_not_know(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common.config import ConfigError

    async def test() -> None:
        for value, kind in (("1", MuxChannel), ("0", grpc.aio.Channel)):
            monkeypatch.setenv(peers.MUX_VAR, value)
            channel = peers.channel("127.0.0.1:1", "inference", INSECURE)
            assert isinstance(channel, kind)
            await channel.close()
        monkeypatch.setenv(peers.MUX_VAR, "yes")
        with pytest.raises(ConfigError, match="CHATKORE_GRPC_MUX must be 0 or 1"):
            peers.channel("127.0.0.1:1", "inference", INSECURE)

    run(test())
