"""The edge's HTTP server: aiohttp's, with bounded headers and OpenAI-shaped protocol errors.

aiohttp bounds the size of the request line and of each header, but answers a
violation in plain text, and waits for slow headers as long as the keep-alive
timeout allows. Here a request's headers must arrive within `header_timeout_s`
(a client trickling them byte by byte is cut off with a 408), and every error
raised below the application still answers in OpenAI's shape.
"""
from __future__ import annotations

import asyncio
import json
import logging
import signal
import uuid
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from edge.app import make_app
from edge.config import EdgeConfig
from edge.errors import OpenAIError

log = logging.getLogger(__name__)

KEEPALIVE_S = 75.0  # how long an idle connection is kept between requests (aiohttp's default)


def _raw_response(error: OpenAIError) -> bytes:
    body = json.dumps(error.body()).encode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in (error.headers or {}).items())
    head = (f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n" + extra +
            f"x-request-id: req_{uuid.uuid4().hex}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode() + body


class EdgeProtocol(RequestHandler):
    """One client connection. Times the arrival of each request's headers."""

    def __init__(self, manager: EdgeServer, *, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None
        self._payload: Any = None  # the body of the latest request whose head arrived

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        manager = self._manager
        if isinstance(manager, EdgeServer) and manager.over_capacity():
            # Refused at once, before the process runs out of file descriptors and every
            # client, old and new, starts to fail.
            log.warning("connection limit (%d) reached; refusing a connection", manager.max_connections)
            error = OpenAIError(503, "chatkore is handling as many connections as it can. Please retry shortly.",
                                type="server_error", code="too_many_connections", headers={"retry-after": "1"})
            self.transport.write(_raw_response(error))
            self.force_close()
            self.transport.close()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        before = self._request_count
        # Bytes of a body still arriving are not the next request's head: arming the timer on
        # them (a body sent apart from its head, before its handler ran) cut the connection with
        # an unsolicited 408 once it sat idle between requests for `header_timeout_s` - what
        # clients saw as the server disconnecting under their next request.
        in_body = self._payload is not None and not self._payload.is_eof()
        super().data_received(data)
        if self._request_count != before:
            self._disarm()  # a whole request head arrived
            self._payload = self._messages[-1][1] if self._messages else None
        elif self._header_timer is None and not self._request_in_progress and not in_body:
            self._arm()  # the first bytes of the next request's head

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timeout_s > 0:
            self._header_timer = self._loop.call_later(self._header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport is None or self._request_in_progress:
            return
        log.warning("request headers too slow from %s; connection closed", self.peername)
        error = OpenAIError(408, f"The request headers did not arrive within {self._header_timeout_s:g} seconds.",
                            code="request_timeout")
        self.transport.write(_raw_response(error))
        self.force_close()
        self.transport.close()

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """An error below the application (a malformed request, a header too large)."""
        # The exception's text can quote the offending line, which may hold a key: name its type only.
        log.warning("protocol error %d from %s: %s", status, request.remote, type(exc).__name__)
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already sent; cannot send an error")
        if isinstance(exc, LineTooLong):
            error = OpenAIError(431, "A request header (or the request line) is too large.",
                                code="request_header_too_large")
        elif isinstance(exc, HttpProcessingError) or 400 <= status < 500:
            error = OpenAIError(400, "The request is not valid HTTP.", code="bad_request")
        else:
            error = OpenAIError(500, "The server had an error while processing your request.", type="server_error")
        resp = error.response()
        resp.headers["x-request-id"] = "req_" + uuid.uuid4().hex
        resp.force_close()
        return resp


class EdgeServer(web.Server):
    def __init__(self, *args: Any, header_timeout_s: float, max_connections: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout_s = header_timeout_s
        self.max_connections = max_connections

    def over_capacity(self) -> bool:
        return 0 < self.max_connections < len(self._connections)

    def __call__(self) -> RequestHandler:
        return EdgeProtocol(self, loop=self._loop, header_timeout_s=self._header_timeout_s, **self._kwargs)


class EdgeRunner(web.AppRunner):
    """An AppRunner whose connections are EdgeProtocols."""

    def __init__(self, app: web.Application, *, header_timeout_s: float, max_connections: int,
                 **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._max_connections = max_connections

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return EdgeServer(plain.request_handler, request_factory=plain.request_factory,
                          handler_cancellation=plain.handler_cancellation, loop=plain._loop,
                          header_timeout_s=self._header_timeout_s, max_connections=self._max_connections,
                          **plain._kwargs)


async def serve(cfg: EdgeConfig) -> None:
    """Serve until SIGTERM/SIGINT; then let requests in flight finish for `grace_s`."""
    runner = EdgeRunner(
        make_app(cfg), header_timeout_s=cfg.header_timeout_s, max_connections=cfg.max_connections,
        handle_signals=False, access_log=None,
        shutdown_timeout=cfg.grace_s, handler_cancellation=True, keepalive_timeout=KEEPALIVE_S,
        max_line_size=cfg.max_header_bytes, max_field_size=cfg.max_header_bytes,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, cfg.host, cfg.port)
        await site.start()
        log.info("edge listening on %s:%d", cfg.host, cfg.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("edge draining (grace %.0fs)", cfg.grace_s)
    finally:
        await runner.cleanup()
    log.info("edge stopped")
