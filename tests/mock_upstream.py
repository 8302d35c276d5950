"""A scripted OpenAI-compatible upstream over real HTTP, for tests.

Each test talks to its own path prefix (`tag`), so scripts never cross:
`base_url(tag)` is what a channel points at. A tag answers like the demo
upstream unless scripted; `script(tag, b1, b2, ...)` queues behaviours that
the next requests consume in order, `always(tag, b)` sets the default.
The same tag also answers as Anthropic's Messages API (`{tag}/v1/messages`,
tests/mock_anthropic.py), as OpenAI's Responses API (`{tag}/v1/responses`,
tests/mock_responses.py) and as Azure OpenAI (`{tag}/openai/deployments/...`,
tests/mock_azure.py), each in its own wire format.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from services.demo import replies
from tests import mock_anthropic, mock_azure, mock_media, mock_responses

STATE = web.RequestKey("state", "TagState")
Behavior = Callable[[web.Request, dict[str, Any], str], Awaitable[web.StreamResponse]]


@dataclass
class Received:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    query: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # a multipart upload's files (tests/mock_media.py)


@dataclass
class TagState:
    queue: deque[Behavior] = field(default_factory=deque)
    default: Behavior | None = None
    received: list[Received] = field(default_factory=list)
    disconnects: int = 0   # streams whose client (chatkore) went away mid-way
    in_flight: int = 0
    written: list[str] = field(default_factory=list)  # text of every streamed chunk that went out


def _text_of(chunk: dict[str, Any]) -> str:
    parts = []
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        parts.append(delta.get("content") or choice.get("text") or "")
    return "".join(parts)


def _answer(path: str, body: dict[str, Any]) -> dict[str, Any]:
    if path.endswith("chat/completions"):
        return replies.chat(body)
    if path.endswith("completions"):
        return replies.completion(body)
    return replies.embeddings(body)


def _chunks(path: str, body: dict[str, Any], pieces: int) -> list[dict[str, Any]]:
    if path.endswith("chat/completions"):
        return list(replies.chat_stream(body, pieces))
    return list(replies.completion_stream(body, pieces))


def _sse(obj: Any) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


class Gate:
    """A door a scripted behaviour waits at until the test opens it: the test decides when a
    call in flight may go on, so nothing rests on a delay being long enough. `arrived` counts
    the calls that reached it (the test waits on that, not on time); `open(n)` lets the next
    `n` through (None: all, now and later)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._passes = 0
        self._wide_open = False
        self._changed = asyncio.Event()
        self.arrived = 0
        self.passed = 0

    def open(self, n: int | None = None) -> None:
        def let_through() -> None:
            if n is None:
                self._wide_open = True
            else:
                self._passes += n
            self._changed.set()

        self._loop.call_soon_threadsafe(let_through)

    async def wait(self) -> None:
        self.arrived += 1
        while not self._wide_open and self._passes == 0:
            self._changed.clear()
            await self._changed.wait()
        if not self._wide_open:
            self._passes -= 1
        self.passed += 1


# --- behaviours ------------------------------------------------------------------------


def ok(*, usage: bool = True, content: str | None = None, pieces: int = 20, delay_s: float = 0.0,
       usage_override: dict[str, int] | Callable[[dict[str, Any]], dict[str, int]] | None = None,
       gate: Gate | None = None, gate_each: Gate | None = None, free_chunks: int = 1) -> Behavior:
    """A normal answer (streamed when asked), optionally without usage, with set content, or
    with the usage it reports set (a dict, or a function of the request body). With `gate`,
    nothing is said until the test opens it; with `gate_each`, a stream sends its first
    `free_chunks` chunks (the first is the role alone) and waits at it before every later one."""

    async def behave(request: web.Request, body: dict[str, Any], path: str) -> web.StreamResponse:
        state: TagState = request[STATE]
        reported = usage_override(body) if callable(usage_override) else usage_override
        if gate is not None:
            await gate.wait()
        if body.get("stream"):
            chunks = _chunks(path, body, pieces)
            if content is not None:
                chunks = _with_content(chunks, content)
            if not usage:
                chunks = [c for c in chunks if c.get("choices")]
            elif reported:
                chunks = [{**c, "usage": reported} if not c.get("choices") else c for c in chunks]
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            try:
                for i, chunk in enumerate(chunks):
                    if delay_s:
                        await asyncio.sleep(delay_s)
                    if gate_each is not None and i >= free_chunks:
                        await gate_each.wait()
                    await response.write(_sse(chunk))
                    state.written.append(_text_of(chunk))
                await response.write(b"data: [DONE]\n\n")
            except (ConnectionResetError, asyncio.CancelledError):
                state.disconnects += 1
                raise
            return response
        reply = _answer(path, body)
        if content is not None and "choices" in reply:
            for choice in reply["choices"]:
                if "message" in choice:
                    choice["message"] = {"role": "assistant", "content": content}
                else:
                    choice["text"] = content
        if not usage:
            reply.pop("usage", None)
        elif reported:
            reply["usage"] = reported
        if delay_s:
            await asyncio.sleep(delay_s)
        return web.json_response(reply)

    return behave


def _with_content(chunks: list[dict[str, Any]], content: str) -> list[dict[str, Any]]:
    out = []
    done_text = False
    for c in chunks:
        choices = c.get("choices") or []
        if choices and "delta" in choices[0] and choices[0]["delta"].get("content"):
            if done_text:
                continue
            done_text = True
            c = {**c, "choices": [{**choices[0], "delta": {"content": content}}]}
        out.append(c)
    return out


