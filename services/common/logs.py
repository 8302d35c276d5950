"""JSON log lines carrying the request id, with secrets scrubbed in one place."""
from __future__ import annotations

import json
import logging
import re
import sys
import time
from contextvars import ContextVar

request_id_var: ContextVar[str] = ContextVar("request_id", default="")

# API keys (sk-...), bearer tokens and key-like query parameters. The first few
# characters stay so an operator can still tell two keys apart.
_SECRET = re.compile(
    r"(?P<sk>\bsk-[A-Za-z0-9_\-]{4})[A-Za-z0-9_\-]{8,}"
    r"|(?P<bearer>\b[Bb]earer\s+)[^\s\"',]+"
    r"|(?P<kv>(?:api[_-]?key|x-api-key|authorization|password|secret)\"?\s*[:=]\s*\"?)[^\s\"',&}]+",
    re.IGNORECASE,
)


def _mask(match: re.Match[str]) -> str:
    if match.group("sk"):
        return match.group("sk") + "****"
    if match.group("bearer"):
        return match.group("bearer") + "****"
    return match.group("kv") + "****"


def redact(text: str) -> str:
    """Scrub every API key, bearer token and key=value secret from a string."""
    return _SECRET.sub(_mask, text)


_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        rid = request_id_var.get()
        if rid:
            line["request_id"] = rid
        fields = record.__dict__
        for key in fields.keys() - _RESERVED:  # the extras a call passed
            if not key.startswith("_"):
                value = fields[key]
                line[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, default=str, ensure_ascii=False)


def setup(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party chatter that would otherwise print URLs with query strings.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.Formatter.converter = time.gmtime
