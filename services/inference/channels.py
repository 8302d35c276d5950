"""Channels: which upstreams serve a model, in what order to try them, and their health."""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import time
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import SplitResult, urlsplit

from psycopg_pool import AsyncConnectionPool

from services.common.config import Secret
from services.inference import store
from services.inference.adapters import ADAPTERS
from services.inference.destinations import DestinationPolicy
from services.inference.errors import InvalidRequest, ModelNotFound, NoAvailableChannel, NotFound
from services.inference.payloads import Endpoint
from services.inference.secretbox import SecretBox, mask
from services.inference.store import ChannelRow

log = logging.getLogger(__name__)

CHANNEL_TYPES = tuple(ADAPTERS)
AUTH_COOLDOWN_S = 300.0  # a rejected upstream key stays out this long before a probe


@dataclass(frozen=True)
class Channel:
    id: int
    name: str
    type: str
    base_url: str
    api_key: Secret
    key_hint: str
    models: frozenset[str]
    model_map: dict[str, str]
    priority: int
    weight: int
    enabled: bool
    settings: dict[str, Any]
    created: int
    broken: bool = False  # its key cannot be decrypted (another CHATKORE_SECRET_KEY): never routed to

    def upstream_model(self, model: str) -> str:
        return self.model_map.get(model, model)

    @property
    def timeout_s(self) -> float | None:
        value = self.settings.get("timeout_s")
        return float(value) if isinstance(value, (int, float)) and value > 0 else None

    @property
    def max_concurrency(self) -> int:
        value = self.settings.get("max_concurrency")  # a JSON number: 2 may arrive as 2.0
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 1 else 0


@dataclass
class Health:
    failures: int = 0           # consecutive
    cooling_until: float = 0.0  # monotonic; 0 when healthy
    probing: bool = False       # one request is testing a channel whose cool-down ended
    in_flight: int = 0
    last_error: str = ""

    def state(self, now: float) -> str:
        if self.cooling_until == float("inf"):
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


