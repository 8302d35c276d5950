"""Channel health in this process: calls in flight, consecutive failures, cool-downs and the
one probe that ends a cool-down. Kept in memory per replica; nothing here reads the database."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from services.inference.channel import Channel

log = logging.getLogger(__name__)

AUTH_COOLDOWN_S = 300.0  # a rejected upstream key stays out this long before a probe
UNREADABLE = float("inf")  # the cool-down of a channel whose key cannot be decrypted: for good


@dataclass
class Health:
    failures: int = 0           # consecutive
    cooling_until: float = 0.0  # monotonic; 0 when healthy
    probing: bool = False       # one request is testing a channel whose cool-down ended
    in_flight: int = 0
    last_error: str = ""

    def state(self, now: float) -> str:
        if self.cooling_until == UNREADABLE:
            return "key_unreadable"
        if self.cooling_until == 0.0:
            return "healthy"
        return "cooling" if now < self.cooling_until else "probing"


@dataclass
class Attempt:
    """A channel lent to one call; give it back with ChannelBook.done()."""

    channel: Channel
    probe: bool = False
    finished: bool = field(default=False, repr=False)


class ChannelHealth:
    """The health of every known channel, by id."""

    def __init__(self, *, cooldown_s: float, failure_threshold: int) -> None:
        self._cooldown_s = cooldown_s
        self._threshold = max(1, failure_threshold)
        self._health: dict[int, Health] = {}

    def follow(self, channels: list[Channel]) -> None:
        """The channel list changed: keep what is known of channels still there, forget the
        rest; a channel whose key cannot be read is out for good, one readable again is healthy."""
        self._health = {c.id: self._health.get(c.id, Health()) for c in channels}
        for c in channels:
            if c.broken:
                self._health[c.id] = Health(cooling_until=UNREADABLE, last_error="key cannot be decrypted")
            elif self._health[c.id].cooling_until == UNREADABLE:
                self._health[c.id] = Health()

    def usable(self, c: Channel, now: float) -> bool:
        h = self._health[c.id]
        if c.max_concurrency and h.in_flight >= c.max_concurrency:
            return False
        if h.cooling_until == 0.0:
            return True
        return now >= h.cooling_until and not h.probing

    def seconds_until_one_is_back(self, channels: list[Channel], now: float) -> float:
        """The shortest cool-down left among `channels` (1 s when none will end)."""
        return min((self._health[c.id].cooling_until - now for c in channels
                    if self._health[c.id].cooling_until != UNREADABLE), default=1.0)

    def mark_healthy(self, channel_id: int) -> None:
        h = self._health.get(channel_id)
        if h is not None and h.cooling_until != UNREADABLE:
            h.failures, h.cooling_until, h.last_error = 0, 0.0, ""

    def take(self, c: Channel) -> Attempt | None:
        h = self._health.get(c.id)
        if h is None or not self.usable(c, time.monotonic()):
            return None
        h.in_flight += 1
        probe = h.cooling_until != 0.0
        if probe:
            h.probing = True
        return Attempt(c, probe)

    def done(self, attempt: Attempt, failure: str | None = None, *, auth_failure: bool = False) -> None:
        if attempt.finished:
            return
        attempt.finished = True
        h = self._health.get(attempt.channel.id)
        if h is None:  # the channel was removed meanwhile
            return
        h.in_flight = max(0, h.in_flight - 1)
        if attempt.probe:
            h.probing = False
        if h.cooling_until == UNREADABLE:
            return
        if failure is None:
            if h.cooling_until:
                log.info("channel %s is healthy again", attempt.channel.id)
            h.failures, h.cooling_until, h.last_error = 0, 0.0, ""
            return
        h.failures += 1
        h.last_error = failure
        if auth_failure:
            h.cooling_until = time.monotonic() + AUTH_COOLDOWN_S
            log.error("channel %s: upstream rejected its key; cooling down", attempt.channel.id)
        elif h.failures >= self._threshold or attempt.probe:
            h.cooling_until = time.monotonic() + self._cooldown_s
            log.warning("channel %s cooling down after %d failures: %s", attempt.channel.id, h.failures, failure)

    def calls_in_flight(self) -> int:
        return sum(h.in_flight for h in self._health.values())

    def state_of(self, channel_id: int) -> str:
        h = self._health.get(channel_id)
        return h.state(time.monotonic()) if h else "unknown"
