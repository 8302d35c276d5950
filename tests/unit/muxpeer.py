"""A scripted Inference service for the mux tests, served the way every chatkore service is
(grpcserver.build: alone and on Mux streams). In-process, or as its own process
(`python -m tests.unit.muxpeer PORT NAME`) that a test can kill and start again.

What a call does is in its `model`: `echo` answers the body, `slow` waits until cancelled (or
`body` seconds), `fail` raises an InvalidRequest with a param, `down` an Unavailable, `crash` a
plain exception; RelayStream sends `n` chunks after `x-chatkore-max-tokens` metadata, then fails
when the model is `fail`. Every answer names the peer that gave it.
"""
from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import grpc

from chatkore.v1 import inference_pb2, inference_pb2_grpc
from services.common import grpcserver
from services.common.errors import InvalidRequest, Unavailable
from services.common.logs import request_id_var


class Peer(inference_pb2_grpc.InferenceServicer):
    def __init__(self, name: str) -> None:
        self.name = name
        self.started: dict[bytes, asyncio.Event] = {}
        self.cancelled: dict[bytes, asyncio.Event] = {}
        self.seen: list[tuple[str, tuple[tuple[str, str], ...]]] = []  # request id var, metadata

    def _events(self, body: bytes) -> tuple[asyncio.Event, asyncio.Event]:
        return self.started.setdefault(body, asyncio.Event()), self.cancelled.setdefault(body, asyncio.Event())

    async def Relay(self, request: inference_pb2.RelayRequest, context: grpc.aio.ServicerContext  # noqa: N802
                    ) -> inference_pb2.RelayReply:
        self.seen.append((request_id_var.get(), tuple(context.invocation_metadata() or ())))
        if request.model == "slow":
            started, cancelled = self._events(request.body)
            started.set()
            try:
                if request.body[:1].isdigit():  # a scripted pause: "0.01 …"
                    await asyncio.sleep(float(request.body.split(b" ")[0]))
                else:
                    await asyncio.Event().wait()  # held until the call is cancelled
            except asyncio.CancelledError:
                cancelled.set()
                raise
        elif request.model == "fail":
            raise InvalidRequest("that will not do", param="messages[0]", code="bad_thing")
        elif request.model == "down":
            raise Unavailable("the upstream is away")
        elif request.model == "crash":
            raise RuntimeError("secret internals")
        return inference_pb2.RelayReply(body=self.name.encode() + b":" + request.body, credits=len(request.body))

    async def RelayStream(self, request: inference_pb2.RelayRequest,  # noqa: N802
                          context: grpc.aio.ServicerContext) -> AsyncIterator[inference_pb2.RelayEvent]:
        await context.send_initial_metadata((("x-chatkore-max-tokens", "42"),))
        for i in range(request.n):
            yield inference_pb2.RelayEvent(chunk=b"%s:%d" % (self.name.encode(), i))
            await asyncio.sleep(0)
        if request.model == "slow":
            started, cancelled = self._events(request.body)
            started.set()
            try:
                await asyncio.Event().wait()  # held until the call is cancelled
            except asyncio.CancelledError:
                cancelled.set()
                raise
        if request.model == "fail":
            raise Unavailable("the upstream went away mid-stream")


async def start(peer: Peer, port: int = 0, *, authorize: bool = False,
                credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.aio.Server, object, int]:
    """`peer` served on 127.0.0.1:`port`; the server, its MuxServer and the port."""
    server, mux = grpcserver.build(lambda s: inference_pb2_grpc.add_InferenceServicer_to_server(peer, s),
                                   authorize=authorize)
    address = f"127.0.0.1:{port}"
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    await server.start()
    return server, mux, port


async def _main(port: int, name: str) -> None:
    server, _mux, port = await start(Peer(name), port)
    print(f"listening {port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(_main(int(sys.argv[1]), sys.argv[2]))