class ChannelBook:
    def __init__(self, pool: AsyncConnectionPool, box: SecretBox, *, cooldown_s: float, failure_threshold: int,
                 destinations: DestinationPolicy, refresh_s: float = 0.5) -> None:
        self._pool = pool
        self._box = box
        self._destinations = destinations
        self._cooldown_s = cooldown_s
        self._threshold = max(1, failure_threshold)
        self._refresh_s = refresh_s
        self._channels: list[Channel] = []
        self._health: dict[int, Health] = {}
        self._fingerprint: tuple[tuple[int, float], str] | None = None
        self._aliases: dict[str, str] = {}  # the aliases in effect: name -> target
        self._last_reload = 0.0
        self._reloading: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._turns = _Turns()

    # --- loading ---------------------------------------------------------------

    async def start(self) -> None:
        await self.reload()
        self._task = asyncio.create_task(self._refresh_forever())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()

    def _channel(self, row: ChannelRow) -> Channel:
        return Channel(
            id=row.id, name=row.name, type=row.type, base_url=row.base_url,
            api_key=Secret(self._box.open(row.api_key_enc)), key_hint=row.key_hint,
            models=frozenset(row.models), model_map=dict(row.model_map), priority=row.priority,
            weight=row.weight, enabled=row.enabled, settings=dict(row.settings), created=row.created,
        )

    async def reload(self) -> None:
        self._last_reload = time.monotonic()
        async with self._pool.connection() as conn:
            fingerprint = (await store.channels_fingerprint(conn), await store.aliases_fingerprint(conn))
            if fingerprint == self._fingerprint:
                return
            rows = await store.list_channels(conn)
            aliases = await store.list_aliases(conn)
        channels = []
        for row in rows:
            try:
                channels.append(self._channel(row))
            except ValueError as exc:
                log.error("channel %s is unusable: %s", row.id, exc)
                channels.append(Channel(
                    id=row.id, name=row.name, type=row.type, base_url=row.base_url, api_key=Secret(""),
                    key_hint=row.key_hint, models=frozenset(row.models), model_map={}, priority=row.priority,
                    weight=row.weight, enabled=row.enabled, settings={}, created=row.created, broken=True))
        self._channels, self._aliases = _with_aliases(channels, aliases)
        self._health = {c.id: self._health.get(c.id, Health()) for c in channels}
        for c in channels:
            if c.broken:
                self._health[c.id] = Health(cooling_until=float("inf"), last_error="key cannot be decrypted")
            elif self._health[c.id].cooling_until == float("inf"):
                self._health[c.id] = Health()
        self._fingerprint = fingerprint

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.reload()
            except Exception as exc:  # keep routing with the last good list while the database is away
                log.warning("channel refresh failed: %s", exc)

    # --- aliases ----------------------------------------------------------------

    def price_model(self, model: str) -> str:
        """The model a call is priced as: an alias's target, else itself."""
        return self._aliases.get(model, model)

    async def aliases(self) -> dict[str, str]:
        async with self._pool.connection() as conn:
            return await store.list_aliases(conn)

    async def set_alias(self, name: str, target: str) -> None:
        for value, param in ((name, "name"), (target, "target")):
            if not value or len(value) > 256 or not value.isprintable() or value != value.strip():
                raise InvalidRequest(f"'{param}' must be a model name of 1 to 256 printable characters", param=param)
        if name == target:
            raise InvalidRequest("An alias cannot stand for itself", param="target")
        async with self._pool.connection() as conn:
            current = await store.list_aliases(conn)
            if target in current:
                raise InvalidRequest(f"'{target}' is itself an alias; name the model it stands for", param="target")
            if name in current.values():
                raise InvalidRequest(f"'{name}' is the target of another alias", param="name")
            await store.set_alias(conn, name, target)
        await self.reload()

    async def delete_alias(self, name: str) -> None:
        async with self._pool.connection() as conn:
            if not await store.delete_alias(conn, name):
                raise NotFound(f"No alias named {name!r}")
        await self.reload()

    # --- routing ----------------------------------------------------------------

    def models(self) -> dict[str, int]:
        """Every model some enabled channel serves, with the earliest channel's creation time."""
        out: dict[str, int] = {}
        for c in self._channels:
            if c.enabled:
                for m in c.models:
                    out[m] = min(out.get(m, c.created), c.created)
        return out

    async def plan_fresh(self, model: str, endpoint: Endpoint | None = None,
                         body: dict[str, Any] | None = None) -> list[Channel]:
        """plan(), but a model no channel serves is looked up in the database first: it may
        have been added a moment ago through another replica. Misses that arrive together
        share one look-up (a cheap fingerprint query unless something changed)."""
        try:
            return self.plan(model, endpoint, body)
        except ModelNotFound:
            missed_at = time.monotonic()
        while self._last_reload < missed_at:  # a look-up begun before the miss may not see it
            if self._reloading is None or self._reloading.done():
                self._reloading = asyncio.create_task(self.reload())
            await asyncio.shield(self._reloading)
        return self.plan(model, endpoint, body)

    def plan(self, model: str, endpoint: Endpoint | None = None, body: dict[str, Any] | None = None) -> list[Channel]:
        """The channels to try for `model`, best first: priority, then weight. The first
        choice among the highest priority is taken in turn by weight (smooth weighted
        round-robin: 3:1 is exactly three of every four calls on a replica, interleaved);
        the rest, the order to fail over in, is a weighted shuffle. With an endpoint and
        body, only channels whose kind can carry that call."""
        serving = [c for c in self._channels if c.enabled and model in c.models]
        if not serving:
            raise ModelNotFound(f"The model `{model}` does not exist or you do not have access to it.",
                                param="model")
        if endpoint is not None and body is not None:
            serving = _capable(serving, endpoint, body)
        now = time.monotonic()
        ready = [c for c in serving if self._usable(c, now)]
        if not ready:
            wait = min((self._health[c.id].cooling_until - now for c in serving
                        if self._health[c.id].cooling_until != float("inf")), default=1.0)
            raise NoAvailableChannel(
                f"No upstream can serve `{model}` right now; every channel is cooling down or busy. Try again shortly.",
                retry_after_s=max(1.0, round(wait, 1)),
            )
        ready.sort(key=lambda c: (-c.priority, -_weighted_key(c.weight)))
        top = [c for c in ready if c.priority == ready[0].priority]
        if len(top) > 1:
            first = self._turns.next(top)
            if first is not None:
                ready.remove(first)
                ready.insert(0, first)
        return ready

    def _usable(self, c: Channel, now: float) -> bool:
        h = self._health[c.id]
        if c.max_concurrency and h.in_flight >= c.max_concurrency:
            return False
        if h.cooling_until == 0.0:
            return True
        return now >= h.cooling_until and not h.probing

    def channel(self, channel_id: int) -> Channel | None:
        return next((c for c in self._channels if c.id == channel_id), None)

    def mark_healthy(self, channel_id: int) -> None:
        """An operator's successful test ends a cool-down at once."""
        h = self._health.get(channel_id)
        if h is not None and h.cooling_until != float("inf"):
            h.failures, h.cooling_until, h.last_error = 0, 0.0, ""

    def take(self, c: Channel) -> Attempt | None:
        """Lend a channel to a call, if it is still usable (health may have changed)."""
        h = self._health.get(c.id)
        if h is None or not self._usable(c, time.monotonic()):
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
        if h.cooling_until == float("inf"):
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

    def health_of(self, channel_id: int) -> str:
        h = self._health.get(channel_id)
        return h.state(time.monotonic()) if h else "unknown"

    # --- administration ------------------------------------------------------------

    def _validate(self, values: dict[str, Any], partial: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "name" in values or not partial:
            name = str(values.get("name") or "").strip()
            if not name or len(name) > 200:
                raise InvalidRequest("'name' must be a non-empty string of at most 200 characters", param="name")
            out["name"] = name
        if "type" in values or not partial:
            kind = values.get("type") or "openai"
            if kind not in CHANNEL_TYPES:
                raise InvalidRequest(f"'type' must be one of {', '.join(CHANNEL_TYPES)}", param="type")
            out["type"] = kind
        if "base_url" in values or not partial:
            # Azure's is the resource endpoint; every other kind's includes the version path.
            url = str(values.get("base_url") or "").strip().rstrip("/")
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc or len(url) > 2000:
                raise InvalidRequest("'base_url' must be an http(s) URL such as https://api.openai.com/v1",
                                     param="base_url")
            refusal = self._refusal(parts)
            if refusal:
                raise InvalidRequest(f"'base_url' is not allowed: {refusal}", param="base_url")
            out["base_url"] = url
        if "api_key" in values or not partial:
            key = str(values.get("api_key") or "")
            if len(key) > 8192 or any(ch in key for ch in "\r\n"):
                raise InvalidRequest("'api_key' is not a valid key", param="api_key")
            out["api_key_enc"] = self._box.seal(key)
            out["key_hint"] = mask(key) if key else ""
        if "models" in values or not partial:
            models = values.get("models")
            if (not isinstance(models, list) or not models or len(models) > 1000
                    or not all(isinstance(m, str) and 0 < len(m) <= 200 for m in models)):
                raise InvalidRequest("'models' must be a non-empty list of model names", param="models")
            out["models"] = sorted(set(models))
        if "model_map" in values or not partial:
            mapping = values.get("model_map") or {}
            if not isinstance(mapping, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and v for k, v in mapping.items()
            ):
                raise InvalidRequest("'model_map' must map public model names to upstream names",
                                     param="model_map")
            out["model_map"] = mapping
        for name, default, low in (("priority", 0, -(10**6)), ("weight", 1, 0)):
            if name in values or not partial:
                value = values.get(name, default)
                if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= 10**6:
                    raise InvalidRequest(f"'{name}' must be an integer", param=name)
                out[name] = value
        if "enabled" in values or not partial:
            enabled = values.get("enabled", True)
            if not isinstance(enabled, bool):
                raise InvalidRequest("'enabled' must be true or false", param="enabled")
            out["enabled"] = enabled
        if "settings" in values or not partial:
            settings = values.get("settings") or {}
            if not isinstance(settings, dict):
                raise InvalidRequest("'settings' must be an object", param="settings")
            problem = _settings_problem(settings, str(out.get("type") or values.get("_current_type") or "openai"))
            if problem:
                raise InvalidRequest(problem, param="settings")
            out["settings"] = settings
        return out

    def _refusal(self, parts: SplitResult) -> str | None:
        """A base_url naming an address the policy refuses is refused at once; a host name is
        checked on every connection, on what it resolves to then."""
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return "its port is not a number from 1 to 65535"
        host = parts.hostname or ""
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return None if host else "it names no host"
        return self._destinations.refusal(host, port)

    async def create(self, values: dict[str, Any]) -> ChannelRow:
        row_values = self._validate(values, partial=False)
        async with self._pool.connection() as conn:
            row = await store.insert_channel(conn, row_values)
        await self.reload()
        return row

    async def update(self, channel_id: int, values: dict[str, Any]) -> ChannelRow:
        if "settings" in values and "type" not in values:
            async with self._pool.connection() as conn:
                current = await store.get_channel(conn, channel_id)
            if current is None:
                raise NotFound(f"No channel with id {channel_id}")
            values = {**values, "_current_type": current.type}
        row_values = self._validate(values, partial=True)
        async with self._pool.connection() as conn:
            row = await store.update_channel(conn, channel_id, row_values, no_key=self._box.seal(""))
        if row is None:
            raise NotFound(f"No channel with id {channel_id}")
        await self.reload()
        return row

    async def delete(self, channel_id: int) -> None:
        async with self._pool.connection() as conn:
            if not await store.delete_channel(conn, channel_id):
                raise NotFound(f"No channel with id {channel_id}")
        await self.reload()

    async def rows(self) -> list[ChannelRow]:
        async with self._pool.connection() as conn:
            return await store.list_channels(conn)


def _settings_problem(settings: dict[str, Any], kind: str) -> str | None:
    timeout = settings.get("timeout_s")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not 0 < timeout <= 3600):
        return "'settings.timeout_s' must be a number of seconds between 0 and 3600"
    concurrency = settings.get("max_concurrency")
    if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, (int, float))
                                    or concurrency < 0 or concurrency != int(concurrency)):
        return "'settings.max_concurrency' must be a whole number (0 = unlimited)"
    return ADAPTERS[kind].validate_settings(settings) if kind in ADAPTERS else None


