"""JSON on the hot path: orjson where it can, the standard library where orjson refuses.

orjson is several times faster at both ends (an embeddings reply of 1,536 floats is
re-encoded on every call). It refuses a few things the standard library takes — integers
beyond 64 bits, lone surrogates — and those fall back, so no input changes its meaning.
"""
from __future__ import annotations

import json
import re
from typing import Any

import orjson


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def loads(data: bytes | str) -> Any:
    """Parse JSON; NaN and Infinity are refused either way (ValueError)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data, parse_constant=_reject_constant)


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


class TooManyContainers(ValueError):
    """The JSON text holds more objects and arrays than the budget allows."""

    def __init__(self, budget: int) -> None:
        super().__init__(f"more than {budget} JSON objects and arrays")
        self.budget = budget


# A whole string once its escapes are gone.
_STRING = re.compile(rb'"[^"]*"')
_CHUNK = 1 << 20


class ContainerBudget:
    """Counts `{` and `[` outside strings as a JSON text arrives in chunks, before any of it is parsed.

    A body of `[{},{},…]` costs ~100 bytes of Python objects per 3 bytes sent; this refuses it
    on the raw bytes, as soon as the count passes the budget. The cheap count (every bracket,
    strings included) decides alone while it stays within the budget; past it, strings are
    skipped, from the first byte. Every step is a C-speed bytes operation: escapes are dropped
    first (`\\\\` pairs, then `\\"`), so a string is then simply `"[^"]*"`.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._upper = 0               # brackets anywhere, strings included
        self._seen: list[bytes] = []  # chunks fed while only the cheap count ran
        self._exact = False
        self._count = 0               # brackets outside strings (once exact)
        self._in_string = False
        self._backslash = b""         # an odd backslash that ended the last chunk: it escapes the next byte

    def feed(self, chunk: bytes) -> None:
        """Raise TooManyContainers once the containers fed so far exceed the budget."""
        if not self._exact:
            self._upper += chunk.count(b"{") + chunk.count(b"[")
            if self._upper <= self.budget:
                self._seen.append(chunk)
                return
            self._exact = True
            seen, self._seen = self._seen, []
            for earlier in seen:
                self._scan(earlier)
        self._scan(chunk)

    def _scan(self, chunk: bytes) -> None:
        data = self._backslash + chunk
        run = len(data) - len(data.rstrip(b"\\"))
        self._backslash = b"\\" if run % 2 else b""
        if run % 2:
            data = data[:-1]
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
        if self._in_string:
            close = data.find(b'"')
            if close < 0:
                return
            data, self._in_string = data[close + 1:], False
        data = _STRING.sub(b"", data)
        opened = data.find(b'"')  # a string that goes on into the next chunk
        outside = data if opened < 0 else data[:opened]
        self._count += outside.count(b"{") + outside.count(b"[")
        self._in_string = opened >= 0
        if self._count > self.budget:
            raise TooManyContainers(self.budget)


def check_containers(raw: bytes, budget: int) -> None:
    """TooManyContainers when the whole JSON text `raw` holds more than `budget` objects and arrays."""
    counter = ContainerBudget(budget)
    for start in range(0, len(raw), _CHUNK):
        counter.feed(raw[start:start + _CHUNK])
