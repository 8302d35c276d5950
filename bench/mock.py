"""A fast OpenAI stand-in for the benchmark: every reply precomputed, no JSON or token work per request.

It speaks just enough HTTP/1.1 (keep-alive, Content-Length bodies, chunked streams) to
serve `POST /v1/chat/completions` (unary, or 20 chunks when the body says
`"stream": true`), `POST /v1/embeddings` and `GET /v1/models`. A path prefix `/i<ms>`
spaces stream chunks `<ms>` milliseconds apart (the first chunk goes out at once), so
one mock serves fast streams and long-held ones side by side.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys

CHUNKS = 20
PROMPT_TOKENS = 21
COMPLETION_TOKENS = 40
EMBEDDING_DIMS = 1536
CREATED = 1_700_000_000
TEXT = ("This is a test of the gateway and every token here is counted by the mock upstream that answers "
        "the benchmark quickly so the numbers say what the relay costs")
WORDS = TEXT.split()


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def chat_reply(model: str = "gpt-3.5-turbo") -> dict:
    return {
        "id": "chatcmpl-mock", "object": "chat.completion", "created": CREATED, "model": model,
        "system_fingerprint": "fp_mock",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(WORDS[:COMPLETION_TOKENS])},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
                  "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS},
    }


def stream_chunks(include_usage: bool, model: str = "gpt-3.5-turbo") -> list[dict]:
    """CHUNKS content chunks (the first names the role, the last the finish), then usage if asked."""
    chunks = []
    for i in range(CHUNKS):
        delta: dict = {"content": " " + WORDS[i % len(WORDS)]}
        if i == 0:
            delta = {"role": "assistant", "content": WORDS[0]}
        chunks.append({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": CREATED,
                       "model": model, "system_fingerprint": "fp_mock",
                       "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                    "finish_reason": "stop" if i == CHUNKS - 1 else None}]})
    if include_usage:
        chunks.append({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": CREATED,
                       "model": model, "choices": [],
                       "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": CHUNKS,
                                 "total_tokens": PROMPT_TOKENS + CHUNKS}})
    return chunks


def streamed_text() -> str:
    """The text a stream carries, whole: what a client must have read when it sees [DONE]."""
    return "".join(c["choices"][0]["delta"]["content"] for c in stream_chunks(False))


def embedding_reply(model: str = "text-embedding-ada-002") -> dict:
    rng = random.Random(7)
    vector = [round(rng.uniform(-0.05, 0.05), 9) for _ in range(EMBEDDING_DIMS)]
    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": 0, "embedding": vector}],
            "usage": {"prompt_tokens": 8, "total_tokens": 8}}


def _response(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: keep-alive\r\n\r\n").encode() + body


def _frame(data: bytes) -> bytes:
    """One SSE event as one HTTP chunk."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _events(chunks: list[dict]) -> list[bytes]:
    return [_frame(b"data: " + _dumps(c) + b"\n\n") for c in chunks]


STREAM_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
               b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n")
STREAM_TAIL = _frame(b"data: [DONE]\n\n") + b"0\r\n\r\n"
CHAT = _response("200 OK", _dumps(chat_reply()))
EMBEDDING = _response("200 OK", _dumps(embedding_reply()))
MODELS = _response("200 OK", _dumps({"object": "list", "data": [
    {"id": m, "object": "model", "created": CREATED, "owned_by": "mock"}
    for m in ("gpt-3.5-turbo", "text-embedding-ada-002")]}))
NOT_FOUND = _response("404 Not Found", _dumps({"error": {"message": "no such path", "type": "invalid_request_error",
                                                         "param": None, "code": "unknown_url"}}))
EVENTS = {True: _events(stream_chunks(True)), False: _events(stream_chunks(False))}


class MockProtocol(asyncio.Protocol):
    """One keep-alive connection; requests are answered in order, a stream at a time."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.streaming: list[bytes] = []  # content chunks still to send, one per interval
        self.closing = b""                  # what follows the last one at once: usage, [DONE]
        self.interval = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._serve()

    def _serve(self) -> None:
        while self.transport is not None and not self.streaming:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17:stop if stop > 0 else None])
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4:end + 4 + length])
            del self.buffer[:end + 4 + length]
            self.close_after = b"\r\nconnection: close" in head
            self._answer(head, body)

    def _answer(self, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        target = head.split(b" ", 2)[1].split(b"?", 1)[0]
        interval = 0.0
        if target.startswith(b"/i"):
            spacing, _, rest = target[2:].partition(b"/")
            interval, target = int(spacing) / 1000, b"/" + rest
        if target.endswith(b"/chat/completions"):
            if b'"stream":true' in body or b'"stream": true' in body:
                usage = b'"include_usage":true' in body or b'"include_usage": true' in body
                self._stream(EVENTS[usage], interval)
                return
            self.transport.write(CHAT)
        elif target.endswith(b"/embeddings"):
            self.transport.write(EMBEDDING)
        elif target.endswith(b"/models"):
            self.transport.write(MODELS)
        else:
            self.transport.write(NOT_FOUND)
        if self.close_after:
            self.transport.close()

    def _stream(self, events: list[bytes], interval: float) -> None:
        assert self.transport is not None
        if interval <= 0:
            self.transport.write(STREAM_HEAD + b"".join(events) + STREAM_TAIL)
            if self.close_after:
                self.transport.close()
            return
        self.transport.write(STREAM_HEAD + events[0])
        self.streaming = list(events[1:CHUNKS])
        self.closing = b"".join(events[CHUNKS:]) + STREAM_TAIL
        self.interval = interval
        self.timer = asyncio.get_running_loop().call_later(interval, self._next)

    def _next(self) -> None:
        self.timer = None
        if self.transport is None:
            return
        chunk = self.streaming.pop(0)
        if self.streaming:
            self.transport.write(chunk)
            self.timer = asyncio.get_running_loop().call_later(self.interval, self._next)
            return
        self.transport.write(chunk + self.closing)
        if self.close_after:
            self.transport.close()
            return
        self._serve()


async def serve(host: str, port: int) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(MockProtocol, host, port, backlog=4096, reuse_address=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()

    async def run() -> None:
        server = await serve(args.host, args.port)
        print(f"mock listening on {args.host}:{args.port}", flush=True)
        async with server:
            await server.serve_forever()

    try:
        import uvloop  # a faster loop when present; the mock's speed only sets the baseline
    except ImportError:
        uvloop = None
    try:
        (uvloop.run if uvloop else asyncio.run)(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
