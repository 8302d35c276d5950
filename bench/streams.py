"""An open-loop asyncio client for SSE streams: arrivals on a fixed schedule, TTFT and full-stream time.

Open loop: stream i starts at t0 + i/rate whether or not earlier ones finished, and its
times are measured from that scheduled start, so a slow server cannot hide its queueing
by slowing the client down (coordinated omission). It speaks raw HTTP/1.1 over asyncio
streams, reusing idle keep-alive connections, so it costs little on its shared core.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field


@dataclass
class StreamResult:
    ttft_s: float | None = None     # scheduled start to the first content chunk
    total_s: float | None = None    # scheduled start to `data: [DONE]`
    chunks: int = 0                 # chunks with choices
    usage_chunks: int = 0
    content: list[str] = field(default_factory=list)
    done: bool = False
    error: str = ""

    def ok(self, expect_text: str) -> bool:
        """Whole: ended with [DONE], no in-band error, every piece of the text there in order."""
        return self.done and not self.error and "".join(self.content) == expect_text


@dataclass
class Tally:
    """Streams in flight right now, and the most ever at once."""

    open: int = 0
    most: int = 0
    samples: list[int] = field(default_factory=list)

    def up(self) -> None:
        self.open += 1
        self.most = max(self.most, self.open)

    def down(self) -> None:
        self.open -= 1


class Connections:
    """Idle keep-alive connections to one server, reused before new ones are opened."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0

    async def get(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self._idle:
            reader, writer = self._idle.pop()
            if not writer.is_closing() and not reader.at_eof():
                return reader, writer
        self.opened += 1
        return await asyncio.open_connection(self.host, self.port, limit=1 << 20)

    def put(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self._idle.append(conn)

    async def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


def request_bytes(host: str, port: int, path: str, body: bytes, key: str | None) -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\n{auth}Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed before a response")
    status = int(status_line.split(b" ", 2)[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


async def _pieces(reader: asyncio.StreamReader, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    """The response body as it arrives, de-chunked."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readline()
            if not size_line:
                raise ConnectionError("stream cut mid-body")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()  # the CRLF after the last chunk (no trailers are sent)
                return
            data = await reader.readexactly(size + 2)
            yield data[:-2]
    elif "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
    else:
        while piece := await reader.read(65536):
            yield piece


async def one_stream(conns: Connections, request: bytes, scheduled: float, tally: Tally,
                     timeout_s: float = 120.0) -> StreamResult:
    result = StreamResult()
    conn = None
    reusable = False
    try:
        async with asyncio.timeout(timeout_s):
            conn = await conns.get()
            reader, writer = conn
            writer.write(request)
            status, headers = await _read_head(reader)
            if status != 200:
                body = b"".join([p async for p in _pieces(reader, headers)])
                result.error = f"http {status}: {body[:200].decode('utf-8', 'replace')}"
                return result
            tally.up()
            try:
                buffer = b""
                async for piece in _pieces(reader, headers):
                    buffer += piece
                    while (cut := buffer.find(b"\n\n")) >= 0:
                        event, buffer = buffer[:cut], buffer[cut + 2:]
                        _take(event, result, scheduled)
                reusable = headers.get("connection", "").lower() != "close"
            finally:
                tally.down()
    except TimeoutError:
        result.error = result.error or "timed out"
    except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
        result.error = result.error or f"{type(exc).__name__}: {exc}"
    finally:
        if conn is not None:
            if reusable and result.done:
                conns.put(conn)
            else:
                conn[1].close()
    return result


def _take(event: bytes, result: StreamResult, scheduled: float) -> None:
    for line in event.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            result.done = True
            result.total_s = time.perf_counter() - scheduled
            continue
        try:
            chunk = json.loads(payload)
        except ValueError:
            result.error = f"not JSON: {payload[:100]!r}"
            continue
        if "error" in chunk:
            result.error = str(chunk["error"])[:200]
        elif not chunk.get("choices"):
            result.usage_chunks += 1
        else:
            text = (chunk["choices"][0].get("delta") or {}).get("content") or ""
            if text and not result.content:
                result.ttft_s = time.perf_counter() - scheduled
            result.chunks += 1
            result.content.append(text)


async def open_loop(host: str, port: int, path: str, body: bytes, key: str | None, *, rate: float,
                    duration_s: float, tally: Tally | None = None, timeout_s: float = 120.0,
                    connections: Connections | None = None) -> tuple[list[StreamResult], float]:
    """Start streams at `rate` per second for `duration_s`; wait for all. Returns (results, seconds from
    the first start to the last finish)."""
    conns = connections or Connections(host, port)
    tally = tally or Tally()
    request = request_bytes(host, port, path, body, key)
    count = max(1, round(rate * duration_s))
    start = time.perf_counter() + 0.01
    tasks = []
    for i in range(count):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tally.samples.append(tally.open)
        tasks.append(asyncio.create_task(one_stream(conns, request, scheduled, tally, timeout_s)))
    results = await asyncio.gather(*tasks)
    span = time.perf_counter() - start
    if connections is None:
        await conns.close()
    return list(results), span
