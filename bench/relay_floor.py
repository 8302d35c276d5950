"""The floor under a relayed stream: CPU of a bare two-process relay, per stream and per chunk.

`python -m bench.relay_floor` wires what chatkore's streamed chat path is made of and nothing
else: an *inner* process (inference's place) that opens the upstream stream with aiohttp and
passes each SSE event on as one gRPC aio message of raw bytes, and an *outer* one (the edge's
place) that serves HTTP with aiohttp, calls the inner one and writes each message to its
client as an SSE event. No parsing, no counting, no auth, no billing, no database, no logs.
Both run on core 0 under uvloop, as the services do; the bench's mock upstream and stream
client (the same as `make bench`'s stream rows) on core 1, at the same rate and spacing.

What the two processes use per stream is what the two hops cost before chatkore does anything
of its own: set it against the edge's and inference's CPU per stream in `make bench`.
With `--scenario '1000 open streams'` the streams open over `--ramp` seconds, as in `make bench`,
and the two processes' memory (PSS) is read at rest and again with every stream open.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench import procs, streams
from bench.mock import CHUNKS
from bench.run import WORK, _pinning, _raise_open_files
from bench.scenarios import SCENARIOS, body_bytes, summarise_streams
from bench.targets import Mock
from tools.stack import free_port

METHOD = "/floor.Relay/Open"
MUX_METHOD = "/floor.Relay/Mux"
_END = b"\x01"
_DATA = b"\x00"
ROOT = Path(__file__).resolve().parent.parent


def _same(b: bytes) -> bytes:
    return b


async def _inner(port: int, upstream: str) -> None:
    import aiohttp
    import grpc

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def relay(body: bytes, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        async with session.post(upstream, data=body, headers={"Content-Type": "application/json"}) as answer:
            buffer = b""
            async for piece in answer.content.iter_any():
                buffer += piece
                *events, buffer = buffer.split(b"\n\n")
                for event in events:
                    data = event.removeprefix(b"data: ")
                    if data != b"[DONE]":
                        yield data

    async def mux(requests, context: grpc.aio.ServicerContext) -> None:  # type: ignore[no-untyped-def]
        writing = asyncio.Lock()  # one write at a time on the stream, as gRPC requires

        async def one(tag: bytes, body: bytes) -> None:
            async for data in relay(body, context):
                async with writing:
                    await context.write(tag + _DATA + data)
            async with writing:
                await context.write(tag + _END)

        running = set()
        async for message in requests:
            task = asyncio.ensure_future(one(message[:4], message[4:]))
            running.add(task)
            task.add_done_callback(running.discard)

    codec = {"request_deserializer": _same, "response_serializer": _same}
    handlers = {"Open": grpc.unary_stream_rpc_method_handler(relay, **codec),
                "Mux": grpc.stream_stream_rpc_method_handler(mux, **codec)}
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("floor.Relay", handlers)])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


async def _outer(port: int, inner_port: int, hop: str) -> None:
    import grpc
    from aiohttp import web

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{inner_port}")
    open_stream = channel.unary_stream(METHOD, request_serializer=_same, response_deserializer=_same)
    waiting: dict[bytes, asyncio.Queue[bytes | None]] = {}
    numbers = iter(range(1 << 32))
    writing = asyncio.Lock()
    background: list[asyncio.Future[None]] = []
    if hop == "mux":
        stream = channel.stream_stream(MUX_METHOD, request_serializer=_same, response_deserializer=_same)()

        async def read() -> None:
            async for message in stream:
                waiting[message[:4]].put_nowait(None if message[4:5] == _END else message[5:])
        background.append(asyncio.ensure_future(read()))

    async def chunks(body: bytes):  # type: ignore[no-untyped-def]
        if hop == "call":
            async for data in open_stream(body, timeout=60):
                yield data
            return
        tag = next(numbers).to_bytes(4, "big")
        queue = waiting[tag] = asyncio.Queue()
        try:
            async with writing:
                await stream.write(tag + body)
            while (data := await queue.get()) is not None:
                yield data
        finally:
            del waiting[tag]

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        async for data in chunks(body):
            await response.write(b"data: " + data + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


def _start(args: list[str], core: int | None) -> subprocess.Popen[str]:
    proc = subprocess.Popen([*procs.pin_prefix(core), sys.executable, "-m", "bench.relay_floor", *args],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"bench: relay_floor {args[0]} did not start")
    return proc


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--inner", type=int, help=argparse.SUPPRESS)
    p.add_argument("--outer", type=int, help=argparse.SUPPRESS)
    p.add_argument("--upstream", help=argparse.SUPPRESS)
    p.add_argument("--inner-port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--hop", choices=("call", "mux"), default="mux",
                   help="one gRPC call per relayed stream, or one long-lived multiplexed stream (chatkore's)")
    p.add_argument("--scenario", default="stream c=16", help="a streamed scenario of `make bench`")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--ramp", type=float, default=10.0, help="seconds over which a held scenario's streams open")
    p.add_argument("--no-pin", action="store_true", help="do not pin the relay and the load to separate cores")
    args = p.parse_args()
    import uvloop
    if args.inner:
        uvloop.run(_inner(args.inner, args.upstream))
        return 0
    if args.outer:
        uvloop.run(_outer(args.outer, args.inner_port, args.hop))
        return 0

    s = next((x for x in SCENARIOS if x.name == args.scenario and x.kind in ("stream", "hold")), None)
    if s is None:
        raise SystemExit(f"relay_floor: no streamed scenario {args.scenario!r}; "
                         f"one of {[x.name for x in SCENARIOS if x.kind in ('stream', 'hold')]}")
    _raise_open_files()
    stack_core, load_core, pinning = _pinning(args)
    print(f"relay_floor: {pinning}", flush=True)
    log_dir = WORK / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    mock = Mock(load_core, log_dir)
    inner_port, outer_port = free_port(), free_port()
    started: list[subprocess.Popen[str]] = []
    try:
        started.append(_start(["--inner", str(inner_port), "--upstream",
                               f"http://127.0.0.1:{mock.port}{mock.path(s.model, s.endpoint)}"], stack_core))
        started.append(_start(["--outer", str(outer_port), "--inner-port", str(inner_port), "--hop", args.hop],
                              stack_core))
        inner, outer = started
        held = s.kind == "hold"
        path, body = "/v1/chat/completions", body_bytes(s)
        rate = s.concurrency / (args.ramp if held else s.stream_s)

        async def load(seconds: float) -> tuple[list[streams.StreamResult], float]:
            return await streams.open_loop("127.0.0.1", outer_port, path, body, None, rate=rate, duration_s=seconds,
                                           timeout_s=s.stream_s + 120)

        def pss_mb() -> float:
            return sum(m.pss_kb for m in (procs.memory(inner.pid), procs.memory(outer.pid)) if m) / 1024

        if not held:
            asyncio.run(load(3))
        at_rest = pss_mb()
        plateau: list[float] = []
        # Every stream opened, none finished yet: where `make bench` reads the services' memory.
        probe = threading.Timer(args.ramp + min(5.0, (s.stream_s - args.ramp) / 2), lambda: plateau.append(pss_mb()))
        if held:
            probe.start()
        before = {name: procs.cpu_seconds(proc.pid) or 0.0 for name, proc in (("inner", inner), ("outer", outer))}
        wall = time.perf_counter()
        results, span = asyncio.run(load(args.ramp if held else args.seconds))
        wall = time.perf_counter() - wall
        probe.cancel()
        used = {name: (procs.cpu_seconds(proc.pid) or 0.0) - before[name]
                for name, proc in (("inner", inner), ("outer", outer))}
    finally:
        for proc in started:
            proc.terminate()
            proc.wait(10)
        mock.stop()
    summary = summarise_streams(results, span)
    done = summary["completed"] or 1
    chunks = done * CHUNKS
    print(f"{s.name}, hop {args.hop}: {summary['completed']}/{summary['requests']} streams whole in {wall:.1f} s "
          f"({summary['rps']:.1f}/s), first chunk p50 {summary['ttft_p50_ms']:.2f} ms")
    print(f"{'process':<8} {'ms/stream':>10} {'us/chunk':>9}")
    for name, seconds in used.items():
        print(f"{name:<8} {1000 * seconds / done:>10.2f} {1e6 * seconds / chunks:>9.0f}")
    total = sum(used.values())
    print(f"{'both':<8} {1000 * total / done:>10.2f} {1e6 * total / chunks:>9.0f}")
    print(f"memory of both (PSS): {at_rest:.1f} MB at rest" +
          (f", {plateau[0]:.1f} MB with {s.concurrency} streams open "
           f"({1024 * (plateau[0] - at_rest) / s.concurrency:.0f} KB a stream)" if plateau else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
