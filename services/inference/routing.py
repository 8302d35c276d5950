"""Routing: the channels to try for a call, best first — by priority, in weighted turns among
the best, failing over in a weighted shuffle — leaving out channels that cannot carry the call
or are cooling down or full."""
from __future__ import annotations

import random
import time
from typing import Any

from services.inference.adapters import ADAPTERS
from services.inference.channel import Channel
from services.inference.channel_health import ChannelHealth
from services.inference.errors import InvalidRequest, ModelNotFound, NoAvailableChannel
from services.inference.payloads import Endpoint


class Router:
    def __init__(self) -> None:
        self._turns = Turns()

    def plan(self, channels: list[Channel], health: ChannelHealth, model: str, endpoint: Endpoint | None = None,
             body: dict[str, Any] | None = None) -> list[Channel]:
        """The channels to try for `model`, best first: priority, then weight. The first
        choice among the highest priority is taken in turn by weight (smooth weighted
        round-robin: 3:1 is exactly three of every four calls on a replica, interleaved);
        the rest, the order to fail over in, is a weighted shuffle. With an endpoint and
        body, only channels whose kind can carry that call."""
        serving = [c for c in channels if c.enabled and model in c.models]
        if not serving:
            raise ModelNotFound(f"The model `{model}` does not exist or you do not have access to it.",
                                param="model")
        if endpoint is not None and body is not None:
            serving = capable(serving, endpoint, body)
        now = time.monotonic()
        ready = [c for c in serving if health.usable(c, now)]
        if not ready:
            wait = health.seconds_until_one_is_back(serving, now)
            raise NoAvailableChannel(
                f"No upstream can serve `{model}` right now; every channel is cooling down or busy. Try again shortly.",
                retry_after_s=max(1.0, round(wait, 1)),
            )
        ready.sort(key=lambda c: (-c.priority, -weighted_key(c.weight)))
        top = [c for c in ready if c.priority == ready[0].priority]
        if len(top) > 1:
            first = self._turns.next(top)
            if first is not None:
                ready.remove(first)
                ready.insert(0, first)
        return ready


def capable(serving: list[Channel], endpoint: Endpoint, body: dict[str, Any]) -> list[Channel]:
    """The channels whose kind can carry this call; if none can, the first kind's reason why."""
    refusals: dict[str, InvalidRequest | None] = {}
    out = []
    for c in serving:
        if c.type not in refusals:
            adapter = ADAPTERS.get(c.type)
            refusals[c.type] = adapter.refusal(endpoint, body) if adapter else InvalidRequest(
                f"channel type {c.type!r} is unknown")
        if refusals[c.type] is None:
            out.append(c)
    if not out:
        raise next(r for r in refusals.values() if r is not None)
    return out


class Turns:
    """Smooth weighted round-robin (as nginx does it), one rotation per set of channels."""

    MAX_SETS = 10_000  # a rotation per (model, ready channels) seen; forgotten wholesale past this

    def __init__(self) -> None:
        self._current: dict[tuple[int, ...], dict[int, int]] = {}

    def next(self, channels: list[Channel]) -> Channel | None:
        weighted = [c for c in channels if c.weight > 0]
        if not weighted:
            return None
        key = tuple(sorted((c.id, c.weight) for c in weighted))
        current = self._current.get(key)
        if current is None:
            if len(self._current) >= self.MAX_SETS:
                self._current.clear()
            current = self._current[key] = {c.id: 0 for c in weighted}
        total = 0
        for c in weighted:
            current[c.id] += c.weight
            total += c.weight
        best = max(weighted, key=lambda c: current[c.id])
        current[best.id] -= total
        return best


def weighted_key(weight: int) -> float:
    """Efraimidis-Spirakis: sorting by random()**(1/w) is a weighted shuffle."""
    if weight <= 0:
        return -1.0
    return random.random() ** (1.0 / weight)
