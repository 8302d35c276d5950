"""An operator's test of one channel: a tiny request straight to it, timed, never billed."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from services.inference.adapters import ADAPTERS, Outgoing
from services.inference.channels import ChannelBook
from services.inference.errors import InvalidRequest, NotFound
from services.inference.failures import Failure, UpstreamError
from services.inference.payloads import Endpoint, completion_texts
from services.inference.upstream import Upstream

PROMPT = "Say hi."
MAX_TOKENS = 5
LIMIT_S = 30.0  # a test never waits as long as a real call may


@dataclass(frozen=True)
class ChannelTestResult:
    ok: bool
    model: str
    latency_ms: float
    status: int
    error: str
    reply: str
    health: str


async def test_channel(book: ChannelBook, upstream: Upstream, channel_id: int, model: str) -> ChannelTestResult:
    channel = book.channel(channel_id)
    if channel is None:
        # Added a moment ago, perhaps through another replica: look at the database once.
        await book.reload()
        channel = book.channel(channel_id)
    if channel is None:
        raise NotFound(f"No channel with id {channel_id}")
    model = model or min(channel.models)
    if model not in channel.models:
        raise InvalidRequest(f"Channel {channel_id} does not serve `{model}`.", param="model")
    if channel.broken:
        return ChannelTestResult(False, model, 0.0, 0, "its key cannot be decrypted with this CHATKORE_SECRET_KEY",
                                 "", book.health_of(channel_id))
    adapter = ADAPTERS[channel.type]
    embeddings = "embedding" in model and Endpoint.EMBEDDINGS in adapter.endpoints
    endpoint = Endpoint.EMBEDDINGS if embeddings else Endpoint.CHAT
    body = {"model": model, "input": PROMPT} if embeddings else {
        "model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS}
    exchange = adapter.exchange(channel, Outgoing(endpoint, body, channel.upstream_model(model), model, False,
                                                  MAX_TOKENS, True))
    started = time.perf_counter()
    try:
        async with asyncio.timeout(min(LIMIT_S, channel.timeout_s or LIMIT_S)):
            resp = await upstream.post(exchange, stream=False)
            status = resp.status
            obj = await upstream.read_json(resp, exchange)
    except (UpstreamError, TimeoutError) as exc:
        error = exc if isinstance(exc, UpstreamError) else UpstreamError(Failure.TIMEOUT, "no answer in time")
        return ChannelTestResult(False, model, _ms(started), error.status, f"{error.kind.value}: {error.message}",
                                 "", book.health_of(channel_id))
    latency = _ms(started)
    book.mark_healthy(channel_id)
    texts = completion_texts(endpoint, obj) if not embeddings else [f"{len(obj.get('data') or [])} embedding(s)"]
    return ChannelTestResult(True, model, latency, status, "", (texts[0] if texts else "")[:200],
                             book.health_of(channel_id))


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
