"""HTTP over a bare socket, for requests no HTTP library will send: slow, oversized, broken."""
from __future__ import annotations

import http.client
import json
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class RawReply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def connect(url: str, source: str = "127.0.0.1", timeout_s: float = 30) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout_s, source_address=(source, 0))
    return sock


def read_reply(sock: socket.socket) -> RawReply:
    """One response, read until the server closes or Content-Length is satisfied."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            raise ConnectionError(f"closed before a full response head: {data[:200]!r}")
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    length = int(headers.get("content-length", "-1"))
    while length < 0 or len(body) < length:
        piece = sock.recv(65536)
        if not piece:
            break
        body += piece
    return RawReply(status, headers, body[:length] if length >= 0 else body)


def request(url: str, raw: bytes, source: str = "127.0.0.1") -> RawReply:
    with connect(url, source) as sock:
        sock.sendall(raw)
        return read_reply(sock)


def closed_by_peer(sock: socket.socket, within_s: float) -> tuple[bool, bytes]:
    """Whether the server closes the connection within `within_s`; and what it said."""
    deadline = time.monotonic() + within_s
    received = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            piece = sock.recv(65536)
        except TimeoutError:
            return False, received
        except ConnectionResetError:
            return True, received
        if not piece:
            return True, received
        received += piece
    return False, received


def call(url: str, method: str, path: str, *, headers: dict[str, str] | None = None, body: bytes | None = None,
         source: str = "127.0.0.1") -> RawReply:
    """One ordinary request, sent from a chosen loopback address (127.0.0.0/8 all reach us)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30, source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return RawReply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()
