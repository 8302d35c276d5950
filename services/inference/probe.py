"""An operator's check of one channel: a tiny request straight to its upstream, timed, unbilled."""
from __future__ import annotations

import time
from dataclasses import dataclass

from services.inference.channels import ChannelBook
from services.inference.errors import InvalidRequest, NotFound
from services.inference.payloads import dumps
from services.inference.upstream import Upstream, UpstreamError


@dataclass(frozen=True)
class ChannelTest:
    ok: bool
    latency_ms: float
    model: str
    message: str


async def test_channel(book: ChannelBook, upstream: Upstream, channel_id: int, model: str) -> ChannelTest:
    # A fresh look at the database, so a channel added a moment ago on another replica is known.
    await book.reload()
    channel = book.get(channel_id)
    if channel is None:
        raise NotFound(f"No channel with id {channel_id}")
    model = model or min(channel.models)
    if model not in channel.models:
        raise InvalidRequest(f"Channel {channel_id} does not serve `{model[:200]}`", param="model")
    name = channel.upstream_model(model)
    if "embedding" in model:
        path, body = "/embeddings", {"model": name, "input": "ping"}
    else:
        path, body = "/chat/completions", {"model": name, "max_tokens": 1,
                                           "messages": [{"role": "user", "content": "ping"}]}
    started = time.perf_counter()
    try:
        resp = await upstream.post(channel, path, dumps(body), stream=False)
        await upstream.read_json(resp, channel)
    except UpstreamError as exc:  # its message is already scrubbed of the channel's key
        return ChannelTest(False, (time.perf_counter() - started) * 1000, model, f"{exc.kind.value}: {exc.message}")
    return ChannelTest(True, (time.perf_counter() - started) * 1000, model, "ok")
