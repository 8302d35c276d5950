"""GET /metrics on a port of its own, with asyncio alone: a gRPC service (and the edge, when
CHATKORE_METRICS_PORT is set) shows one page and needs no web framework for it."""
from __future__ import annotations

import asyncio
import contextlib

from services.common import metrics

_HEAD_LIMIT = 16 * 1024  # a scraper's request line and headers fit in far less
_READ_TIMEOUT_S = 10.0


def _response(status: str, body: bytes, content_type: str) -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode() + body


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT_S)
        method, _, rest = head.partition(b" ")
        path = rest.partition(b" ")[0].partition(b"?")[0]
        if method in (b"GET", b"HEAD") and path == b"/metrics":
            body, content_type = metrics.exposition()
            reply = _response("200 OK", body, content_type)
            writer.write(reply if method == b"GET" else reply[:len(reply) - len(body)])
        elif method in (b"GET", b"HEAD"):
            writer.write(_response("404 Not Found", b"Not Found\n", "text/plain; charset=utf-8"))
        else:
            writer.write(_response("405 Method Not Allowed", b"Method Not Allowed\n", "text/plain; charset=utf-8"))
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
        pass  # a client that left or sent no request gets nothing
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


class MetricsServer:
    """The running page; `cleanup()` stops it."""

    def __init__(self, server: asyncio.Server) -> None:
        self._server = server

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    async def cleanup(self) -> None:
        self._server.close()
        await self._server.wait_closed()


async def serve(host: str, port: int) -> MetricsServer:
    """Start answering GET /metrics on host:port."""
    return MetricsServer(await asyncio.start_server(_answer, host, port, limit=_HEAD_LIMIT))
