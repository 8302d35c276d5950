"""The channel book: the channels and model aliases this replica routes by, loaded from the
database and kept fresh (every change through any replica shows within a refresh), and the
one object the relay and the servicer ask. What a channel is lives in channel.py; the order to
try channels in, routing.py; their health, channel_health.py; an operator's rules for them,
channel_rules.py."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any

from psycopg_pool import AsyncConnectionPool

from services.common.config import Secret
from services.inference import store
from services.inference.channel import Channel
from services.inference.channel_health import Attempt, ChannelHealth
from services.inference.channel_rules import ChannelRules
from services.inference.destinations import DestinationPolicy
from services.inference.errors import InvalidRequest, ModelNotFound, NotFound
from services.inference.payloads import Endpoint
from services.inference.routing import Router
from services.inference.secretbox import SecretBox
from services.inference.store import ChannelRow

__all__ = ["Attempt", "Channel", "ChannelBook"]

log = logging.getLogger(__name__)


class ChannelBook:
    def __init__(self, pool: AsyncConnectionPool, box: SecretBox, *, cooldown_s: float, failure_threshold: int,
                 destinations: DestinationPolicy, refresh_s: float = 0.5) -> None:
        self._pool = pool
        self._box = box
        self._rules = ChannelRules(box, destinations)
        self._health = ChannelHealth(cooldown_s=cooldown_s, failure_threshold=failure_threshold)
        self._router = Router()
        self._refresh_s = refresh_s
        self._channels: list[Channel] = []
        self._fingerprint: tuple[tuple[int, float], str] | None = None
        self._aliases: dict[str, str] = {}  # the aliases in effect: name -> target
        self._last_reload = 0.0
        self._reloading: asyncio.Task[None] | None = None
        # One reload at a time: a periodic read begun before an operator's change commits must
        # not finish after the change's own reload and put the old channels back.
        self._reload_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

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
        async with self._reload_lock:
            await self._reload()

    async def _reload(self) -> None:
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
        self._health.follow(channels)
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
        """The channels to try for `model`, best first (routing.Router.plan)."""
        return self._router.plan(self._channels, self._health, model, endpoint, body)

    def channel(self, channel_id: int) -> Channel | None:
        return next((c for c in self._channels if c.id == channel_id), None)

    # --- health -------------------------------------------------------------------

    def mark_healthy(self, channel_id: int) -> None:
        """An operator's successful test ends a cool-down at once."""
        self._health.mark_healthy(channel_id)

    def take(self, c: Channel) -> Attempt | None:
        """Lend a channel to a call, if it is still usable (health may have changed)."""
        return self._health.take(c)

    def done(self, attempt: Attempt, failure: str | None = None, *, auth_failure: bool = False) -> None:
        self._health.done(attempt, failure, auth_failure=auth_failure)

    def calls_in_flight(self) -> int:
        return self._health.calls_in_flight()

    def health_of(self, channel_id: int) -> str:
        return self._health.state_of(channel_id)

    # --- administration ------------------------------------------------------------

    async def create(self, values: dict[str, Any]) -> ChannelRow:
        row_values = self._rules.row_values(values, partial=False)
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
        row_values = self._rules.row_values(values, partial=True)
        async with self._pool.connection() as conn:
            row = await store.update_channel(conn, channel_id, row_values, no_key=self._rules.empty_key())
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
