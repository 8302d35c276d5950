"""Billing's one writer (group commit, issue 16): holds, settlements and heartbeats queue up
while the writer commits, and the writer then takes everything queued and commits it on its
own connection, one statement per kind of change.

Nothing waits for a batch to fill: a request that finds the writer idle is committed alone
at once; under load the queue grows while a commit runs, and the next commit takes it all.
Every decision one request at a time would make (how much to hold, what to charge, a late
or superseded settlement) is made here the same way, in the order the requests came, on the
batch's locked rows. A retried try at a call goes the one-by-one way inside the batch,
in a savepoint. One item's refusal never fails the others; a database error fails the
batch's items with UNAVAILABLE, which their callers retry (a statement error is isolated by
committing each item alone).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import psycopg

from services.billing import store
from services.billing.errors import InsufficientQuota, NotFound, Unavailable, quota_refusal
from services.billing.pricing import TokenRates, Usage, cost
from services.common import metrics
from services.common.errors import ServiceError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HoldAsk:
    """A Reserve, its size planned: hold up to `desired`, at least `minimum`."""

    request_id: str
    user_id: int
    key_id: int
    credit_limit: int
    model: str
    rates: TokenRates
    prompt_tokens: int
    desired: int
    minimum: int
    channel_id: int
    try_number: int


@dataclass(frozen=True)
class SettleAsk:
    request_id: str
    usage: Usage  # normalised
    status: str
    usage_source: str
    channel_id: int
    try_number: int
    unbilled: int


@dataclass(frozen=True)
class BeatAsk:
    request_id: str
    try_number: int


Ask = HoldAsk | SettleAsk | BeatAsk


@dataclass(frozen=True)
class Settlement:
    request_id: str
    charged: int
    released: int
    state: str
    unpaid: int = 0


# A Reserve for a call that has a request row already, the one-by-one way (Books._retried):
# the amount held; InsufficientQuota when it cannot be paid for.
Retried = Callable[[psycopg.AsyncConnection, HoldAsk], Awaitable[int | None]]

_UNAVAILABLE = "Billing's database is unavailable; try again shortly."


@dataclass
class _Item:
    ask: Ask | None  # None: a barrier, answered once everything queued before it is committed
    future: asyncio.Future[object]


MAX_BATCH = 512          # holds, settlements and heartbeats one transaction takes at most
SMALL_BATCH = 8          # up to this many, a batch's statements go with their arguments in their text
LOCK_TIMEOUT_MS = 2000   # the writer's wait for a row lock another session holds
RELEASE_TRIES = 20       # a release of a hold whose caller left, tried this often through database outages
RELEASE_RETRY_S = 1.0


class Batcher:
    def __init__(self, conninfo: str, *, hold_ttl_s: int, retried: Retried) -> None:
        self._conninfo = conninfo
        self._ttl_s = hold_ttl_s
        self._retried = retried
        self._queue: list[_Item] = []
        self._wake = asyncio.Event()
        self._conn: psycopg.AsyncConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._running = False  # a batch is being committed
        self._commits = asyncio.Event()  # set (and replaced) at each commit
        self._prepared = True  # small batches run the statements PREPAREd on the connection

    def start(self) -> None:
        self._task = asyncio.create_task(self._write_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(Unavailable("Billing is shutting down; try again."))
        self._queue = []
        if self._conn is not None:
            await self._conn.close()

    async def reserve(self, ask: HoldAsk) -> int:
        """The amount held; InsufficientQuota when the account (or the key's limit) cannot cover
        `minimum`."""
        return await self._submit(ask)  # type: ignore[return-value]

    async def settle(self, ask: SettleAsk) -> Settlement:
        return await self._submit(ask)  # type: ignore[return-value]

    async def keep_alive(self, ask: BeatAsk) -> bool:
        return await self._submit(ask)  # type: ignore[return-value]

    async def committed(self, timeout_s: float) -> None:
        """Return after the writer's next commit, or when `timeout_s` has passed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._commits.wait(), timeout_s)

    async def flushed(self) -> None:
        """Return once everything queued before this call is committed (reads after a settlement
        that reached this process see it)."""
        if self._queue or self._running:
            await self._submit(None)

    def _release(self, hold: HoldAsk, tries_left: int = RELEASE_TRIES) -> None:
        """A hold committed for a caller that had gone meanwhile (its Reserve was cancelled while
        the batch was being written): nobody will use it, so it is released in the next batch,
        as the caller's settlement `client_gone` with nothing used would release it. The
        caller's own release, if it comes, finds it settled (idempotent by request id)."""
        loop = asyncio.get_running_loop()
        item = _Item(SettleAsk(hold.request_id, Usage(), "client_gone", "", hold.channel_id, hold.try_number, 0),
                     loop.create_future())

        def done(future: asyncio.Future[object]) -> None:
            if future.cancelled() or future.exception() is None:
                return
            if isinstance(future.exception(), Unavailable) and tries_left > 1:  # the database, for now
                loop.call_later(RELEASE_RETRY_S, self._release, hold, tries_left - 1)
            else:
                log.warning("release of a hold whose caller left failed: %s; the sweeper will release it",
                            future.exception())

        item.future.add_done_callback(done)
        self._queue.append(item)
        self._wake.set()

    async def _submit(self, ask: Ask | None) -> object:
        # A caller cancelled while its item waits here is dropped from the queue (its future is
        # cancelled with it); once taken, its change commits and, for a hold, _release undoes it.
        item = _Item(ask, asyncio.get_running_loop().create_future())
        self._queue.append(item)
        metrics.BATCH_QUEUE.set(len(self._queue))
        self._wake.set()
        try:
            return await item.future
        except asyncio.CancelledError:
            # Cancelled after its hold was committed, before this task ran again: the answer is lost.
            if (isinstance(ask, HoldAsk) and item.future.done() and not item.future.cancelled()
                    and item.future.exception() is None and isinstance(item.future.result(), int)):
                self._release(ask)
            raise

    async def _write_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._running = True
            try:
                while self._queue:
                    batch, later = _one_per_call(self._queue)
                    self._queue = later
                    metrics.BATCH_QUEUE.set(len(later))
                    await self._commit(batch)
            finally:
                self._running = False

    async def _commit(self, batch: list[_Item]) -> None:
        items = [i for i in batch if i.ask is not None]
        outcomes: list[object] = []
        if items:
            try:
                outcomes = await self._write([i.ask for i in items])  # type: ignore[misc]
            except psycopg.OperationalError as exc:  # the connection, a deadlock, a restart
                log.warning("billing batch of %d failed: %s", len(items), exc)
                await self._drop_broken()
                outcomes = [Unavailable(_UNAVAILABLE)] * len(items)
            except psycopg.errors.InvalidSqlStatementName as exc:
                # The writer's prepared statements are gone from under it: something ran DISCARD
                # or DEALLOCATE on its session, or a pooler in transaction mode lent it another
                # server connection. From now on every batch sends its statements one by one.
                log.warning("billing writer: its prepared statements are gone (%s); it sends each statement"
                            " on its own from now on", exc)
                self._prepared = False
                await self._drop(force=True)
                outcomes = [Unavailable(_UNAVAILABLE)] * len(items)
            except psycopg.Error as exc:
                await self._drop_broken()
                if len(items) > 1:  # one item's bad value: commit each alone, so only it fails
                    for item in items:
                        await self._commit([item])
                    items = []
                else:
                    outcomes = [exc]
            except Exception as exc:  # a bug: only the item that meets it fails (logged, INTERNAL)
                log.exception("billing batch failed")
                await self._drop_broken()
                if len(items) > 1:
                    for item in items:
                        await self._commit([item])
                    items = []
                else:
                    outcomes = [exc]
            else:
                metrics.BATCH_SIZE.observe(len(items))
        for item, outcome in zip(items, outcomes, strict=True):
            if item.future.done():
                if isinstance(item.ask, HoldAsk) and isinstance(outcome, int):
                    self._release(item.ask)
                continue
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)
        for item in batch:
            if item.ask is None and not item.future.done():
                item.future.set_result(None)
        self._commits.set()
        self._commits = asyncio.Event()

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed:
            conn = await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, connect_timeout=5, application_name="chatkore-billing-writer",
                # A user row some other session keeps locked must not stall every call of this
                # process: past this the batch fails UNAVAILABLE and its callers try again.
                options=f"-c lock_timeout={LOCK_TIMEOUT_MS}",
                # psycopg's own prepared statements are off on this connection: having any, it
                # answers each rollback (a refused retry's savepoint, a failed batch) with
                # DEALLOCATE ALL, which would take the writer's PREPAREd statements too.
                prepare_threshold=None)
            if self._prepared:
                try:
                    await conn.execute("; ".join(s.prepare() for s in store.WRITER_STATEMENTS))
                except psycopg.Error as exc:
                    await conn.close()
                    # As the database being away: the batch's callers try again, none is split off.
                    raise psycopg.OperationalError(f"the billing writer's statements cannot be prepared: {exc}") \
                        from exc
            self._conn = conn
        return self._conn

    async def _drop_broken(self) -> None:
        await self._drop(force=False)

    async def _drop(self, *, force: bool) -> None:
        if self._conn is not None and (force or self._conn.broken or self._conn.closed):
            await self._conn.close()
            self._conn = None

    async def _write(self, asks: list[Ask]) -> list[object]:
        """One transaction for the batch; each ask's outcome (a value or an exception), in order."""
        conn = await self._connection()
        tx = _Transaction(conn, small=self._prepared and len(asks) <= SMALL_BATCH)
        try:
            return await self._decide(conn, tx, asks)
        except BaseException:
            await tx.abandon()
            raise

    async def _decide(self, conn: psycopg.AsyncConnection, tx: _Transaction, asks: list[Ask]) -> list[object]:
        out: list[object] = [None] * len(asks)
        holds = [(n, a) for n, a in enumerate(asks) if isinstance(a, HoldAsk)]
        settles = [(n, a) for n, a in enumerate(asks) if isinstance(a, SettleAsk)]
        beats = [(n, a) for n, a in enumerate(asks) if isinstance(a, BeatAsk)]
        closed: list[store.Closing] = []
        superseded: list[tuple[str, int]] = []  # (request id, tokens a superseded try had worked on)
        # BEGIN and both locks in one message; the calls' rows are read on a snapshot taken after
        # the account locks were waited for.
        account_rows, call_rows = await tx.send([
            store.lock_accounts(sorted({a.user_id for _, a in holds}),
                                [a.request_id for _, a in settles] + [a.request_id for _, a in beats]),
            store.lock_calls(sorted(a.request_id for a in asks))])
        accounts = store.accounts_of(account_rows)
        calls = store.calls_of(call_rows)
        balances = {uid: account.balance for uid, account in accounts.items()}
        owed = {uid: account.owed for uid, account in accounts.items()}

        alive = []
        for n, beat in beats:
            call = calls.get(beat.request_id)
            out[n] = call is not None and call.state == "held" and (not beat.try_number
                                                                    or call.try_number == beat.try_number)
            if out[n]:
                alive.append(beat.request_id)
        if alive:
            tx.then(store.extend_holds(alive, self._ttl_s))

        # Settlements before new holds: what they release may pay for a hold in the same batch.
        for n, ask in settles:
            call = calls.get(ask.request_id)
            if call is None:
                out[n] = NotFound(f"No hold for request {ask.request_id}")
                continue
            if call.user_id not in accounts:
                # Its hold was committed (by another writer) after this batch locked the
                # accounts: its owner is not locked here. The caller tries again.
                out[n] = Unavailable(_UNAVAILABLE)
                continue
            out[n], closing = settlement_of(call, ask, balances, owed)
            if closing is not None:
                closed.append(closing)
            elif out[n].state == "superseded":
                worked = ask.usage.prompt + ask.usage.completion + ask.unbilled
                if worked:
                    superseded.append((ask.request_id, worked))
        if closed:
            tx.then(store.close_requests(closed))
        if superseded:
            tx.then(store.add_unbilled(superseded))

        again = [(n, a) for n, a in holds if a.request_id in calls]
        fresh = [(n, a) for n, a in holds if a.request_id not in calls]
        limited = sorted({a.key_id for _, a in fresh if a.credit_limit > 0})
        spent = store.spend_of((await tx.send(store.lock_key_spend(limited)))[-1]) if limited else {}
        placed: list[tuple[int, store.NewHold]] = []
        for n, ask in fresh:
            amount = amount_to_hold(ask, accounts.get(ask.user_id), balances, spent)
            out[n] = amount if amount is not None else refusal(ask, accounts.get(ask.user_id), balances, spent)
            if amount is not None:
                placed.append((n, store.NewHold(
                    ask.request_id, ask.user_id, ask.key_id, ask.credit_limit > 0, ask.model, ask.channel_id,
                    ask.rates, ask.prompt_tokens, amount, ask.try_number)))
        taken_over: list[tuple[int, Ask]] = []  # holds whose row another process placed meanwhile
        if placed:
            # With nothing left to do in this transaction, COMMIT goes in the same message.
            rows, = await tx.send([store.place_holds([h for _, h in placed], self._ttl_s)], commit=not again)
            done = {row[0] for row in rows}
            (again if again else taken_over).extend((n, asks[n]) for n, h in placed if h.request_id not in done)

        if again:
            await tx.send([])  # what is queued goes first: a retried try reads the balance it leaves
        for n, ask in again:  # retried attempts, one by one, each in a savepoint
            out[n] = await self._retry(conn, ask)  # type: ignore[arg-type]
        await tx.commit()
        for n, ask in taken_over:  # after the commit, each in a transaction of its own
            try:
                out[n] = await self._retry(conn, ask)  # type: ignore[arg-type]
            except Exception:  # the batch is committed: only this item fails, and its caller tries again
                log.exception("billing: a hold taken over after its batch failed")
                out[n] = Unavailable(_UNAVAILABLE)
        _count(closed)
        if superseded:
            metrics.UNBILLED.labels("superseded").inc(sum(tokens for _, tokens in superseded))
        return out


    async def _retry(self, conn: psycopg.AsyncConnection, ask: HoldAsk) -> object:
        """A retried try the one-by-one way, in a savepoint (or a transaction of its own outside
        the batch's): the amount held, or why not."""
        try:
            async with conn.transaction():
                return await self._retried(conn, ask)
        except ServiceError as exc:
            return exc


