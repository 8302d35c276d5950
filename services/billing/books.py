"""Billing's domain: accounts, holds and their settlement, the ledger's checks."""
from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
import uuid
from dataclasses import dataclass

import psycopg
from psycopg_pool import AsyncConnectionPool

from services.billing import store
from services.billing.batcher import Batcher, BeatAsk, HoldAsk, SettleAsk, Settlement
from services.billing.errors import (
    Conflict,
    HoldClosed,
    InvalidRequest,
    ModelNotPriced,
    NotFound,
    quota_refusal,
)
from services.billing.prices import PriceBook
from services.billing.pricing import (
    AUDIO_PARAM,
    FEATURES,
    HoldPlan,
    Price,
    Usage,
    completion_budget,
    multiplier,
    per_unit,
    plan_hold,
    rates_of,
    unit_price,
    valid_unit,
)
from services.billing.pricing import input_only as pricing_input_only
from services.billing.store import RequestRow, UserRow
from services.common import peers

log = logging.getLogger(__name__)

MAX_CREDITS = 10**9 * 1_000_000  # one billion credits: far beyond any real top-up, far inside bigint


@dataclass(frozen=True)
class Hold:
    request_id: str
    amount: int
    completion_budget: int
    budget_capped: bool
    completion_limit: int = 0
    ttl_s: int = 0
    unit: str = ""  # the price row's unit the call is counted in; "" = tokens


def code_hash(code: str) -> bytes:
    return hashlib.sha256(code.strip().encode()).digest()


def _check_credits(credits: int, param: str = "credits") -> None:
    if credits <= 0 or credits > MAX_CREDITS:
        raise InvalidRequest(f"'{param}' must be a positive number of credits", param=param)


