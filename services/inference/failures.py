"""How an upstream call failed, and what that means for failover and for our client.

    UpstreamError(kind)
        CONNECT       refused, reset, DNS: nothing was processed        -> next channel
        TIMEOUT       no answer within the channel's timeout            -> next channel
        RATE_LIMITED  429                                               -> next channel
        SERVER        5xx, malformed reply, a 200 carrying an error     -> next channel
        AUTH          401/403: the channel's key is bad                 -> next channel, long cool-down
        REJECTED      the upstream's own validation: the client's fault -> passed through, no failover
"""
from __future__ import annotations

import json
from enum import Enum
from typing import TYPE_CHECKING, Any

from services.common.logs import redact

if TYPE_CHECKING:
    from services.inference.channel import Channel


class Failure(Enum):
    CONNECT = "connect"
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    SERVER = "server"
    AUTH = "auth"
    REJECTED = "rejected"

    @property
    def retryable(self) -> bool:
        return self is not Failure.REJECTED


class UpstreamError(Exception):
    def __init__(self, kind: Failure, message: str, *, status: int = 0, error: dict[str, Any] | None = None,
                 retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.error = error or {}
        self.retry_after_s = retry_after_s


def retry_after(headers: Any) -> float:
    try:
        return max(0.0, float(headers.get("retry-after", "0")))
    except (TypeError, ValueError, AttributeError):
        return 0.0


def scrub(text: str, channel: Channel) -> str:
    """An upstream's words, fit for our client: no keys, no upstream address."""
    key = channel.api_key.reveal()
    if key:
        text = text.replace(key, "****")
    return redact(text.replace(channel.base_url, "upstream"))


def error_object(status: int, body: bytes, channel: Channel) -> dict[str, Any]:
    """The upstream's `error` object, scrubbed; OpenAI, Azure and Anthropic all nest it under "error"."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict):
        error = {"message": error if isinstance(error, str) else body[:500].decode("utf-8", "replace")}
    error = {k: (scrub(v, channel) if isinstance(v, str) else v) for k, v in error.items()}
    error["message"] = str(error.get("message") or f"upstream answered {status}")
    return error


def classify(status: int, body: bytes, headers: Any, channel: Channel) -> UpstreamError:
    """A non-200 answer as a failure of the right kind."""
    error = error_object(status, body, channel)
    message = error["message"]
    if status == 429:
        return UpstreamError(Failure.RATE_LIMITED, message, status=status, error=error,
                             retry_after_s=retry_after(headers))
    if status in (401, 403):
        return UpstreamError(Failure.AUTH, message, status=status, error=error)
    if status >= 500 or status < 400 or status in (408, 409):
        return UpstreamError(Failure.SERVER, message, status=status, error=error)
    return UpstreamError(Failure.REJECTED, message, status=status, error=error)