class _Transaction:
    """The batch's transaction on the writer's connection. A small batch's is sent in as few
    messages as its decisions allow: BEGIN goes with the first statements, changes whose
    result nothing reads wait for the next message, and COMMIT goes with the last one (simple
    query protocol: the statements of a message run one after another, each on its own
    snapshot, and the first error stops the rest). A large batch's statements go one by one
    with their arguments apart, where writing its arrays into the text would cost more than
    the round trips it saves."""

    def __init__(self, conn: psycopg.AsyncConnection, small: bool) -> None:
        self._conn = conn
        self._small = small
        self._cursor = psycopg.AsyncClientCursor(conn) if small else psycopg.AsyncRawCursor(conn)
        self._begun = False
        self._done = False
        self._queued: list[store.Step] = []

    def then(self, step: store.Step) -> None:
        """A change whose result nothing reads: it goes with the next message, before that message's statements."""
        self._queued.append(step)

    async def send(self, steps: list[store.Step], *, commit: bool = False) -> list[list[tuple]]:  # type: ignore[type-arg]
        """Run what is queued, then `steps` (and COMMIT if asked); the rows of each of `steps`."""
        if not steps and not self._queued and not commit:
            return []
        queued, self._queued = self._queued, []
        if not self._small:
            return await self._one_by_one(queued, steps, commit)
        parts = (([] if self._begun else ["BEGIN"]) + [s.execute for s, _ in queued + steps]
                 + (["COMMIT"] if commit else []))
        args = [a for _, step_args in queued + steps for a in step_args]
        self._begun = True
        await self._cursor.execute("; ".join(parts), args)
        results: list[list[tuple]] = []  # type: ignore[type-arg]  # one a statement, in order
        while True:
            results.append(await self._cursor.fetchall() if self._cursor.description is not None else [])
            if not self._cursor.nextset():
                break
        if len(results) != len(parts):
            raise RuntimeError(f"billing writer: {len(results)} results for {len(parts)} statements")
        self._done = commit
        first = len(parts) - len(steps) - commit
        return results[first:first + len(steps)]

    async def _one_by_one(self, queued: list[store.Step], steps: list[store.Step],
                          commit: bool) -> list[list[tuple]]:  # type: ignore[type-arg]
        if not self._begun:
            await self._conn.execute("BEGIN")
            self._begun = True
        results: list[list[tuple]] = []  # type: ignore[type-arg]
        for n, (statement, args) in enumerate(queued + steps):
            await self._cursor.execute(statement.typed, args)
            if n >= len(queued):
                results.append(await self._cursor.fetchall() if self._cursor.description is not None else [])
        if commit:
            await self._conn.execute("COMMIT")
        self._done = commit
        return results

    async def commit(self) -> None:
        if not self._done:
            await self.send([], commit=True)

    async def abandon(self) -> None:
        """After an error: the transaction, if one is open, is rolled back (an unusable
        connection is dropped by the caller)."""
        self._done = True
        if self._conn.closed or self._conn.broken:
            return
        if self._conn.pgconn.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):
                await self._conn.execute("ROLLBACK")


