"""SSE written whole: each event leaves the edge as one HTTP chunk of its own, never half of
one nor two at once, and a multi-byte character is never split - even when the upstream's
bytes arrive cut in the middle of a character. The upstream sends each cut only after the
client has read the event before it, so chatkore certainly holds half an event at times."""
from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp
from aiohttp import web

from tests.mock_upstream import Gate
from tests.world import World

MSG = [{"role": "user", "content": "hello"}]
PIECES = ["你好", "，世界", " 🙂🙂", " café", " naïve ü", " 終わり"]
EVENT = re.compile(rb"\A(data: [^\n]*|:[^\n]*)\n\n\Z")  # one event (or one comment), nothing else


def _frames(model: str) -> list[bytes]:
    """The upstream's stream as OpenAI frames it, cut inside the first character of every event
    after the first: frame i ends with the first half of event i+1."""
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        body = {"id": "chatcmpl-framing", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"  # raw UTF-8, not \\u escapes

    events = [chunk({"role": "assistant", "content": ""})] + [chunk({"content": p}) for p in PIECES]
    events += [chunk({}, "stop"), b"data: [DONE]\n\n"]
    frames, carry = [], b""
    for event in events:
        text = event.decode()
        first_wide = next((i for i, ch in enumerate(text) if len(ch.encode()) > 1), None)
        if first_wide is None or not frames and not carry:
            carry += event
            continue
        cut = len(text[:first_wide].encode()) + 1  # one byte into the character
        assert not event[:cut].decode(errors="ignore").endswith(text[first_wide])
        frames.append(carry + event[:cut])
        carry = event[cut:]
    frames.append(carry)
    return frames


def _cut_upstream(frames: list[bytes], gate: Gate):
    async def behave(request: web.Request, body: dict[str, Any], path: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, frame in enumerate(frames):
            if i:
                await gate.wait()
            await response.write(frame)
        return response

    return behave


async def test_events_leave_whole_and_characters_are_never_split(world: World) -> None:
    model, tag = world.served_model()
    t = world.tenant()
    frames = _frames(model)
    assert len(frames) == len(PIECES) + 1
    gate = world.mock.gate()
    world.mock.script(tag, _cut_upstream(frames, gate))

    http_chunks: list[bytes] = []
    text = ""
    async with (aiohttp.ClientSession() as session, asyncio.timeout(60),
                session.post(world.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {t.key}"},
                             json={"model": model, "messages": MSG, "stream": True}) as resp):
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers.get("Transfer-Encoding") == "chunked"
        pending = b""
        async for data, end_of_http_chunk in resp.content.iter_chunks():
            pending += data
            if not end_of_http_chunk:
                continue
            chunk, pending = pending, b""
            if not chunk:
                # The terminating zero-length chunk: aiohttp reports its end as an empty chunk
                # when it arrives after the last event was read. Nothing can follow it.
                assert http_chunks and http_chunks[-1] == b"data: [DONE]\n\n", "an empty chunk before the end"
                continue
            http_chunks.append(chunk)
            assert EVENT.match(chunk), f"not one whole event: {chunk!r}"
            chunk.decode("utf-8")  # a character cut in two would not decode
            if chunk.startswith(b"data: {"):
                event = json.loads(chunk[6:])
                piece = "".join(c["delta"].get("content") or "" for c in event.get("choices", []))
                text += piece
                if event.get("choices"):
                    gate.open(1)  # the client has this event: the upstream may send the next cut
        assert pending == b""
    assert text == "".join(PIECES)
    assert http_chunks[-1] == b"data: [DONE]\n\n"
    assert gate.passed == len(frames) - 1  # every cut went out only after the event before it was read
    [row] = world.usage(t.user_id)
    assert row["status"] == "complete"
