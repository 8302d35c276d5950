"""Server-sent events that fail honestly.

Headers go out only once the first chunk is in hand, so a failure before it still
gets a real HTTP status. After that, an error travels in-band as a `data:` event,
and the stream still ends with `data: [DONE]`. Every event is one write. A stream's
framing says how events and errors are written: chat's above, or the Responses API's
named events (`event: response.output_text.delta`), its `error` event and no [DONE].

A call whose connection broke before its first event (an inference replica died or is
stopping) is made again as the next try (edge/retry.py), and the balancer sends it to another
replica. Nothing had reached the client, and inference reserves and settles by the request id,
which the new call keeps: a hold the lost replica placed is taken over by the new try and
settled once.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

import grpc
from aiohttp import web

from chatkore.v1 import inference_pb2
from edge import retry
from edge.errors import OpenAIError, from_rpc
from services.common import jsoncodec, metrics

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"
HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def event(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


class Framing:
    """Chat and completions streams: `data:` events, an error as `data: {"error": ...}`, then [DONE]."""

    done = DONE
    done_after_error = True  # the end is sent after an in-band error too

    def event(self, data: bytes) -> bytes:
        return event(data)

    def error(self, error: OpenAIError) -> bytes:
        return event(json.dumps(error.body()).encode())


class RawFraming(Framing):
    """A reply that is not events (speech audio): each chunk's bytes as they are, under the
    upstream's Content-Type; a failure after the start can only end the body early."""

    done = b""

    def event(self, data: bytes) -> bytes:
        return data

    def error(self, error: OpenAIError) -> bytes:
        return b""


class ResponsesFraming(Framing):
    """Responses API streams: each event named by its type (`event:` line), numbered; an error is
    an `error` event (OpenAI's fields, and `error` itself so the SDKs raise it); no [DONE]."""

    done = b""

    def __init__(self) -> None:
        self.next_sequence = 0

    def event(self, data: bytes) -> bytes:
        try:
            obj = jsoncodec.loads(data)
        except ValueError:
            obj = None
        kind = obj.get("type") if isinstance(obj, dict) else None
        if isinstance(obj, dict) and isinstance(obj.get("sequence_number"), int):
            self.next_sequence = obj["sequence_number"] + 1
        name = kind.encode() if isinstance(kind, str) and kind.isprintable() else b"message"
        return b"event: " + name + b"\ndata: " + data + b"\n\n"

    def error(self, error: OpenAIError) -> bytes:
        body = error.body()["error"]
        data = {"type": "error", "code": error.code or error.type, "message": error.message, "param": error.param,
                "sequence_number": self.next_sequence, "error": body}
        return b"event: error\ndata: " + json.dumps(data).encode() + b"\n\n"


MAX_TOKENS_HEADER = "x-chatkore-max-tokens"
CONTENT_TYPE_HEADER = "x-chatkore-content-type"  # a streamed reply that is not events (speech)


async def budget_headers(call: grpc.aio.Call) -> dict[str, str]:
    """`x-chatkore-max-tokens` when the balance cut the call's completion budget: inference
    says so in the call's initial metadata, so a reply ending in `length` can be explained.
    A reply that is not events (speech audio) names its Content-Type there too."""
    metadata = await call.initial_metadata()
    headers: dict[str, str] = {}
    for key, value in metadata or ():
        if key == MAX_TOKENS_HEADER and isinstance(value, str) and value.isdigit():
            headers[MAX_TOKENS_HEADER] = value
        elif key == CONTENT_TYPE_HEADER and isinstance(value, str) and value.isprintable() and len(value) < 200:
            headers["Content-Type"] = value
    return headers


async def relay(request: web.Request, open_call: Callable[[int], grpc.aio.UnaryStreamCall], *,
                headers: dict[str, str] | None = None,
                on_outcome: Callable[[inference_pb2.Outcome], None] | None = None,
                framing: Framing | None = None) -> web.StreamResponse:
    framing = framing or Framing()
    opened = retry.Opened()
    finished = False
    streaming = False
    try:
        first = await retry.first_event(open_call, opened)
        call = opened.call
        assert call is not None
        if first is grpc.aio.EOF:
            raise web.HTTPBadGateway()
        metrics.FIRST_CHUNK.labels(request.get("model", "")).observe(time.perf_counter() - request["started"])
        response = web.StreamResponse(status=200, headers={**HEADERS, **(headers or {}), **await budget_headers(call)})
        await response.prepare(request)
        metrics.STREAMS.inc()
        streaming = True
        item: inference_pb2.RelayEvent | object = first
        failed = False
        try:
            while item is not grpc.aio.EOF:
                assert isinstance(item, inference_pb2.RelayEvent)
                if item.HasField("chunk"):
                    await response.write(framing.event(item.chunk))
                elif on_outcome is not None and item.HasField("outcome"):
                    on_outcome(item.outcome)
                item = await call.read()
        except grpc.aio.AioRpcError as exc:
            error = from_rpc(exc)
            log.warning("stream failed after it started: %s", error.message)
            await response.write(framing.error(error))
            failed = True
        finished = True
        if framing.done and (framing.done_after_error or not failed):
            await response.write(framing.done)
        await response.write_eof()
        return response
    except (ConnectionResetError, asyncio.CancelledError):
        # The client went away: cancelling the call cancels the upstream, and the
        # inference service settles for what was generated.
        if opened.call is not None:
            opened.call.cancel()
        raise
    finally:
        if streaming:
            metrics.STREAMS.dec()
        if not finished and opened.call is not None:
            opened.call.cancel()