def _one_per_call(queue: list[_Item]) -> tuple[list[_Item], list[_Item]]:
    """The next batch (at most one item per request id, callers that left dropped) and what waits
    for the batch after it: a request's second item sees the first's outcome committed."""
    batch: list[_Item] = []
    later: list[_Item] = []
    seen: set[str] = set()
    for item in queue:
        if item.future.done():
            continue
        if item.ask is None:
            # A read's barrier (flushed) waits for everything queued before it, deferred items too.
            (later if later else batch).append(item)
            continue
        if item.ask.request_id in seen or len(seen) >= MAX_BATCH:
            later.append(item)
            continue
        seen.add(item.ask.request_id)
        batch.append(item)
    return batch, later


def amount_to_hold(ask: HoldAsk, account: store.Account | None, balances: dict[int, int],
                 spent: dict[int, int]) -> int | None:
    """What store.reserve would hold for this ask after the batch's earlier holds: up to
    `desired`, what the balance (and the key's limit) can spare, at least `minimum`."""
    if account is None or account.disabled:
        return None
    amount = min(ask.desired, balances[ask.user_id])
    if ask.credit_limit > 0:
        amount = min(amount, ask.credit_limit - spent[ask.key_id])
    if amount < ask.minimum:
        return None
    balances[ask.user_id] -= amount
    if ask.credit_limit > 0:
        spent[ask.key_id] += amount
    return amount


