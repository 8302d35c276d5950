"""The demo upstream's HTTP server: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models."""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web

from services.demo import replies

MODELS = ["gpt-3.5-turbo", "gpt-4", "gpt-4o", "gpt-4o-mini", "text-embedding-ada-002"]


def _sse(chunk: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n"


async def _stream(request: web.Request, chunks: Iterator[dict[str, Any]]) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    for chunk in chunks:
        await response.write(_sse(chunk))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def _endpoint(unary: Callable[[dict[str, Any]], dict[str, Any]],
              streamed: Callable[[dict[str, Any]], Iterator[dict[str, Any]]] | None) -> Any:
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": {"message": "invalid JSON", "type": "invalid_request_error",
                                                "param": None, "code": None}}, status=400)
        if streamed is not None and body.get("stream"):
            return await _stream(request, streamed(body))
        return web.json_response(unary(body), dumps=lambda o: json.dumps(o, ensure_ascii=False))

    return handle


async def _models(request: web.Request) -> web.Response:
    return web.json_response(replies.models(MODELS))


def make_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", _endpoint(replies.chat, replies.chat_stream))
    app.router.add_post("/v1/completions", _endpoint(replies.completion, replies.completion_stream))
    app.router.add_post("/v1/embeddings", _endpoint(replies.embeddings, None))
    app.router.add_get("/v1/models", _models)
    return app
