"""Sliding-window rate limits, in this process or shared by every edge replica through Redis.

    limiter = make_limiter(redis_url)            # None: in-process
    verdict = await limiter.hit("k42", [Rule("requests", 60), Rule("tokens", 40_000, cost=900)])
    if not verdict.admitted:
        ... verdict.refused.retry_after_s ...
    await limiter.true_up("k42", Rule("tokens", 40_000, cost=900), verdict.ticket, 812)

A window is a log of (time, cost) entries over the last `window_s` seconds, exact rather
than interpolated between fixed windows. A hit is admitted only when every rule has room
for its cost; then it is recorded in all of them together, so a refused hit costs nothing.
On Redis that is one Lua script (atomic), timed by Redis's clock so replicas agree;
the keys of one scope share a hash tag, so the script also runs on a Redis Cluster.
If Redis is unreachable the limiter admits (and says so in the log): a rate limit protects
the upstreams, and an outage of it should not become an outage of the API.
"""
from __future__ import annotations

import abc
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    name: str              # "requests", "tokens", "logins", ...
    limit: int             # the most `cost` the window may hold
    cost: int = 1          # what this hit counts for
    window_s: float = 60.0


@dataclass(frozen=True)
class Window:
    """One rule's state after a hit."""

    name: str
    limit: int
    remaining: int         # room left (after this hit, if it was admitted)
    reset_s: float         # until every entry now in the window has left it
    retry_after_s: float   # refused: until there is room for this cost; 0 when admitted
    too_large: bool = False  # refused because the cost alone is over the limit


@dataclass(frozen=True)
class Verdict:
    admitted: bool
    windows: tuple[Window, ...]
    ticket: str            # names this hit's entries, for true_up
    enforced: bool = True  # False: the shared store (Redis) was unreachable and the hit was admitted unchecked

    @property
    def refused(self) -> Window | None:
        return next((w for w in self.windows if w.retry_after_s > 0 or w.too_large), None)


class Limiter(abc.ABC):
    @abc.abstractmethod
    async def hit(self, scope: str, rules: list[Rule]) -> Verdict:
        """Admit and record a hit against every rule of `scope`, or refuse and record nothing."""

    @abc.abstractmethod
    async def true_up(self, scope: str, rule: Rule, ticket: str, cost: int) -> None:
        """Replace an admitted hit's cost for `rule` (an estimate) with what it really cost."""

    async def close(self) -> None:  # noqa: B027 - nothing to close in process
        pass


def _window(rule: Rule, used: int, admitted: bool, reset_s: float, retry_s: float) -> Window:
    too_large = not admitted and rule.cost > rule.limit
    return Window(rule.name, rule.limit, max(0, rule.limit - used), max(0.0, reset_s),
                  max(0.0, retry_s) if not admitted and (used + rule.cost > rule.limit) else 0.0, too_large)


# --- in process ----------------------------------------------------------------------------


class _Log:
    __slots__ = ("entries", "total", "window_s")

    def __init__(self, window_s: float) -> None:
        self.entries: deque[list] = deque()  # [time, cost, ticket], oldest first
        self.total = 0
        self.window_s = window_s

    def prune(self, horizon: float) -> None:
        while self.entries and self.entries[0][0] <= horizon:
            self.total -= self.entries.popleft()[1]


class MemoryLimiter(Limiter):
    """One process's windows: exact for a single edge, per replica when there are several."""

    SWEEP_EVERY = 10_000

    def __init__(self, clock=time.monotonic) -> None:  # noqa: ANN001 - a clock function, for tests
        self._clock = clock
        self._logs: dict[tuple[str, str], _Log] = {}
        self._hits = 0

    async def hit(self, scope: str, rules: list[Rule]) -> Verdict:
        now = self._clock()
        self._hits += 1
        if self._hits % self.SWEEP_EVERY == 0:
            self._sweep(now)
        logs = [self._logs.get((scope, r.name)) or self._logs.setdefault((scope, r.name), _Log(r.window_s))
                for r in rules]
        for rule, entries in zip(rules, logs, strict=True):
            entries.prune(now - rule.window_s)
        admitted = all(e.total + r.cost <= r.limit for r, e in zip(rules, logs, strict=True))
        ticket = secrets.token_hex(8)
        windows = []
        for rule, entries in zip(rules, logs, strict=True):
            if admitted:
                entries.entries.append([now, rule.cost, ticket])
                entries.total += rule.cost
            retry = self._retry(entries, rule, now) if not admitted else 0.0
            newest = entries.entries[-1][0] if entries.entries else now - rule.window_s
            windows.append(_window(rule, entries.total, admitted, newest + rule.window_s - now, retry))
        return Verdict(admitted, tuple(windows), ticket)

    @staticmethod
    def _retry(entries: _Log, rule: Rule, now: float) -> float:
        if rule.cost > rule.limit:
            return rule.window_s
        need = entries.total + rule.cost - rule.limit
        freed = 0
        for at, cost, _ in entries.entries:
            freed += cost
            if freed >= need:
                return at + rule.window_s - now
        return rule.window_s

    async def true_up(self, scope: str, rule: Rule, ticket: str, cost: int) -> None:
        entries = self._logs.get((scope, rule.name))
        if entries is None:
            return
        for entry in entries.entries:
            if entry[2] == ticket:
                entries.total += cost - entry[1]
                entry[1] = cost
                return

    def _sweep(self, now: float) -> None:
        """Forget scopes nobody has used for a whole window, so memory stays bounded."""
        for slot in [s for s, e in self._logs.items() if not e.entries or e.entries[-1][0] <= now - e.window_s]:
            del self._logs[slot]