def refusal(ask: HoldAsk, account: store.Account | None, balances: dict[int, int],
            spent: dict[int, int]) -> InsufficientQuota:
    """Why amount_to_hold held nothing: the account, the key's limit, or the balance."""
    disabled = account is None or account.disabled
    return quota_refusal(disabled=disabled, key_limit_reached=not disabled and ask.credit_limit > 0
                         and ask.credit_limit - spent[ask.key_id] < balances[ask.user_id])


def settlement_of(call: store.LockedCall, ask: SettleAsk, balances: dict[int, int],
                owed: dict[int, int]) -> tuple[Settlement, store.Closing | None]:
    """Charge a call's usage (cost() at the rates it was held at) and release the rest of its
    hold. Usage past the hold is charged from the balance as far as it reaches; a call whose
    hold the sweeper released is charged what the balance can pay (`late`). What no one could
    pay is recorded as unpaid, never lost silently. Settling is idempotent by request id.
    `balances` and `owed` follow the batch's changes so far."""
    rid = ask.request_id
    due = cost(call.rates, ask.usage)
    if ask.status == "expired" and not call.overdue:  # a heartbeat moved its deadline since the sweep looked
        return Settlement(rid, 0, 0, call.state), None
    if call.state == "held":
        if ask.try_number and call.try_number != ask.try_number:  # held, but by a later try at the same call
            return Settlement(rid, 0, 0, "superseded"), None
        late, from_held = False, min(due, call.hold)
        released = call.hold - from_held
    elif call.status == "expired" and ask.status != "expired" and due > 0:
        late, from_held, released = True, 0, 0
    else:  # settled already (or released with nothing to charge): idempotent
        return Settlement(rid, call.credits, 0, call.state, call.unpaid), None
    wanted = due - from_held
    from_balance = min(wanted, balances[call.user_id]) if wanted else 0
    balances[call.user_id] += released - from_balance
    if released > from_balance and owed[call.user_id] > 0:
        # As the database's trigger does when a balance rises: a debt is collected first.
        collected = min(owed[call.user_id], balances[call.user_id])
        balances[call.user_id] -= collected
        owed[call.user_id] -= collected
    unpaid = wanted - from_balance
    charged = from_held + from_balance
    closing = store.Closing(rid, ask.usage, ask.status, ask.usage_source, ask.channel_id, from_held, from_balance,
                            released, unpaid, late, ask.unbilled)
    return Settlement(rid, charged, released, "settled" if charged else "released", unpaid), closing


def _count(closed: list[store.Closing]) -> None:
    """Metrics and warnings of committed settlements."""
    for c in closed:
        metrics.CREDITS.labels(c.status).inc((c.from_held + c.from_balance) / 1_000_000)
        if c.unpaid:
            metrics.UNPAID.labels("late" if c.late else "over_hold").inc(c.unpaid / 1_000_000)
            log.warning("usage past what hold and balance could pay",
                        extra={"hold": c.request_id, "unpaid": c.unpaid, "late": c.late})