class Books:
    """Holds, settlements and heartbeats go through the batcher (one writer on its own
    connection); everything else uses the pool."""

    def __init__(self, pool: AsyncConnectionPool, prices: PriceBook, *, hold_ttl_s: int,
                 signup_credits: int, writer_url: str) -> None:
        self._pool = pool
        self.prices = prices
        self._hold_ttl_s = hold_ttl_s
        self._signup_credits = signup_credits
        self._batcher = Batcher(writer_url, hold_ttl_s=hold_ttl_s, retried=self._reserve_again)

    def start(self) -> None:
        self._batcher.start()

    async def stop(self) -> None:
        await self._batcher.stop()

    # --- accounts ---------------------------------------------------------------

    async def create_user(self, name: str, credits: int | None, reference: str = "") -> UserRow:
        """A new user with `credits` (default: the sign-up bonus). With a reference, a second
        call answers the first call's user and grants nothing (a retried sign-up)."""
        name = name.strip()
        if not name or len(name) > 254:
            raise InvalidRequest("'name' must be a non-empty string of at most 254 characters", param="name")
        amount = self._signup_credits if credits is None else credits
        if amount < 0 or amount > MAX_CREDITS:
            raise InvalidRequest("'credits' must be a non-negative number of credits", param="credits")
        if len(reference) > 200:
            raise InvalidRequest("'reference' must be at most 200 characters", param="reference")
        async with self._pool.connection() as conn:
            user = await store.create_user(conn, name, amount, reference or None)
            if user is None:
                user = await store.user_by_reference(conn, reference)
        if user is None:  # the reference's user was made, then deleted: cannot happen, users are never deleted
            raise Conflict(f"Reference {reference!r} cannot be reused", param="reference")
        return user

    async def search_users(self, query: str, limit: int) -> list[UserRow]:
        limit = 50 if limit <= 0 else min(limit, 500)
        async with self._pool.connection() as conn:
            return await store.search_users(conn, query.strip()[:200], limit)

    async def set_disabled(self, user_id: int, disabled: bool) -> UserRow:
        async with self._pool.connection() as conn:
            user = await store.set_disabled(conn, user_id, disabled)
        if user is None:
            raise NotFound(f"No user with id {user_id}")
        return user

    async def get_user(self, user_id: int) -> UserRow:
        await self._batcher.flushed()  # a settlement that reached this process shows in the balance
        async with self._pool.connection() as conn:
            user = await store.get_user(conn, user_id)
        if user is None:
            raise NotFound(f"No user with id {user_id}")
        return user

    async def top_up(self, user_id: int, credits: int, reference: str) -> UserRow:
        _check_credits(credits)
        if len(reference) > 200:
            raise InvalidRequest("'reference' must be at most 200 characters", param="reference")
        ref = reference or f"auto:{uuid.uuid4()}"
        async with self._pool.connection() as conn:
            try:
                user = await store.top_up(conn, user_id, credits, ref, "topup")
            except psycopg.errors.ForeignKeyViolation:
                raise NotFound(f"No user with id {user_id}") from None
            if user is not None:
                return user
            earlier = await store.get_topup(conn, ref)
            if earlier != (user_id, credits):
                raise Conflict(f"Reference {reference!r} was already used for a different top-up",
                               param="reference")
            user = await store.get_user(conn, user_id)
        assert user is not None
        return user

    async def grant_signup_bonus(self, user_id: int, reference: str) -> tuple[bool, int, UserRow]:
        """The sign-up bonus as a top-up by `reference` (a normalised mailbox's): (granted to this
        user, credits, the user). Another user asking with a used reference gets nothing."""
        if not reference or len(reference) > 200:
            raise InvalidRequest("'reference' must be 1 to 200 characters", param="reference")
        amount = self._signup_credits
        async with self._pool.connection() as conn:
            user = await store.top_up(conn, user_id, amount, reference, "grant") if amount > 0 else None
            if user is not None:
                return True, amount, user
            earlier = await store.get_topup(conn, reference)
            user = await store.get_user(conn, user_id)
        if user is None:
            raise NotFound(f"No user with id {user_id}")
        mine = earlier is not None and earlier[0] == user_id
        return mine, earlier[1] if mine and earlier else 0, user

    # --- low-balance alerts -----------------------------------------------------------

    async def set_alert(self, user_id: int, threshold: int, lang: str) -> store.AlertRow:
        if threshold < 0 or threshold > MAX_CREDITS:
            raise InvalidRequest("'threshold' must be a non-negative number of credits", param="threshold")
        async with self._pool.connection() as conn:
            try:
                await store.set_alert(conn, user_id, threshold, lang if lang in ("zh-CN", "en") else "en")
            except psycopg.errors.ForeignKeyViolation:
                raise NotFound(f"No user with id {user_id}") from None
            alert = await store.get_alert(conn, user_id)
        assert alert is not None
        return alert

    async def get_alert(self, user_id: int) -> store.AlertRow:
        async with self._pool.connection() as conn:
            alert = await store.get_alert(conn, user_id)
        if alert is None:
            raise NotFound(f"No user with id {user_id}")
        return alert

    async def take_alerts(self) -> list[store.AlertRow]:
        async with self._pool.connection() as conn:
            return await store.take_alerts(conn)

    # --- holds ------------------------------------------------------------------

    async def reserve(self, *, request_id: str, user_id: int, key_id: int, credit_limit: int, model: str,
                      prompt_tokens: int, max_tokens: int, choices: int, channel_id: int, try_number: int = 0,
                      service_tier: str = "", features: tuple[str, ...] = (), unit: str = "", units: int = 0,
                      unit_required: bool = False, unit_param: str = "", input_only: bool = False) -> Hold:
        if not request_id:
            raise InvalidRequest("request_id is required")
        if try_number < 0:
            raise InvalidRequest("try_number cannot be negative")
        price = await self.prices.get(model)
        if price is None:
            raise ModelNotPriced(f"The model `{model}` does not exist or you do not have access to it.",
                                 param="model")
        priced_unit = ""
        if unit:
            found = unit_price(price, unit) if valid_unit(unit) else None
            if found is not None:
                priced_unit, prompt_tokens, max_tokens = found[0], max(0, units), 0
                price = per_unit(price, *found)
            elif unit_required:
                raise InvalidRequest(f"The model `{model}` has no price on this gateway for {unit.replace('/', ' ')}.",
                                     param=unit_param or "model", code="unsupported_parameter")
        if input_only or priced_unit:
            price, max_tokens = pricing_input_only(price), 0
        factor, refused = multiplier(price, service_tier, list(features))
        if refused == AUDIO_PARAM:
            raise InvalidRequest(f"Audio input and output are not available for the model `{model}` on this"
                                 " gateway: it has no audio price.", param=refused, code="unsupported_parameter")
        if refused is not None:
            what = f"service_tier `{service_tier}`" if refused == "service_tier" else f"`{refused}`"
            raise InvalidRequest(f"{what} is not available for the model `{model}` on this gateway.",
                                 param=refused, code="unsupported_parameter")
        rates = rates_of(price, factor, audio="audio" in features)
        plan = plan_hold(price, prompt_tokens, max_tokens, choices, rates)
        if "\x00" in request_id:
            raise InvalidRequest("request_id cannot hold a NUL character")
        amount = await self._batcher.reserve(HoldAsk(
            request_id=request_id, user_id=user_id, key_id=key_id, credit_limit=credit_limit, model=price.model,
            rates=rates, prompt_tokens=prompt_tokens, desired=plan.desired, minimum=plan.minimum,
            channel_id=channel_id, try_number=try_number))
        assert amount is not None  # a refusal is raised by the batcher
        budget = completion_budget(price, amount, prompt_tokens, choices, plan.per_choice_limit, rates)
        return Hold(request_id, amount, budget, budget < plan.per_choice_limit, plan.per_choice_limit,
                    self._hold_ttl_s, priced_unit)

    async def _reserve_again(self, conn: psycopg.AsyncConnection, ask: HoldAsk) -> int | None:
        """The batcher's way for a Reserve whose request row exists (inside its transaction)."""
        amount = await self._retried(conn, ask.request_id, ask.user_id, ask.key_id, ask.credit_limit,
                                     ask.prompt_tokens, HoldPlan(ask.desired, ask.minimum, 0), ask.try_number)
        if amount is None:
            await self._explain_refusal(conn, ask.user_id, ask.key_id, ask.credit_limit)
        return amount

    async def _retried(self, conn: psycopg.AsyncConnection, request_id: str, user_id: int, key_id: int,
                       credit_limit: int, prompt_tokens: int, plan: HoldPlan, try_number: int) -> int | None:
        """A Reserve for a call that has a hold row already: a retry (the edge tried another
        replica, or inference repeated a call billing may have taken). The retry takes an open
        hold over; a hold an earlier try released is placed again; a settled call, already paid
        for, is refused (HOLD_CLOSED): nothing is held for it, so nothing may go upstream again.
        A try numbered below the one on the row is stale (its caller has moved on) and is
        refused, so it can neither take a later try's hold nor hold again for a call whose client
        already had its answer. Without a try
        number (0: a caller that does not number its tries), a repeat is answered with the hold
        as it stands."""
        for _ in range(3):  # each pass that finds the row moved on sees a later state of it
            existing = await store.get_request(conn, request_id)
            if existing is None or existing.user_id != user_id:
                raise Conflict("request id reused")
            if not try_number:
                return existing.hold
            if existing.state == "settled":
                # Answered and charged already: a later try must not run the call upstream again
                # on a hold that no longer exists (it would be free), nor a stale one.
                raise HoldClosed("This request was already answered and charged; send it again as a new"
                                 " request.")
            if existing.try_number > try_number:
                break  # stale
            if existing.state == "held":
                taken = await store.take_over(conn, request_id, user_id, try_number, self._hold_ttl_s)
                if taken is not None:
                    return taken
                continue
            try:
                return await store.reopen(conn, request_id=request_id, user_id=user_id, key_id=key_id,
                                          credit_limit=credit_limit, prompt_tokens=prompt_tokens,
                                          desired=plan.desired, minimum=plan.minimum, ttl_s=self._hold_ttl_s,
                                          try_number=try_number)  # None: the balance no longer covers it
            except store.Moved:
                continue
        raise Conflict("a later try at this call holds its credits")

    async def _explain_refusal(self, conn: psycopg.AsyncConnection, user_id: int, key_id: int,
                               credit_limit: int) -> None:
        user = await store.get_user(conn, user_id)
        raise quota_refusal(disabled=user is None or user.disabled,
                            key_limit_reached=user is not None and credit_limit > 0
                            and await store.key_room(conn, key_id, credit_limit) < user.balance)

    async def settle(self, *, request_id: str, usage: Usage, status: str, usage_source: str, channel_id: int,
                     try_number: int = 0, unbilled: int = 0) -> Settlement:
        """Charge a call's usage (cost() at the rates it was held at) and release the rest of
        its hold. Usage past the hold is charged from the balance as far as it reaches; a call
        whose hold the sweeper released is charged what the balance can pay (`late`). What no
        one could pay is recorded on the usage row as unpaid, never lost silently."""
        if min(usage.prompt, usage.completion, usage.cached_prompt, usage.cache_write, usage.reasoning,
               usage.audio_prompt, usage.audio_completion) < 0:
            raise InvalidRequest("token counts cannot be negative")
        if "\x00" in request_id + status + usage_source:
            raise InvalidRequest("request_id, status and usage_source cannot hold a NUL character")
        return await self._batcher.settle(SettleAsk(
            request_id=request_id, usage=usage.normalised(), status=status or "complete", usage_source=usage_source,
            channel_id=channel_id, try_number=try_number, unbilled=max(0, unbilled)))

    async def await_settled(self, request_ids: list[str], timeout_s: float) -> list[str]:
        """Wait until none of these calls holds credits (each settled or released), at most
        `timeout_s`; those that still did. Their settlements follow the replies (issue 16), so a
        read made right after a reply waits here for the one it must show. A settlement may land
        on another replica: besides this one's commits, the rows are looked at every 50 ms."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            await self._batcher.flushed()
            async with self._pool.connection() as conn:
                still = await store.still_held(conn, request_ids)
            left = deadline - loop.time()
            if not still or left <= 0:
                return still
            request_ids = still
            await self._batcher.committed(min(left, 0.05))

    async def keep_alive(self, request_id: str, try_number: int) -> bool:
        """A live call's heartbeat: its hold's deadline moves a full TTL from now."""
        return await self._batcher.keep_alive(BeatAsk(request_id, try_number))

    async def sweep(self) -> int:
        """Release every hold past its deadline (its request died); returns how many."""
        async with self._pool.connection() as conn:
            overdue = await store.overdue_holds(conn)
        # All at once: the writer commits them together.
        results = await asyncio.gather(*(
            self.settle(request_id=request_id, usage=Usage(), status="expired", usage_source="", channel_id=0)
            for request_id in overdue), return_exceptions=True)
        for request_id, result in zip(overdue, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("sweep of %s failed: %s", request_id, result)
            elif result.state == "released":
                log.warning("released overdue hold", extra={"hold": request_id})
        return len(overdue)

    async def sweep_forever(self, interval_s: float) -> None:
        # Holds whose deadline passed while billing was away may belong to calls that finished
        # and whose settlements are still retrying: let them land before sweeping (a 200 answered
        # while billing restarted must be charged, not released as if its request had died).
        await asyncio.sleep(peers.SETTLE_RETRY_LONGEST_WAIT_S)
        while True:
            try:
                await self.sweep()
            except Exception as exc:  # the database may be away; try again next round
                log.warning("sweep failed: %s", exc)
            await asyncio.sleep(interval_s)

    async def open_holds(self) -> int:
        async with self._pool.connection() as conn:
            return await store.open_hold_count(conn)

    # --- prices -------------------------------------------------------------------

    async def set_price(self, model: str, prompt: int, completion: int, min_charge: int | None, *,
                        cached_prompt: int | None = None, cache_write: int | None = None,
                        context: int | None = None, max_output: int | None = None,
                        tiers: dict[str, float] | None = None, features: dict[str, float] | None = None,
                        units: dict[str, int] | None = None, audio_prompt: int | None = None,
                        audio_completion: int | None = None) -> Price:
        """Create or change a model's price. Anything not given keeps its current value, or for a
        new model its default: cache prices follow the prompt price (-1 asks for that again),
        a conservative context and output limit (every chat model takes a 4,096-token budget),
        no tier, feature or audio priced (calls using one are refused). Audio prices come as a pair
        (-1 removes them)."""
        model = model.strip()
        if not model or len(model) > 200:
            raise InvalidRequest("model name must be 1 to 200 characters", param="model")
        for name, value in (("prompt", prompt), ("completion", completion), ("min_charge", min_charge or 0),
                            ("cached_prompt", 0 if cached_prompt == -1 else cached_prompt or 0),
                            ("cache_write", 0 if cache_write == -1 else cache_write or 0),
                            ("audio_prompt", 0 if audio_prompt == -1 else audio_prompt or 0),
                            ("audio_completion", 0 if audio_completion == -1 else audio_completion or 0)):
            if value < 0 or value > MAX_CREDITS:
                raise InvalidRequest(f"'{name}' must be a non-negative number of credits", param=name)
        for name, limit in (("context", context), ("max_output", max_output)):
            if limit is not None and not 0 <= limit <= 10_000_000:
                raise InvalidRequest(f"'{name}' must be a number of tokens from 0 to 10000000", param=name)
        for name, table, known in (("tiers", tiers, None), ("features", features, FEATURES)):
            for key, value in (table or {}).items():
                if not key or len(key) > 64 or (known is not None and key not in known):
                    allowed = f" (one of {', '.join(sorted(known))})" if known else ""
                    raise InvalidRequest(f"'{name}' has an unknown name {key[:64]!r}{allowed}", param=name)
                if not 0 < value <= 1000:
                    raise InvalidRequest(f"'{name}.{key}' must be a multiplier above 0, at most 1000", param=name)
        for key, value in (units or {}).items():
            if not valid_unit(key):
                raise InvalidRequest(f"'units' has an unknown unit {key[:64]!r} (image, image/SIZE, image/SIZE/QUALITY,"
                                     " 1k_characters or minute)", param="units")
            if not 0 <= value <= MAX_CREDITS:
                raise InvalidRequest(f"'units.{key}' must be a non-negative number of credits", param="units")
        if (audio_prompt is None) != (audio_completion is None) or \
                (audio_prompt is not None and (audio_prompt < 0) != (audio_completion < 0)):  # type: ignore[operator]
            raise InvalidRequest("'audio_prompt' and 'audio_completion' are set (or removed) together",
                                 param="audio_prompt" if audio_prompt is None else "audio_completion")
        embedding = "embedding" in model
        keep = frozenset(name for name, value in (
            ("min_charge", min_charge), ("cached_prompt", cached_prompt), ("cache_write", cache_write),
            ("context", context), ("max_output", max_output), ("tiers", tiers), ("features", features),
            ("units", units), ("audio", audio_prompt),
        ) if value is None)
        price = Price(
            model=model, prompt=prompt, completion=completion,
            min_charge=(4_000_000 if embedding else 0) if min_charge is None else min_charge,
            context_window=(8191 if embedding else 128000) if context is None else context,
            max_output_tokens=(0 if embedding else 4096) if max_output is None else max_output,
            cached_prompt=None if cached_prompt is None or cached_prompt < 0 else cached_prompt,
            cache_write=None if cache_write is None or cache_write < 0 else cache_write,
            tiers=tiers or {}, features=features or {}, units=units or {},
            audio_prompt=None if audio_prompt is None or audio_prompt < 0 else audio_prompt,
            audio_completion=None if audio_completion is None or audio_completion < 0 else audio_completion,
        )
        async with self._pool.connection() as conn:
            saved = await store.upsert_price(conn, price, keep)
        self.prices.put(saved)
        return saved

    async def list_prices(self) -> list[Price]:
        async with self._pool.connection() as conn:
            return await store.list_prices(conn)

    # --- usage and the ledger --------------------------------------------------------

    async def usage(self, where: store.UsageFilter, limit: int, cursor: str = "") -> tuple[list[RequestRow], str]:
        """A page of finished calls, newest first, and the cursor of the next page ('' at the end)."""
        limit = 100 if limit <= 0 else min(limit, 1000)
        after = None
        if cursor:
            micros, _, request_id = cursor.partition(":")
            if not (micros.isascii() and micros.isdigit()) or len(micros) > 18 or not request_id or len(cursor) > 240:
                raise InvalidRequest("'cursor' is not one this server gave", param="cursor")
            after = (int(micros), request_id)
        if where.since < 0 or where.until < 0 or (where.until and where.since >= where.until):
            raise InvalidRequest("'since' must be before 'until'", param="since")
        await self._batcher.flushed()
        async with self._pool.connection() as conn:
            rows = await store.list_usage(conn, where, limit + 1, after)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = f"{rows[-1][1]}:{rows[-1][0].request_id}" if more and rows else ""
        return [r for r, _ in rows], next_cursor

    async def daily_spend(self, user_id: int, days: int) -> list[tuple[str, int, int, int]]:
        days = 30 if days <= 0 else min(days, 366)
        await self._batcher.flushed()
        async with self._pool.connection() as conn:
            return await store.daily_spend(conn, user_id, days)

    async def model_stats(self, since: int, bucket_s: int) -> list[store.StatRow]:
        if bucket_s < 60 or bucket_s > 31 * 86400:
            raise InvalidRequest("'bucket' must be between 60 seconds and 31 days", param="bucket")
        # At most ~1,000 buckets, so a wide window cannot ask for an enormous answer.
        since = max(since, int(time.time()) - bucket_s * 1000)
        async with self._pool.connection() as conn:
            return await store.model_stats(conn, since, bucket_s)

    async def spend(self, user_id: int, since: int, until: int) -> tuple[UserRow, int, int]:
        until = until or int(time.time()) + 1
        await self._batcher.flushed()
        async with self._pool.connection() as conn:
            user = await store.get_user(conn, user_id)
            if user is None:
                raise NotFound(f"No user with id {user_id}")
            spent, granted = await store.spend(conn, user_id, since, until)
        return user, spent, granted

    async def verify(self) -> dict[str, object]:
        await self._batcher.flushed()
        async with self._pool.connection() as conn:
            return await store.verify_ledger(conn)

    # --- redeem codes ------------------------------------------------------------------

    async def create_codes(self, credits: int, count: int) -> list[str]:
        _check_credits(credits)
        if count < 1 or count > 1000:
            raise InvalidRequest("'count' must be between 1 and 1000", param="count")
        codes = [f"ck-{secrets.token_urlsafe(18)}" for _ in range(count)]
        async with self._pool.connection() as conn:
            await store.create_redeem_codes(conn, credits, [code_hash(c) for c in codes])
        return codes

    async def redeem(self, user_id: int, code: str) -> UserRow:
        if not code or len(code) > 100:
            raise InvalidRequest("'code' is required", param="code")
        async with self._pool.connection() as conn:
            user = await store.redeem(conn, user_id, code_hash(code))
        if user is None:
            raise InvalidRequest("This redeem code is invalid or has already been used.", param="code",
                                 code="invalid_redeem_code")
        return user
