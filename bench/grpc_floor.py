"""The floor under every hop: CPU of one trivial gRPC aio unary call, client and server, on this machine.

`python -m bench.grpc_floor` serves the standard health service in a child process (core 0)
and calls Check from this one (core 1), with no interceptor and with a pass-through one on
each side, on asyncio's loop and on uvloop. A chatkore request makes three such calls
(edge->inference Relay, inference->billing Reserve and Settle), and a stream one more
message per chunk, so this is what the architecture costs before any of its own work.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bench.procs import cpu_seconds, taskset_available
from tools.stack import free_port


class PassServer(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        return await continuation(details)


class PassClient(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(details, request)


async def _serve(port: int, intercept: bool) -> None:
    server = grpc.aio.server(interceptors=[PassServer()] if intercept else None)
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    print("ready", flush=True)
    await server.wait_for_termination()


async def _drive(port: int, calls: int, in_flight: int, intercept: bool) -> tuple[float, float]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=[PassClient()] if intercept else None)
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest()
    metadata = (("x-request-id", "req_" + "0" * 32),)
    for _ in range(200):  # warm up
        await stub.Check(request, metadata=metadata)

    async def worker(n: int) -> None:
        for _ in range(n):
            await stub.Check(request, timeout=10, metadata=metadata)

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(calls // in_flight) for _ in range(in_flight)))
    await channel.close()
    return time.perf_counter() - wall, time.process_time() - cpu


def _run(coro):  # type: ignore[no-untyped-def]
    try:
        import uvloop
    except ImportError:
        uvloop = None
    return uvloop.run(coro) if uvloop and os.environ.get("BENCH_LOOP") == "uvloop" else asyncio.run(coro)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    p.add_argument("--intercept", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--calls", type=int, default=6000)
    p.add_argument("--in-flight", type=int, default=32)
    args = p.parse_args()
    if args.serve:
        _run(_serve(args.serve, args.intercept))
        return 0
    pin = taskset_available()
    print(f"{'loop':<8} {'interceptors':<12} {'calls/s':>8} {'client us/call':>15} {'server us/call':>15}")
    for loop in ("asyncio", "uvloop"):
        for intercept in (False, True):
            port = free_port()
            env = {**os.environ, "BENCH_LOOP": loop}
            command = [sys.executable, "-m", "bench.grpc_floor", "--serve", str(port)]
            if intercept:
                command.append("--intercept")
            server = subprocess.Popen((["taskset", "-c", "0"] if pin else []) + command, env=env,
                                      stdout=subprocess.PIPE, text=True)
            assert server.stdout is not None
            server.stdout.readline()
            if pin:
                os.sched_setaffinity(0, {1})
            before = cpu_seconds(server.pid) or 0.0
            os.environ["BENCH_LOOP"] = loop
            wall, cpu = _run(_drive(port, args.calls, args.in_flight, intercept))
            served = (cpu_seconds(server.pid) or 0.0) - before
            server.terminate()
            server.wait()
            print(f"{loop:<8} {'both' if intercept else 'none':<12} {args.calls / wall:>8.0f} "
                  f"{1e6 * cpu / args.calls:>15.0f} {1e6 * served / args.calls:>15.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
