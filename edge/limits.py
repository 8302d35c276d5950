"""Bounds on what a client may send: body size and pace, JSON shape, string lengths.

Each bound answers with OpenAI's error shape and changes nothing. Bodies are read and held
to these in `edge.inputs`; header size and pace are bounded one layer down, in `edge.server`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from edge.errors import OpenAIError, invalid


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 20 * 1024 * 1024     # the OpenAI API's prompts (CHATKORE_MAX_BODY_MB)
    max_small_body_bytes: int = 64 * 1024     # console, operator and admin calls (CHATKORE_MAX_ADMIN_BODY_KB)
    max_json_nodes: int = 100_000             # JSON objects and arrays in one body, counted before parsing
    body_timeout_s: float = 60.0      # the whole body must arrive within this
    max_json_depth: int = 64          # nested arrays/objects
    max_string_chars: int = 10_485_760  # any one string (OpenAI's own per-string limit)
    max_messages: int = 2048          # chat messages (OpenAI's own limit)


def _name(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _string_ok(value: str, limits: Limits, text: bool) -> bool:
    if len(value) > limits.max_string_chars:
        return False
    if text and "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False  # a lone surrogate (\ud800) parses in JSON but cannot be re-encoded for the upstream
    return True


def _string_error(param: str, value: str, limits: Limits) -> OpenAIError:
    if len(value) > limits.max_string_chars:
        return invalid(f"Invalid '{param}': string too long. Expected a string with maximum length"
                       f" {limits.max_string_chars}, but got a string with length {len(value)} instead.",
                       param, "string_above_max_length")
    if "\x00" in value:
        return invalid(f"Invalid '{param}': the string may not contain NUL characters.", param, "invalid_value")
    return invalid(f"Invalid '{param}': the string is not valid Unicode.", param, "invalid_value")


_EXACT = {int, bool, type(None)}


def check_shape(body: Any, limits: Limits, *, text: bool = False) -> None:
    """Reject JSON nested deeper than the limit, or carrying an over-long or invalid string.

    With `text`, strings are stored as PostgreSQL text, which cannot hold NUL.

    Iterative, so that depth itself cannot exhaust the stack; an array of numbers
    (token lists) is passed over at C speed.
    """
    pending: list[tuple[Any, str, int]] = [(body, "", 1)]
    while pending:
        node, path, depth = pending.pop()
        if depth > limits.max_json_depth:
            raise invalid(f"Invalid '{path or 'body'}': JSON nested deeper than {limits.max_json_depth} levels.",
                          path or None, "nesting_too_deep")
        if isinstance(node, dict):
            items: Any = node.items()
        elif set(map(type, node)) <= _EXACT:
            continue
        else:
            items = enumerate(node)
        for key, value in items:
            if type(key) is str and not _string_ok(key, limits, text):
                raise _string_error(_name(path, key), key, limits)
            kind = type(value)
            if kind is str:
                if not _string_ok(value, limits, text):
                    raise _string_error(_name(path, key), value, limits)
            elif kind is dict or kind is list:
                pending.append((value, _name(path, key), depth + 1))
            elif kind is float and not math.isfinite(value):
                # 1e999 parses as infinity, which no JSON encoder can send on.
                raise invalid(f"Invalid '{_name(path, key)}': number out of range.", _name(path, key),
                              "invalid_value")