# --- Redis ---------------------------------------------------------------------------------

# KEYS: per rule, its log (a sorted set of "ticket:cost" scored by milliseconds) and its total.
# ARGV: ticket, then per rule: limit, cost, window in milliseconds.
# Returns: admitted, then per rule: total, reset ms, retry-after ms.
_HIT = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ticket = ARGV[1]
local n = #KEYS / 2
local totals, admitted = {}, 1
for i = 1, n do
  local log, sum = KEYS[2 * i - 1], KEYS[2 * i]
  local limit, cost, window = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  local total = redis.call('GET', sum)
  if not total then
    total = 0
    for _, m in ipairs(redis.call('ZRANGEBYSCORE', log, now - window + 1, '+inf')) do
      total = total + tonumber(string.match(m, ':(%d+)$'))
    end
  else
    total = tonumber(total)
    for _, m in ipairs(redis.call('ZRANGEBYSCORE', log, '-inf', now - window)) do
      total = total - tonumber(string.match(m, ':(%d+)$'))
    end
  end
  redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
  if total < 0 then total = 0 end
  totals[i] = total
  if total + cost > limit then admitted = 0 end
end
local out = {admitted}
for i = 1, n do
  local log, sum = KEYS[2 * i - 1], KEYS[2 * i]
  local limit, cost, window = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  local total, retry = totals[i], 0
  if admitted == 1 then
    redis.call('ZADD', log, now, ticket .. ':' .. cost)
    total = total + cost
  elseif total + cost > limit then
    retry = window
    if cost <= limit then
      local need, freed = total + cost - limit, 0
      local entries = redis.call('ZRANGE', log, 0, -1, 'WITHSCORES')
      for j = 1, #entries, 2 do
        freed = freed + tonumber(string.match(entries[j], ':(%d+)$'))
        if freed >= need then retry = tonumber(entries[j + 1]) + window - now break end
      end
    end
  end
  redis.call('SET', sum, total)
  redis.call('PEXPIRE', sum, window)
  redis.call('PEXPIRE', log, window)
  local newest = redis.call('ZRANGE', log, -1, -1, 'WITHSCORES')
  local reset = 0
  if newest[2] then reset = tonumber(newest[2]) + window - now end
  table.insert(out, total)
  table.insert(out, reset)
  table.insert(out, retry)
end
return out
"""

# KEYS: log, total. ARGV: ticket, old cost, new cost.
_TRUE_UP = """
local old = ARGV[1] .. ':' .. ARGV[2]
local score = redis.call('ZSCORE', KEYS[1], old)
if not score then return 0 end
redis.call('ZREM', KEYS[1], old)
redis.call('ZADD', KEYS[1], score, ARGV[1] .. ':' .. ARGV[3])
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('INCRBY', KEYS[2], tonumber(ARGV[3]) - tonumber(ARGV[2]))
end
return 1
"""


class RedisLimiter(Limiter):
    """Windows in Redis, shared by every edge that points at it."""

    PREFIX = "chatkore:rl"
    WARN_EVERY_S = 10.0

    def __init__(self, url: str) -> None:
        from redis import asyncio as aioredis  # only edges configured with REDIS_URL need the client

        self._redis = aioredis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5,
                                        health_check_interval=30)
        self._hit = self._redis.register_script(_HIT)
        self._true_up = self._redis.register_script(_TRUE_UP)
        self._warned = 0.0

    def _keys(self, scope: str, name: str) -> list[str]:
        base = f"{self.PREFIX}:{{{scope}}}:{name}"  # {scope}: one hash slot per scope
        return [base, base + ":total"]

    def _unreachable(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned > self.WARN_EVERY_S:
            self._warned = now
            log.error("rate limits not enforced: Redis unreachable (%s)", type(exc).__name__)

    async def hit(self, scope: str, rules: list[Rule]) -> Verdict:
        ticket = secrets.token_hex(8)
        keys: list[str] = []
        args: list[str | int] = [ticket]
        for rule in rules:
            keys += self._keys(scope, rule.name)
            args += [rule.limit, rule.cost, max(1, int(rule.window_s * 1000))]
        try:
            out = await self._hit(keys=keys, args=args)
        except Exception as exc:  # redis-py raises its own ConnectionError/TimeoutError and OSError
            self._unreachable(exc)
            return Verdict(True, (), ticket, enforced=False)
        admitted = bool(int(out[0]))
        windows = tuple(
            _window(rule, int(out[1 + 3 * i]), admitted, int(out[2 + 3 * i]) / 1000, int(out[3 + 3 * i]) / 1000)
            for i, rule in enumerate(rules))
        return Verdict(admitted, windows, ticket)

    async def true_up(self, scope: str, rule: Rule, ticket: str, cost: int) -> None:
        try:
            await self._true_up(keys=self._keys(scope, rule.name), args=[ticket, rule.cost, cost])
        except Exception as exc:
            self._unreachable(exc)

    async def close(self) -> None:
        await self._redis.aclose()


def make_limiter(redis_url: str | None) -> Limiter:
    return RedisLimiter(redis_url) if redis_url else MemoryLimiter()
