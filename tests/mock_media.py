"""A scripted OpenAI images, audio and moderations API (under {tag}/v1/) for tests.

Images: one entry per image asked for (`n`), as b64_json or url. Speech: fixed audio bytes,
written in pieces. Transcriptions and translations: the text, in the format asked for (JSON,
text, srt, vtt, or verbose_json with `duration`). Moderations: one result per input. A multipart
upload's form is parsed and recorded on the request's `Received.body` (fields) and `.files`.
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import wave
from typing import TYPE_CHECKING, Any

from aiohttp import web

from services.common import multipart

if TYPE_CHECKING:
    from tests.mock_upstream import Gate

def wav(seconds: float, rate: int = 16_000, channels: int = 1) -> bytes:
    """A silent 16-bit PCM WAV file of `seconds`."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * channels * int(seconds * rate))
    return out.getvalue()


PNG_1X1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
SPEECH = bytes(range(256)) * 64  # 16 KB of "audio"


async def form_of(request: web.Request) -> multipart.Form | None:
    """The upload's form (also kept on the request's Received record), or None for a JSON call."""
    from tests.mock_upstream import STATE

    if not multipart.is_form(request.headers.get("Content-Type", "")):
        return None
    form = multipart.parse(await request.read(), request.headers["Content-Type"])
    received = request[STATE].received[-1]
    received.body = form.fields()
    received.files = {p.name: p.data for p in form.parts if p.filename is not None}
    return form


def images(*, returned: int | None = None, delay_s: float = 0.0, release: asyncio.Event | None = None,
           gate: Gate | None = None):
    """`n` images (or `returned` of them), in the format asked for; with `gate`, only once the test
    lets the call through it."""

    async def behave(request: web.Request, body: dict[str, Any], path: str) -> web.StreamResponse:
        form = await form_of(request)
        fields: dict[str, Any] = form.fields() if form is not None else body
        if release is not None:
            await release.wait()
        if gate is not None:
            await gate.wait()
        if delay_s:
            await asyncio.sleep(delay_s)
        count = returned if returned is not None else int(fields.get("n") or 1)
        as_b64 = fields.get("response_format") == "b64_json"
        data = [{"b64_json": base64.b64encode(PNG_1X1).decode()} if as_b64 else
                {"url": f"https://images.example/{i}.png", "revised_prompt": str(fields.get("prompt") or "")}
                for i in range(count)]
        return web.json_response({"created": int(time.time()), "data": data})

    return behave


def speech(*, audio: bytes = SPEECH, pieces: int = 8, content_type: str = "audio/mpeg", stall: bool = False):
    """The audio in pieces; with `stall`, the first piece and then nothing until chatkore hangs up
    (counted in the tag's `disconnects`)."""

    async def behave(request: web.Request, body: dict[str, Any], path: str) -> web.StreamResponse:
        from tests.mock_upstream import STATE

        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        step = max(1, len(audio) // pieces)
        for start in range(0, len(audio), step):
            await response.write(audio[start:start + step])
            if stall:
                while request.transport is not None and not request.transport.is_closing():
                    await asyncio.sleep(0.02)
                request[STATE].disconnects += 1
                return response
        await response.write_eof()
        return response

    return behave


def transcription(*, text: str = "Hello from the mock.", duration: float | None = None,
                  usage_seconds: float | None = None, release: asyncio.Event | None = None,
                  segments: list[dict[str, Any]] | None = None):
    """The transcript; verbose_json carries `duration` (when given) and `segments`, and
    `usage_seconds` adds the newer models' `usage: {"type": "duration", "seconds"}`."""

    async def behave(request: web.Request, body: dict[str, Any], path: str) -> web.StreamResponse:
        form = await form_of(request)
        fields = form.fields() if form is not None else {}
        if release is not None:
            await release.wait()
        fmt = fields.get("response_format") or "json"
        if fmt == "text":
            return web.Response(text=text + "\n", content_type="text/plain")
        if fmt in ("srt", "vtt"):
            head = "WEBVTT\n\n" if fmt == "vtt" else "1\n"
            return web.Response(text=f"{head}00:00:00.000 --> 00:00:02.000\n{text}\n", content_type="text/plain")
        obj: dict[str, Any] = {"text": text}
        if fmt == "verbose_json":
            obj.update({"task": "transcribe", "language": "english", "segments": segments or []})
            if duration is not None:
                obj["duration"] = duration
        if usage_seconds is not None:
            obj["usage"] = {"type": "duration", "seconds": usage_seconds}
        return web.json_response(obj)

    return behave


def moderation():
    async def behave(request: web.Request, body: dict[str, Any], path: str) -> web.StreamResponse:
        value = body.get("input")
        inputs = value if isinstance(value, list) else [value]
        results = [{"flagged": "kill" in json.dumps(v), "categories": {"violence": "kill" in json.dumps(v)},
                    "category_scores": {"violence": 0.9 if "kill" in json.dumps(v) else 0.01}} for v in inputs]
        return web.json_response({"id": "modr-mock", "model": body.get("model"), "results": results})

    return behave


def default_for(path: str):
    """The behaviour a path of this API gets when a test scripted none; None for other paths."""
    if path in ("images/generations", "images/edits", "images/variations"):
        return images()
    if path == "audio/speech":
        return speech()
    if path in ("audio/transcriptions", "audio/translations"):
        return transcription()
    if path == "moderations":
        return moderation()
    return None
