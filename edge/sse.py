"""Server-sent events that fail honestly.

Headers go out only once the first chunk is in hand, so a failure before it still
gets a real HTTP status. After that, an error travels in-band as a `data:` event,
and the stream still ends with `data: [DONE]`. Every event is one write.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import grpc
from aiohttp import web

from chatkore.v1 import inference_pb2
from edge.errors import from_rpc

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"
HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def event(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


async def relay(request: web.Request, call: grpc.aio.UnaryStreamCall, *, headers: dict[str, str] | None = None,
                on_outcome: Callable[[inference_pb2.Outcome], None] | None = None) -> web.StreamResponse:
    finished = False
    try:
        first = await call.read()  # a failure here raises, and becomes an ordinary error reply
        if first is grpc.aio.EOF:
            raise web.HTTPBadGateway()
        response = web.StreamResponse(status=200, headers={**HEADERS, **(headers or {})})
        await response.prepare(request)
        item: inference_pb2.RelayEvent | object = first
        try:
            while item is not grpc.aio.EOF:
                assert isinstance(item, inference_pb2.RelayEvent)
                if item.HasField("chunk"):
                    await response.write(event(item.chunk))
                elif on_outcome is not None and item.HasField("outcome"):
                    on_outcome(item.outcome)
                item = await call.read()
        except grpc.aio.AioRpcError as exc:
            error = from_rpc(exc)
            log.warning("stream failed after it started: %s", error.message)
            await response.write(event(json.dumps(error.body()).encode()))
        finished = True
        await response.write(DONE)
        await response.write_eof()
        return response
    except (ConnectionResetError, asyncio.CancelledError):
        # The client went away: cancelling the call cancels the upstream, and the
        # inference service settles for what was generated.
        call.cancel()
        raise
    finally:
        if not finished:
            call.cancel()
