"""HTTP to upstreams: pooled connections, timeouts, server-sent events, failures classified."""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from services.common import jsoncodec, metrics, telemetry
from services.inference.adapters import Exchange
from services.inference.channel import Channel
from services.inference.destinations import DestinationPolicy, RefusedDestination
from services.inference.failures import Failure, UpstreamError

__all__ = ["Failure", "Upstream", "UpstreamError"]

MAX_ERROR_BODY = 64 * 1024
MAX_REPLY_BODY = 256 * 1024 * 1024
MAX_EVENT = 16 * 1024 * 1024


async def _read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    """The body up to `cap` bytes (the rest is not read)."""
    pieces: list[bytes] = []
    size = 0
    while size < cap:
        piece = await resp.content.readany()
        if not piece:
            break
        pieces.append(piece)
        size += len(piece)
    return b"".join(pieces)[:cap]


class Upstream:
    """One pooled HTTP client for every channel of this process."""

    def __init__(self, timeout_s: float, destinations: DestinationPolicy) -> None:
        self.timeout_s = timeout_s
        self._destinations = destinations
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # Every connection is checked on the address it opens to (services/inference/destinations.py);
        # redirects are never followed (allow_redirects=False on every call).
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60, keepalive_timeout=30, enable_cleanup_closed=True,
                                         socket_factory=self._destinations.socket_factory)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True, trust_env=False,
                                              trace_configs=telemetry.http_client_trace_configs())

    async def close(self) -> None:
        if self._session:
            await self._session.close()

    def _timeout(self, channel: Channel) -> aiohttp.ClientTimeout:
        t = channel.timeout_s or self.timeout_s
        return aiohttp.ClientTimeout(total=None, sock_connect=min(10.0, t), sock_read=t)

    @metrics.upstream_call
    async def post(self, exchange: Exchange, *, stream: bool) -> aiohttp.ClientResponse:
        """POST and return the response once it answered 200; any other outcome raises UpstreamError."""
        assert self._session is not None
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream" if stream else "application/json",
                   **exchange.headers}
        try:
            resp = await self._session.post(exchange.url, data=exchange.body, headers=headers,
                                            timeout=self._timeout(exchange.channel), allow_redirects=False)
        except TimeoutError:
            raise UpstreamError(Failure.TIMEOUT, "upstream did not answer in time") from None
        except (aiohttp.ClientError, OSError) as exc:
            if isinstance(getattr(exc, "os_error", None), RefusedDestination):
                raise UpstreamError(Failure.CONNECT, f"upstream refused: {exc.os_error}") from None
            raise UpstreamError(Failure.CONNECT, f"upstream unreachable: {type(exc).__name__}") from None
        if resp.status != 200:
            try:
                payload = await _read_capped(resp, MAX_ERROR_BODY)
            except (TimeoutError, aiohttp.ClientError, OSError):
                payload = b""
            finally:
                resp.release()
            raise exchange.failure(resp.status, payload, resp.headers)
        return resp

    async def read_json(self, resp: aiohttp.ClientResponse, exchange: Exchange) -> dict[str, Any]:
        """The whole JSON reply; a malformed one, or a 200 carrying an error, is a server failure."""
        try:
            raw = await _read_capped(resp, MAX_REPLY_BODY)
        except TimeoutError:
            resp.close()
            raise UpstreamError(Failure.TIMEOUT, "upstream stopped answering") from None
        except (aiohttp.ClientError, OSError) as exc:
            resp.close()
            raise UpstreamError(Failure.SERVER, f"upstream reply broke off: {type(exc).__name__}") from None
        except BaseException:
            resp.close()  # cancelled: drop the connection so the upstream stops work
            raise
        resp.release()
        try:
            obj = jsoncodec.loads(raw)
        except ValueError:
            raise UpstreamError(Failure.SERVER, "upstream sent a malformed reply") from None
        if not isinstance(obj, dict):
            raise UpstreamError(Failure.SERVER, "upstream sent a malformed reply")
        if "error" in obj and obj.get("error") and "choices" not in obj and "data" not in obj:
            raise exchange.failure(500, raw, {})
        return exchange.reply(obj)

    async def read_body(self, resp: aiohttp.ClientResponse) -> tuple[bytes, str]:
        """A whole reply of any kind (audio, text, JSON) and its Content-Type."""
        try:
            raw = await _read_capped(resp, MAX_REPLY_BODY)
        except TimeoutError:
            resp.close()
            raise UpstreamError(Failure.TIMEOUT, "upstream stopped answering") from None
        except (aiohttp.ClientError, OSError) as exc:
            resp.close()
            raise UpstreamError(Failure.SERVER, f"upstream reply broke off: {type(exc).__name__}") from None
        except BaseException:
            resp.close()
            raise
        resp.release()
        return raw, resp.headers.get("Content-Type", "")

    async def pieces(self, resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        """A reply's bytes as they arrive (speech audio), for a client that reads along."""
        finished = False
        try:
            while True:
                try:
                    piece = await resp.content.readany()
                except TimeoutError:
                    raise UpstreamError(Failure.TIMEOUT, "upstream reply stalled") from None
                except (aiohttp.ClientError, OSError) as exc:
                    raise UpstreamError(Failure.SERVER, f"upstream reply broke off: {type(exc).__name__}") from None
                if not piece:
                    finished = True
                    return
                yield piece
        finally:
            if finished:
                resp.release()
            else:
                resp.close()

    async def events(self, resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        """The `data:` payloads of a server-sent event stream, up to [DONE] or the end."""
        buffer = b""
        data: list[bytes] = []
        finished = False
        try:
            while True:
                try:
                    piece = await resp.content.readany()
                except TimeoutError:
                    raise UpstreamError(Failure.TIMEOUT, "upstream stream stalled") from None
                except (aiohttp.ClientError, OSError) as exc:
                    raise UpstreamError(Failure.SERVER, f"upstream stream broke off: {type(exc).__name__}") from None
                if not piece:
                    break
                buffer += piece
                if len(buffer) > MAX_EVENT:
                    raise UpstreamError(Failure.SERVER, "upstream sent an oversized event")
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    line = line.rstrip(b"\r")
                    if not line:
                        if data:
                            payload = b"\n".join(data)
                            data = []
                            if payload.strip() == b"[DONE]":
                                finished = True
                                return
                            yield payload
                    elif line.startswith(b"data:"):
                        data.append(line[5:].lstrip(b" "))
                    # comments (":"), event:, id:, retry: carry nothing for OpenAI streams
            finished = True
            tail = b"\n".join(data) if data else buffer.removeprefix(b"data:").strip()
            if tail and tail != b"[DONE]":
                yield tail
        finally:
            # A stream left early (client gone, stalled) drops its connection, which is
            # what tells the upstream to stop generating.
            if finished:
                resp.release()
            else:
                resp.close()