def _capable(serving: list[Channel], endpoint: Endpoint, body: dict[str, Any]) -> list[Channel]:
    """The channels whose kind can carry this call; if none can, the first kind's reason why."""
    refusals: dict[str, InvalidRequest | None] = {}
    capable = []
    for c in serving:
        if c.type not in refusals:
            adapter = ADAPTERS.get(c.type)
            refusals[c.type] = adapter.refusal(endpoint, body) if adapter else InvalidRequest(
                f"channel type {c.type!r} is unknown")
        if refusals[c.type] is None:
            capable.append(c)
    if not capable:
        raise next(r for r in refusals.values() if r is not None)
    return capable


class _Turns:
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


def _weighted_key(weight: int) -> float:
    """Efraimidis-Spirakis: sorting by random()**(1/w) is a weighted shuffle."""
    if weight <= 0:
        return -1.0
    return random.random() ** (1.0 / weight)


def _with_aliases(channels: list[Channel], aliases: dict[str, str]) -> tuple[list[Channel], dict[str, str]]:
    """The channels with each alias served wherever its target is, sent upstream as the target
    is; and the aliases in effect. A name some channel serves itself is not overridden."""
    served = {m for c in channels for m in c.models}
    applied = {name: target for name, target in aliases.items() if name not in served and target in served}
    out = []
    for c in channels:
        extra = {name: c.upstream_model(target) for name, target in applied.items() if target in c.models}
        out.append(replace(c, models=frozenset(c.models | set(extra)), model_map={**c.model_map, **extra})
                   if extra else c)
    return out, applied