def fail(status: int, message: str = "scripted failure", *, error_type: str = "server_error",
         code: str | None = None, param: str | None = None, headers: dict[str, str] | None = None) -> Behavior:
    async def behave(request: web.Request, body: dict[str, Any], path: str) -> web.StreamResponse:
        return web.json_response({"error": {"message": message, "type": error_type, "param": param, "code": code}},
                                 status=status, headers=headers)

    return behave


def hang(seconds: float = 3600.0) -> Behavior:
    """Accept the request and say nothing for `seconds`."""

    async def behave(request: web.Request, body: dict[str, Any], path: str) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return await ok()(request, body, path)

    return behave


def reset() -> Behavior:
    """Drop the connection without a word."""

    async def behave(request: web.Request, body: dict[str, Any], path: str) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.abort()
        raise asyncio.CancelledError

    return behave


def raw(status: int, payload: bytes, content_type: str = "application/json") -> Behavior:
    """Any bytes at all: malformed JSON, a 200 carrying an error, ..."""

    async def behave(request: web.Request, body: dict[str, Any], path: str) -> web.StreamResponse:
        return web.Response(status=status, body=payload, content_type=content_type)

    return behave


async def _flushed(transport: asyncio.BaseTransport, within_s: float = 10.0) -> None:
    """Wait until the chunks written so far have left for the socket: abort() drops whatever
    is still queued, and a 'cut' means "after these chunks", not "instead of them"."""
    deadline = time.monotonic() + within_s
    while transport.get_write_buffer_size() and not transport.is_closing():  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            raise TimeoutError("the mock's chunks did not leave within 10 s")
        await asyncio.sleep(0.001)


def stream_then(after: int, action: str, *, delay_s: float = 0.0, pieces: int = 20,
                gate: Gate | None = None) -> Behavior:
    """Stream `after` chunks, then: 'cut' (drop the connection), 'hang', 'garbage', 'error', 'end' (no [DONE]).
    With `gate`, the `after` chunks are out and the stream waits at it before the action."""

    async def behave(request: web.Request, body: dict[str, Any], path: str) -> web.StreamResponse:
        state: TagState = request[STATE]
        chunks = [c for c in _chunks(path, body, pieces) if c.get("choices")]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for chunk in chunks[:after]:
                if delay_s:
                    await asyncio.sleep(delay_s)
                await response.write(_sse(chunk))
                state.written.append(_text_of(chunk))
            if gate is not None:
                await gate.wait()
            if action == "cut":
                assert request.transport is not None
                await _flushed(request.transport)
                request.transport.abort()
                raise asyncio.CancelledError
            if action == "hang":
                while True:
                    await asyncio.sleep(0.05)
                    await response.write(b": keep-alive\n\n")
            if action == "garbage":
                await response.write(b"data: {not json\n\n")
            if action == "error":
                await response.write(_sse({"error": {"message": "scripted mid-stream error", "type": "server_error"}}))
            if action == "endless":
                while True:
                    await asyncio.sleep(delay_s or 0.01)
                    await response.write(_sse(chunks[1]))
        except (ConnectionResetError, asyncio.CancelledError):
            state.disconnects += 1
            raise
        return response

    return behave


class MockUpstream:
    def __init__(self) -> None:
        self.tags: dict[str, TagState] = defaultdict(TagState)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="mock-upstream")

    def base_url(self, tag: str) -> str:
        return f"http://127.0.0.1:{self.port}/{tag}/v1"

    def azure_url(self, tag: str) -> str:
        """An Azure resource endpoint: deployments live under {this}/openai/deployments/."""
        return f"http://127.0.0.1:{self.port}/{tag}"

    def script(self, tag: str, *behaviors: Behavior) -> None:
        self.tags[tag].queue.extend(behaviors)

    def always(self, tag: str, behavior: Behavior) -> None:
        self.tags[tag].default = behavior

    def received(self, tag: str) -> list[Received]:
        return list(self.tags[tag].received)

    def state(self, tag: str) -> TagState:
        return self.tags[tag]

    def gate(self) -> Gate:
        """A closed gate on the mock's loop, for a behaviour to wait at (`ok(gate=...)`)."""
        return Gate(self._loop)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        tag = request.match_info["tag"]
        path = request.match_info["path"]
        state = self.tags[tag]
        request[STATE] = state
        if request.method == "GET":
            return web.json_response(replies.models(["mock"]))
        try:
            body = await request.json()
        except ValueError:
            body = {}
        state.received.append(Received(path, body, dict(request.headers), dict(request.query)))
        if state.queue:
            behavior = state.queue.popleft()
        elif state.default:
            behavior = state.default
        elif request.path.startswith(f"/{tag}/openai/"):
            behavior = mock_azure.ok()
        elif path == "messages":
            behavior = mock_anthropic.ok()
        elif path == "responses":
            behavior = mock_responses.ok()
        elif mock_media.default_for(path) is not None:
            behavior = mock_media.default_for(path)
        else:
            behavior = ok()
        state.in_flight += 1
        try:
            return await behavior(request, body, path)
        finally:
            state.in_flight -= 1

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tag}/v1/{path:.*}", self._handle)
        app.router.add_route("*", "/{tag}/openai/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def start(self) -> MockUpstream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
