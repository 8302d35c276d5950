"""A key's `rpm` and `tpm` at the edge: admit a call or answer 429, OpenAI's x-ratelimit-*
headers, and the true-up of the call's tokens once its real usage is known.

How tokens are counted before the call. The edge has no tokenizer, and the real count
exists only after the call; so, as OpenAI does, the call is admitted on an estimate made
from the request: the characters of its prompt text / 4 (token ids count one each, an
image part 85), plus the completion it may produce (max_tokens x n) when the client set
one. That estimate is what the call holds in the window while it runs. When it ends, its
entry is replaced by the real total (prompt + completion tokens, as billed), or by 0 when
it failed without output; a stream the client abandons keeps its estimate. So the window
holds real usage for finished calls and estimates only for calls in flight. A call that
turns out larger than its estimate can push the window past the limit: the calls after it
then wait until the window slides, which is how the limit stays a limit over a minute.
"""
from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from typing import Any

from chatkore.v1 import auth_pb2
from edge.errors import REASONS, OpenAIError
from edge.ratelimit import Limiter, Rule, Verdict, Window
from edge.validate import Relayable

IMAGE_TOKENS = 85  # what a low-detail image costs; the estimate is a floor, the true-up corrects it
_UNITS = {"requests": ("RPM", "requests per min"), "tokens": ("TPM", "tokens per min")}


def _text_size(value: Any) -> tuple[int, int]:
    """(characters, tokens given as ids or images) in a prompt-like value or message content."""
    if isinstance(value, str):
        return len(value), 0
    if not isinstance(value, list):
        return 0, 0
    chars = ids = 0
    for item in value:
        if isinstance(item, str):
            chars += len(item)
        elif isinstance(item, int):
            ids += 1
        elif isinstance(item, list):
            ids += len(item)
        elif isinstance(item, dict):
            if item.get("type") == "image_url":
                ids += IMAGE_TOKENS
            else:
                chars += len(str(item.get("text") or ""))
    return chars, ids


def estimate_tokens(body: dict[str, Any], fields: Relayable) -> int:
    chars = ids = 0
    for message in body.get("messages") or ():
        c, i = _text_size(message.get("content"))
        chars += c + len(str(message.get("name") or ""))
        ids += i + 4  # each message's framing, as OpenAI counts it
        if message.get("tool_calls"):
            chars += len(json.dumps(message["tool_calls"]))
    for name in ("prompt", "input", "suffix"):
        c, i = _text_size(body.get(name))
        chars, ids = chars + c, ids + i
    for name in ("tools", "functions"):
        if body.get(name):
            chars += len(json.dumps(body[name]))
    return math.ceil(chars / 4) + ids + fields.max_tokens * fields.n


def duration(seconds: float) -> str:
    """OpenAI's way of writing a reset time: 20ms, 1.5s, 6m0s."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


def headers_of(verdict: Verdict) -> dict[str, str]:
    headers = {}
    for w in verdict.windows:
        headers[f"x-ratelimit-limit-{w.name}"] = str(w.limit)
        headers[f"x-ratelimit-remaining-{w.name}"] = str(w.remaining)
        headers[f"x-ratelimit-reset-{w.name}"] = duration(w.reset_s)
    return headers


def refusal(window: Window, requested: int, headers: dict[str, str]) -> OpenAIError:
    status, kind, code = REASONS["TOKENS_RATE_LIMITED" if window.name == "tokens" else "RATE_LIMITED"]
    short, long = _UNITS[window.name]
    if window.too_large:
        message = (f"Request too large for {long} ({short}) on this API key: Limit {window.limit}, Requested"
                   f" {requested}. The input or output tokens must be reduced in order to run successfully.")
    else:
        message = (f"Rate limit reached for {long} ({short}) on this API key: Limit {window.limit}, Used"
                   f" {window.limit - window.remaining}, Requested {requested}. Please try again in"
                   f" {duration(window.retry_after_s)}.")
    retry = max(window.retry_after_s, 0.001)
    headers = {**headers, "retry-after": str(max(1, math.ceil(retry))), "retry-after-ms": str(math.ceil(retry * 1000))}
    return OpenAIError(status, message, type=kind, code=code, headers=headers)


@dataclass(frozen=True)
class Admission:
    headers: dict[str, str]   # x-ratelimit-* for the response
    scope: str
    tokens: Rule | None       # the tpm rule with the estimate it was admitted on
    ticket: str


class KeyLimits:
    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self._pending: set[asyncio.Task[None]] = set()

    async def admit(self, key: auth_pb2.KeyInfo, body: dict[str, Any], fields: Relayable) -> Admission | None:
        """None for a key without limits (no cost at all); raises the 429 when a window is full."""
        if key.rpm <= 0 and key.tpm <= 0:
            return None
        # created is part of the scope: key ids restart in a new database; a shared Redis must not mix them.
        scope = f"key:{key.key_id}.{key.created}"
        rules = []
        if key.rpm > 0:
            rules.append(Rule("requests", key.rpm))
        tokens = Rule("tokens", key.tpm, cost=estimate_tokens(body, fields)) if key.tpm > 0 else None
        if tokens:
            rules.append(tokens)
        verdict = await self.limiter.hit(scope, rules)
        headers = headers_of(verdict)
        refused = verdict.refused
        if not verdict.admitted and refused is not None:
            raise refusal(refused, tokens.cost if tokens and refused.name == "tokens" else 1, headers)
        return Admission(headers, scope, tokens, verdict.ticket)

    def settle(self, admission: Admission | None, tokens_used: int | None) -> None:
        """Put a finished call's real token count in place of its estimate, off the response's path."""
        if admission is None or admission.tokens is None or tokens_used is None:
            return
        if tokens_used == admission.tokens.cost:
            return
        task = asyncio.create_task(self.limiter.true_up(admission.scope, admission.tokens, admission.ticket,
                                                        max(0, tokens_used)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def close(self) -> None:
        if self._pending:
            await asyncio.wait(self._pending, timeout=2)
        await self.limiter.close()
