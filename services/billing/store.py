"""All of billing's SQL. Money moves in single statements that cannot race."""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from services.billing.pricing import Price, TokenRates, Usage


@dataclass(frozen=True)
class UserRow:
    id: int
    name: str
    balance: int
    held: int
    created: int
    disabled: bool = False
    owed: int = 0  # a debt from refunds, collected first whenever the balance rises (migration 0018)


@dataclass(frozen=True)
class RequestRow:
    request_id: str
    user_id: int
    key_id: int
    model: str
    channel_id: int
    hold: int
    state: str
    status: str
    usage_source: str
    prompt_tokens: int
    completion_tokens: int
    credits: int
    created: int
    try_number: int = 0
    cached_prompt_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    unpaid_credits: int = 0
    late: bool = False


_USER_COLUMNS = "id, name, balance, held, extract(epoch FROM created_at)::bigint AS created, disabled, owed"
_REQUEST_COLUMNS = (
    "request_id, user_id, key_id, model, coalesce(channel_id, 0), hold, state, coalesce(status, ''),"
    " coalesce(usage_source, ''), prompt_tokens, completion_tokens, credits,"
    " extract(epoch FROM created_at)::bigint, try_number, cached_prompt_tokens, cache_write_tokens, reasoning_tokens,"
    " unpaid_credits, late"
)

# Two ledger entries, (account, sign), for each kind of movement that credits a user.
_CREDIT_ENTRIES = "(VALUES ('available', 1), ('funding', -1)) AS e(account, sign)"


async def create_user(conn: AsyncConnection, name: str, credits: int, reference: str | None = None) -> UserRow | None:
    """A new user with `credits` granted; None when `reference` was used before (nothing is made)."""
    cur = await conn.execute(
        f"""
        WITH u AS (
            INSERT INTO users (name, balance, signup_ref) VALUES (%(name)s, %(credits)s, %(ref)s)
            ON CONFLICT (signup_ref) DO NOTHING
            RETURNING {_USER_COLUMNS}
        ), mv AS (
            SELECT nextval('ledger_movement_seq') AS id FROM u WHERE %(credits)s > 0
        ), led AS (
            INSERT INTO ledger (movement, kind, ref, user_id, account, amount)
            SELECT mv.id, 'grant', 'signup:' || u.id, CASE WHEN e.account = 'available' THEN u.id END,
                   e.account, e.sign * %(credits)s
            FROM u, mv, {_CREDIT_ENTRIES}
        )
        SELECT * FROM u
        """,
        {"name": name, "credits": credits, "ref": reference},
    )
    row = await cur.fetchone()
    return UserRow(*row) if row else None


async def user_by_reference(conn: AsyncConnection, reference: str) -> UserRow | None:
    cur = await conn.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE signup_ref = %s", (reference,))
    row = await cur.fetchone()
    return UserRow(*row) if row else None


async def search_users(conn: AsyncConnection, query: str, limit: int) -> list[UserRow]:
    """Users whose id is `query` or whose name contains it (any case); newest first."""
    cur = await conn.execute(
        f"""
        SELECT {_USER_COLUMNS} FROM users
        WHERE %(q)s = '' OR id::text = %(q)s OR strpos(lower(name), lower(%(q)s)) > 0
        ORDER BY id DESC LIMIT %(limit)s
        """,
        {"q": query, "limit": limit},
    )
    return [UserRow(*row) for row in await cur.fetchall()]


async def set_disabled(conn: AsyncConnection, user_id: int, disabled: bool) -> UserRow | None:
    cur = await conn.execute(
        f"UPDATE users SET disabled = %s WHERE id = %s RETURNING {_USER_COLUMNS}", (disabled, user_id)
    )
    row = await cur.fetchone()
    return UserRow(*row) if row else None


async def get_user(conn: AsyncConnection, user_id: int) -> UserRow | None:
    cur = await conn.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE id = %s", (user_id,))
    row = await cur.fetchone()
    return UserRow(*row) if row else None


async def top_up(conn: AsyncConnection, user_id: int, credits: int, reference: str, kind: str) -> UserRow | None:
    """Credit a user once per reference; None when the reference was already used."""
    cur = await conn.execute(
        f"""
        WITH t AS (
            INSERT INTO topups (reference, user_id, credits) VALUES (%(ref)s, %(uid)s, %(credits)s)
            ON CONFLICT (reference) DO NOTHING
            RETURNING user_id, credits
        ), u AS (
            UPDATE users SET balance = users.balance + t.credits FROM t WHERE users.id = t.user_id
            RETURNING {_USER_COLUMNS.replace("id,", "users.id,", 1)}
        ), mv AS (
            SELECT nextval('ledger_movement_seq') AS id FROM u
        ), led AS (
            INSERT INTO ledger (movement, kind, ref, user_id, account, amount)
            SELECT mv.id, %(kind)s, %(ref)s, CASE WHEN e.account = 'available' THEN %(uid)s::bigint END,
                   e.account, e.sign * %(credits)s
            FROM mv, {_CREDIT_ENTRIES}
        )
        SELECT * FROM u
        """,
        {"ref": reference, "uid": user_id, "credits": credits, "kind": kind},
    )
    row = await cur.fetchone()
    return UserRow(*row) if row else None


async def get_topup(conn: AsyncConnection, reference: str) -> tuple[int, int] | None:
    cur = await conn.execute("SELECT user_id, credits FROM topups WHERE reference = %s", (reference,))
    row = await cur.fetchone()
    return (row[0], row[1]) if row else None


# --- prices -----------------------------------------------------------------

_PRICE_COLUMNS = ("model, prompt_price, completion_price, min_charge, context_window, max_output_tokens,"
                  " cached_prompt_price, cache_write_price, tiers, features, units, audio_prompt_price,"
                  " audio_completion_price")


def _price(row: tuple) -> Price:  # type: ignore[type-arg]
    return Price(*row[:8], tiers=dict(row[8] or {}), features=dict(row[9] or {}), units=dict(row[10] or {}),
                 audio_prompt=row[11], audio_completion=row[12])


async def list_prices(conn: AsyncConnection) -> list[Price]:
    cur = await conn.execute(f"SELECT {_PRICE_COLUMNS} FROM models ORDER BY model")
    return [_price(row) for row in await cur.fetchall()]


async def get_price(conn: AsyncConnection, model: str) -> Price | None:
    cur = await conn.execute(f"SELECT {_PRICE_COLUMNS} FROM models WHERE model = %s", (model,))
    row = await cur.fetchone()
    return _price(row) if row else None


async def upsert_price(conn: AsyncConnection, price: Price, keep: frozenset[str]) -> Price:
    """Create or update a price row; the columns named in `keep` (min_charge, cached_prompt,
    cache_write, context, max_output, tiers, features) keep their current value on update."""
    cur = await conn.execute(
        f"""
        INSERT INTO models AS m ({_PRICE_COLUMNS})
        VALUES (%(model)s, %(prompt)s, %(completion)s, %(min_charge)s, %(context)s, %(max_output)s,
                %(cached)s, %(write)s, %(tiers)s, %(features)s, %(units)s, %(audio_in)s, %(audio_out)s)
        ON CONFLICT (model) DO UPDATE SET
            prompt_price = EXCLUDED.prompt_price,
            completion_price = EXCLUDED.completion_price,
            min_charge = CASE WHEN %(keep_min)s THEN m.min_charge ELSE EXCLUDED.min_charge END,
            cached_prompt_price = CASE WHEN %(keep_cached)s THEN m.cached_prompt_price
                                       ELSE EXCLUDED.cached_prompt_price END,
            cache_write_price = CASE WHEN %(keep_write)s THEN m.cache_write_price ELSE EXCLUDED.cache_write_price END,
            context_window = CASE WHEN %(keep_context)s THEN m.context_window ELSE EXCLUDED.context_window END,
            max_output_tokens = CASE WHEN %(keep_output)s THEN m.max_output_tokens
                                     ELSE EXCLUDED.max_output_tokens END,
            tiers = CASE WHEN %(keep_tiers)s THEN m.tiers ELSE EXCLUDED.tiers END,
            features = CASE WHEN %(keep_features)s THEN m.features ELSE EXCLUDED.features END,
            units = CASE WHEN %(keep_units)s THEN m.units ELSE EXCLUDED.units END,
            audio_prompt_price = CASE WHEN %(keep_audio)s THEN m.audio_prompt_price
                                      ELSE EXCLUDED.audio_prompt_price END,
            audio_completion_price = CASE WHEN %(keep_audio)s THEN m.audio_completion_price
                                          ELSE EXCLUDED.audio_completion_price END,
            updated_at = now()
        RETURNING {_PRICE_COLUMNS}
        """,
        {
            "model": price.model, "prompt": price.prompt, "completion": price.completion,
            "min_charge": price.min_charge, "context": price.context_window,
            "max_output": price.max_output_tokens, "cached": price.cached_prompt, "write": price.cache_write,
            "tiers": Jsonb(dict(price.tiers)), "features": Jsonb(dict(price.features)),
            "units": Jsonb(dict(price.units)), "keep_units": "units" in keep,
            "audio_in": price.audio_prompt, "audio_out": price.audio_completion, "keep_audio": "audio" in keep,
            "keep_min": "min_charge" in keep, "keep_cached": "cached_prompt" in keep,
            "keep_write": "cache_write" in keep, "keep_context": "context" in keep,
            "keep_output": "max_output" in keep, "keep_tiers": "tiers" in keep, "keep_features": "features" in keep,
        },
    )
    return _price(await cur.fetchone())


# --- holds and settlement -----------------------------------------------------

# The ledger's two rows for a hold placed by the CTE named req (RETURNING hold).
_HOLD_LEDGER = """
    mv AS (
        SELECT nextval('ledger_movement_seq') AS id FROM req
    ), led AS (
        INSERT INTO ledger (movement, kind, ref, user_id, account, amount)
        SELECT mv.id, 'hold', %(rid)s, %(uid)s, e.account, e.sign * req.hold
        FROM req, mv, (VALUES ('available', -1), ('held', 1)) AS e(account, sign)
    )
    SELECT hold FROM req
"""

_HOLD_INSERT = """
    req AS (
        INSERT INTO requests (request_id, user_id, key_id, model, channel_id, hold,
                              prompt_price, completion_price, min_charge, cached_prompt_price, cache_write_price,
                              audio_prompt_price, audio_completion_price, prompt_tokens, deadline, try_number)
        SELECT %(rid)s, %(uid)s, %(kid)s, %(model)s, NULLIF(%(channel)s, 0), amount,
               %(pp)s, %(cp)s, %(mc)s, %(cpp)s, %(cwp)s, %(app)s, %(acp)s, %(pt)s,
               now() + make_interval(secs => %(ttl)s), %(try)s
        FROM debit
        RETURNING hold
    ),
""" + _HOLD_LEDGER

_RESERVE = """
    WITH debit AS (
        -- Every expression reads the row version being updated (the latest, locked):
        -- the amount can never be computed from an older balance than it is taken from.
        UPDATE users SET
            balance = balance - LEAST(%(desired)s::bigint, balance),
            held = held + LEAST(%(desired)s::bigint, balance),
            last_hold = LEAST(%(desired)s::bigint, balance)
        WHERE id = %(uid)s AND NOT disabled AND balance >= %(minimum)s
        RETURNING last_hold AS amount
    ),
""" + _HOLD_INSERT

# A fixed amount, decided under the row locks of the user (and the key, when it has a limit).
_DEBIT_FIXED = """
    WITH debit AS (
        UPDATE users SET balance = balance - %(amount)s, held = held + %(amount)s, last_hold = %(amount)s
        WHERE id = %(uid)s AND balance >= %(amount)s
        RETURNING last_hold AS amount
    ), kdebit AS (
        UPDATE key_spend k SET held = k.held + debit.amount FROM debit WHERE k.key_id = %(kid)s
    ),
"""

_RESERVE_FIXED = _DEBIT_FIXED + _HOLD_INSERT


async def reserve(conn: AsyncConnection, *, request_id: str, user_id: int, key_id: int, credit_limit: int,
                  model: str, rates: TokenRates, prompt_tokens: int, desired: int, minimum: int, channel_id: int,
                  ttl_s: int, try_number: int = 0) -> int | None:
    """Hold up to `desired` (at least `minimum`) for a call charged at `rates`; the amount
    held, or None if it cannot."""
    params = {
        "rid": request_id, "uid": user_id, "kid": key_id, "model": model, "channel": channel_id,
        "pp": rates.prompt, "cp": rates.completion, "mc": rates.min_charge, "cpp": rates.cached_prompt,
        "cwp": rates.cache_write, "app": rates.audio_prompt, "acp": rates.audio_completion, "pt": prompt_tokens,
        "desired": desired, "minimum": minimum, "ttl": ttl_s, "try": try_number,
    }
    if credit_limit <= 0:
        cur = await conn.execute(_RESERVE, params)
        row = await cur.fetchone()
        return row[0] if row else None
    # A key with a credit limit: take what both the user and the key can spare.
    async with conn.transaction():
        amount = await _lock_amount(conn, user_id, key_id, credit_limit, desired, minimum)
        if amount is None:
            return None
        cur = await conn.execute(_RESERVE_FIXED, {**params, "amount": amount})
        row = await cur.fetchone()
    return row[0] if row else None


async def _lock_amount(conn: AsyncConnection, user_id: int, key_id: int, credit_limit: int, desired: int,
                       minimum: int) -> int | None:
    """Inside a transaction: lock the user's row, then the key's when it has a credit limit (the
    order settlement takes them in, so the two never deadlock); the most both can spare up to
    `desired`, or None if that is below `minimum` (or the user is disabled)."""
    cur = await conn.execute("SELECT balance FROM users WHERE id = %s AND NOT disabled FOR UPDATE", (user_id,))
    user = await cur.fetchone()
    if user is None:
        return None
    room = desired
    if credit_limit > 0:
        await conn.execute("INSERT INTO key_spend (key_id) VALUES (%s) ON CONFLICT DO NOTHING", (key_id,))
        cur = await conn.execute("SELECT %s - spent - held FROM key_spend WHERE key_id = %s FOR UPDATE",
                                 (credit_limit, key_id))
        room = (await cur.fetchone())[0]
    amount = min(desired, user[0], room)
    return amount if amount >= minimum else None


async def take_over(conn: AsyncConnection, request_id: str, user_id: int, try_number: int,
                    ttl_s: int) -> int | None:
    """A retried call claims its open hold for its own try, with a fresh deadline; the amount,
    or None if the hold is not open or a later try holds it."""
    cur = await conn.execute(
        "UPDATE requests SET try_number = %(t)s, deadline = now() + make_interval(secs => %(ttl)s)"
        " WHERE request_id = %(rid)s AND user_id = %(uid)s AND state = 'held' AND try_number <= %(t)s"
        " RETURNING hold",
        {"t": try_number, "rid": request_id, "uid": user_id, "ttl": ttl_s})
    row = await cur.fetchone()
    return row[0] if row else None


_REOPEN = _DEBIT_FIXED + """
    req AS (
        UPDATE requests q SET state = 'held', hold = debit.amount, try_number = %(try)s, status = NULL,
               usage_source = NULL, prompt_tokens = %(pt)s, completion_tokens = 0, credits = 0,
               settled_at = NULL, deadline = now() + make_interval(secs => %(ttl)s)
        FROM debit WHERE q.request_id = %(rid)s AND q.state = 'released' AND q.try_number < %(try)s
        RETURNING q.hold
    ),
""" + _HOLD_LEDGER


class Moved(Exception):
    """The request row is no longer as the caller saw it (another try got there first)."""


async def reopen(conn: AsyncConnection, *, request_id: str, user_id: int, key_id: int, credit_limit: int,
                 prompt_tokens: int, desired: int, minimum: int, ttl_s: int, try_number: int) -> int | None:
    """Hold again for a call whose earlier try released its hold (it failed, or its client
    seemed gone, before a retry of the same call arrived). None if it cannot be paid for;
    Moved if, under its lock, the row is not released by an earlier try any more."""
    async with conn.transaction():
        # The request row first, then the user's, then the key's: the order settlement locks in.
        cur = await conn.execute(
            "SELECT state, try_number FROM requests WHERE request_id = %s AND user_id = %s FOR UPDATE",
            (request_id, user_id))
        row = await cur.fetchone()
        if row is None or row[0] != "released" or not row[1] < try_number:
            raise Moved(request_id)
        amount = await _lock_amount(conn, user_id, key_id, credit_limit, desired, minimum)
        if amount is None:
            return None
        cur = await conn.execute(_REOPEN, {"amount": amount, "uid": user_id, "kid": key_id if credit_limit > 0 else 0,
                                           "try": try_number, "pt": prompt_tokens, "ttl": ttl_s,
                                           "rid": request_id})
        row = await cur.fetchone()
        if row is None:
            # The debit CTEs run whether or not the request row matched: never let them
            # commit without the hold they pay for (the locks above make this unreachable).
            raise Moved(request_id)
    return row[0]


async def key_room(conn: AsyncConnection, key_id: int, credit_limit: int) -> int:
    cur = await conn.execute("SELECT %s - spent - held FROM key_spend WHERE key_id = %s", (credit_limit, key_id))
    row = await cur.fetchone()
    return row[0] if row else credit_limit


async def get_request(conn: AsyncConnection, request_id: str) -> RequestRow | None:
    cur = await conn.execute(f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE request_id = %s", (request_id,))
    row = await cur.fetchone()
    return RequestRow(*row) if row else None


@dataclass(frozen=True)
class OpenCall:
    """A request row locked for its settlement."""

    user_id: int
    key_id: int
    hold: int
    state: str
    status: str
    try_number: int
    credits: int
    unpaid: int
    overdue: bool  # its deadline has passed
    rates: TokenRates


async def lock_request(conn: AsyncConnection, request_id: str) -> OpenCall | None:
    """Inside a transaction: the request row, locked (before the user's row, as reserve locks)."""
    cur = await conn.execute(
        "SELECT user_id, key_id, hold, state, coalesce(status, ''), try_number, credits, unpaid_credits,"
        " deadline < now(), prompt_price, completion_price, cached_prompt_price, cache_write_price, min_charge,"
        " audio_prompt_price, audio_completion_price"
        " FROM requests WHERE request_id = %s FOR UPDATE",
        (request_id,))
    row = await cur.fetchone()
    if row is None:
        return None
    return OpenCall(*row[:9], rates=TokenRates(*row[9:]))  # type: ignore[arg-type]


async def lock_balance(conn: AsyncConnection, user_id: int) -> int:
    cur = await conn.execute("SELECT balance FROM users WHERE id = %s FOR UPDATE", (user_id,))
    return (await cur.fetchone())[0]


_SETTLE = """
    WITH done AS (
        UPDATE requests q SET
            state = CASE WHEN %(charged)s > 0 THEN 'settled' ELSE 'released' END,
            status = %(status)s, usage_source = %(source)s,
            prompt_tokens = %(pt)s, completion_tokens = %(ct)s, cached_prompt_tokens = %(cached)s,
            cache_write_tokens = %(written)s, reasoning_tokens = %(reasoning)s,
            audio_prompt_tokens = %(audio_in)s, audio_completion_tokens = %(audio_out)s,
            credits = %(charged)s, unpaid_credits = %(unpaid)s, late = %(late)s,
            unbilled_tokens = unbilled_tokens + %(unbilled)s,
            channel_id = COALESCE(NULLIF(%(channel)s, 0), q.channel_id), settled_at = now()
        WHERE q.request_id = %(rid)s
        RETURNING q.user_id, q.key_id
    ), acct AS (
        UPDATE users u SET balance = u.balance + %(released)s - %(from_balance)s, held = u.held - %(from_held)s
                                                                                       - %(released)s
        FROM done WHERE u.id = done.user_id
        RETURNING done.key_id
    ), ks AS (
        UPDATE key_spend k SET held = greatest(k.held - %(key_held)s, 0), spent = k.spent + %(charged)s
        FROM acct WHERE k.key_id = acct.key_id
    ), mv AS (
        SELECT nextval('ledger_movement_seq') AS charge_mv, nextval('ledger_movement_seq') AS release_mv
        FROM done
    )
    INSERT INTO ledger (movement, kind, ref, user_id, account, amount)
    SELECT e.movement, e.kind, %(rid)s, e.user_id, e.account, e.amount
    FROM done, mv, LATERAL (VALUES
        (mv.charge_mv, 'charge', done.user_id, 'held', -%(from_held)s::bigint),
        (mv.charge_mv, 'charge', done.user_id, 'available', -%(from_balance)s::bigint),
        (mv.charge_mv, 'charge', NULL::bigint, 'revenue', %(charged)s::bigint),
        (mv.release_mv, 'release', done.user_id, 'held', -%(released)s::bigint),
        (mv.release_mv, 'release', done.user_id, 'available', %(released)s::bigint)
    ) AS e(movement, kind, user_id, account, amount)
    WHERE e.amount <> 0
"""


async def close_request(conn: AsyncConnection, *, request_id: str, usage: Usage, status: str, usage_source: str,
                        channel_id: int, from_held: int, from_balance: int, released: int, unpaid: int,
                        late: bool, unbilled: int = 0) -> None:
    """Inside the transaction that locked the request and user rows: record the call's usage
    and move its money. `from_held` + `from_balance` is charged (from the hold, and from the
    balance past it); `released` goes from the hold back to the balance. A late call (its
    hold already released) has nothing held: its key's held sum is not touched."""
    await conn.execute(_SETTLE, {
        "rid": request_id, "pt": usage.prompt, "ct": usage.completion, "cached": usage.cached_prompt,
        "written": usage.cache_write, "reasoning": usage.reasoning, "audio_in": usage.audio_prompt,
        "audio_out": usage.audio_completion, "status": status, "source": usage_source,
        "channel": channel_id, "charged": from_held + from_balance, "from_held": from_held,
        "from_balance": from_balance, "released": released, "unpaid": unpaid, "late": late,
        "key_held": 0 if late else from_held + released, "unbilled": unbilled,
    })


async def keep_alive(conn: AsyncConnection, request_id: str, try_number: int, ttl_s: int) -> bool:
    """Push an open hold's deadline `ttl_s` from now; False when it is not open (for `try_number`)."""
    cur = await conn.execute(
        "UPDATE requests SET deadline = greatest(deadline, now() + make_interval(secs => %(ttl)s))"
        " WHERE request_id = %(rid)s AND state = 'held' AND (%(t)s = 0 OR try_number = %(t)s) RETURNING 1",
        {"rid": request_id, "t": try_number, "ttl": ttl_s})
    return await cur.fetchone() is not None


# --- holds, settlements and heartbeats in batches (billing's one writer) ------------------
# The writer locks a batch's accounts first (in id order), then its request rows (in id
# order): every writer takes locks in that order, so two billing processes never wait on
# each other in a circle. Decisions are made in Python on the locked rows; each kind of
# change is then one statement over arrays (unnest), whatever the batch's size.


@dataclass(frozen=True)
class Account:
    balance: int
    disabled: bool
    owed: int  # a debt, collected first whenever the balance rises (migration 0018's trigger)


@dataclass(frozen=True)
class Statement:
    """One of the writer's statements. For a small batch it is prepared once on the writer's
    connection (PREPARE) and run by name (EXECUTE) with its arguments written into the text,
    so that several of them, the transaction's BEGIN and its COMMIT go to PostgreSQL in one
    message (one round trip where each used to take its own); each statement in such a
    message gets its own snapshot, as separate round trips would. A large batch's arguments
    go apart from the text (binary, no quoting), a statement a round trip."""

    name: str
    types: tuple[str, ...]
    sql: str

    def prepare(self) -> str:
        return f"PREPARE {self.name}({', '.join(self.types)}) AS {self.sql}"

    @functools.cached_property
    def execute(self) -> str:
        """The statement run by name, its arguments' places marked for psycopg to fill in."""
        return f"EXECUTE {self.name}({', '.join(['%s'] * len(self.types))})"

    @functools.cached_property
    def typed(self) -> str:
        """The statement itself with its parameters typed (`$1::bigint[]`), for sending its
        arguments apart from its text (psycopg's raw cursor)."""
        return re.sub(r"\$(\d+)\b", lambda m: f"{m.group(0)}::{self.types[int(m.group(1)) - 1]}", self.sql)


# A statement with its arguments, ready to be sent.
Step = tuple[Statement, tuple[object, ...]]

# Rows found by the primary key: written `id = ANY($1) OR id IN (...)` it read every user row.
LOCK_ACCOUNTS = Statement("ck_lock_accounts", ("bigint[]", "text[]"), """
    SELECT id, balance, disabled, owed FROM users
    WHERE id IN (SELECT unnest($1) UNION SELECT user_id FROM requests WHERE request_id = ANY($2))
    ORDER BY id FOR UPDATE""")


def lock_accounts(user_ids: list[int], request_ids: list[str]) -> Step:
    """Inside the batch's transaction: the users named and the owners of the requests named,
    locked in id order (rows: accounts_of)."""
    return LOCK_ACCOUNTS, (user_ids, request_ids)


def accounts_of(rows: list[tuple]) -> dict[int, Account]:  # type: ignore[type-arg]
    return {row[0]: Account(*row[1:]) for row in rows}


@dataclass(frozen=True)
class LockedCall(OpenCall):
    request_id: str = ""


LOCK_CALLS = Statement("ck_lock_calls", ("text[]",), """
    SELECT user_id, key_id, hold, state, coalesce(status, ''), try_number, credits, unpaid_credits,
           deadline < now(), prompt_price, completion_price, cached_prompt_price, cache_write_price, min_charge,
           audio_prompt_price, audio_completion_price, request_id
    FROM requests WHERE request_id = ANY($1) ORDER BY request_id FOR UPDATE""")


def lock_calls(request_ids: list[str]) -> Step:
    """Inside the batch's transaction, after lock_accounts (a statement of its own: its snapshot
    is taken after the account locks were waited for): the request rows that exist, locked
    (rows: calls_of)."""
    return LOCK_CALLS, (request_ids,)


def calls_of(rows: list[tuple]) -> dict[str, LockedCall]:  # type: ignore[type-arg]
    return {row[16]: LockedCall(*row[:9], rates=TokenRates(*row[9:16]), request_id=row[16])  # type: ignore[arg-type]
            for row in rows}


ADD_KEY_SPEND = Statement("ck_add_key_spend", ("bigint[]",), """
    INSERT INTO key_spend (key_id) SELECT unnest($1) ON CONFLICT DO NOTHING""")
LOCK_KEY_SPEND = Statement("ck_lock_key_spend", ("bigint[]",), """
    SELECT key_id, spent + held FROM key_spend WHERE key_id = ANY($1) ORDER BY key_id FOR UPDATE""")


def lock_key_spend(key_ids: list[int]) -> list[Step]:
    """Inside the batch's transaction, after lock_accounts: what each key has spent and holds
    (the second statement's rows: spend_of)."""
    return [(ADD_KEY_SPEND, (key_ids,)), (LOCK_KEY_SPEND, (key_ids,))]


def spend_of(rows: list[tuple]) -> dict[int, int]:  # type: ignore[type-arg]
    return {row[0]: row[1] for row in rows}


EXTEND_HOLDS = Statement("ck_extend_holds", ("integer", "text[]"), """
    UPDATE requests SET deadline = greatest(deadline, now() + make_interval(secs => $1))
    WHERE request_id = ANY($2) AND state = 'held'""")


def extend_holds(request_ids: list[str], ttl_s: int) -> Step:
    """Heartbeats: each open hold named gets its deadline `ttl_s` from now (never earlier)."""
    return EXTEND_HOLDS, (ttl_s, request_ids)


@dataclass(frozen=True)
class NewHold:
    """A hold whose amount the writer decided under the account's (and the key's) lock."""

    request_id: str
    user_id: int
    key_id: int
    limited: bool  # the key has a credit limit: its held sum grows too
    model: str
    channel_id: int
    rates: TokenRates
    prompt_tokens: int
    amount: int
    try_number: int


PLACE_HOLDS = Statement("ck_place_holds", (
    "text[]", "bigint[]", "bigint[]", "boolean[]", "text[]", "bigint[]", "bigint[]", "bigint[]", "bigint[]",
    "bigint[]", "bigint[]", "bigint[]", "bigint[]", "integer[]", "bigint[]", "integer[]", "integer"), """
    WITH items AS (
        SELECT * FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
            AS i(rid, uid, kid, limited, model, channel, pp, cp, mc, cpp, cwp, app, acp, pt, amount, try_number)
    ), req AS (
        INSERT INTO requests (request_id, user_id, key_id, model, channel_id, hold,
                              prompt_price, completion_price, min_charge, cached_prompt_price, cache_write_price,
                              audio_prompt_price, audio_completion_price, prompt_tokens, deadline, try_number)
        SELECT rid, uid, kid, model, NULLIF(channel, 0), amount, pp, cp, mc, cpp, cwp, app, acp, pt,
               now() + make_interval(secs => $17), try_number
        FROM items
        ON CONFLICT (request_id) DO NOTHING
        RETURNING request_id, user_id, key_id, hold
    ), per_user AS (
        SELECT user_id, sum(hold)::bigint AS total FROM req GROUP BY user_id
    ), debit AS (
        UPDATE users u SET balance = u.balance - p.total, held = u.held + p.total
        FROM per_user p WHERE u.id = p.user_id
    ), per_key AS (
        -- Every hold of a key that has a spend row (a limit, now or once) counts in its held sum,
        -- as settling takes every hold out of it.
        SELECT req.key_id, sum(req.hold)::bigint AS total FROM req GROUP BY req.key_id
    ), kdebit AS (
        UPDATE key_spend k SET held = k.held + p.total FROM per_key p WHERE k.key_id = p.key_id
    ), mv AS (
        SELECT req.*, nextval('ledger_movement_seq') AS id FROM req
    ), led AS (
        INSERT INTO ledger (movement, kind, ref, user_id, account, amount)
        SELECT mv.id, 'hold', mv.request_id, mv.user_id, e.account, e.sign * mv.hold
        FROM mv, (VALUES ('available', -1), ('held', 1)) AS e(account, sign)
    )
    SELECT request_id FROM req""")


def place_holds(holds: list[NewHold], ttl_s: int) -> Step:
    """Place decided holds: request rows, each account's balance and held sum moved once by
    the total of its holds, each limited key's held sum likewise, two ledger entries a hold.
    Its rows are the request ids placed; one whose row appeared meanwhile (a retry on another
    billing process) is not placed, and nothing moves for it."""
    return PLACE_HOLDS, (
        [h.request_id for h in holds], [h.user_id for h in holds], [h.key_id for h in holds],
        [h.limited for h in holds], [h.model for h in holds], [h.channel_id for h in holds],
        [h.rates.prompt for h in holds], [h.rates.completion for h in holds], [h.rates.min_charge for h in holds],
        [h.rates.cached_prompt for h in holds], [h.rates.cache_write for h in holds],
        [h.rates.audio_prompt for h in holds], [h.rates.audio_completion for h in holds],
        [h.prompt_tokens for h in holds], [h.amount for h in holds], [h.try_number for h in holds], ttl_s)


@dataclass(frozen=True)
class Closing:
    """A settlement the writer decided on its locked request and account rows (see close_request)."""

    request_id: str
    usage: Usage
    status: str
    usage_source: str
    channel_id: int
    from_held: int
    from_balance: int
    released: int
    unpaid: int
    late: bool
    unbilled: int


CLOSE_REQUESTS = Statement("ck_close_requests", (
    "text[]", "text[]", "text[]", "integer[]", "integer[]", "integer[]", "integer[]", "integer[]", "integer[]",
    "integer[]", "bigint[]", "bigint[]", "bigint[]", "bigint[]", "bigint[]", "boolean[]", "bigint[]"), """
    WITH items AS (
        SELECT * FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
            AS i(rid, status, source, pt, ct, cached, written, reasoning, audio_in, audio_out, channel, from_held,
                 from_balance, released, unpaid, late, unbilled)
    ), done AS (
        UPDATE requests q SET
            state = CASE WHEN i.from_held + i.from_balance > 0 THEN 'settled' ELSE 'released' END,
            status = i.status, usage_source = i.source,
            prompt_tokens = i.pt, completion_tokens = i.ct, cached_prompt_tokens = i.cached,
            cache_write_tokens = i.written, reasoning_tokens = i.reasoning,
            audio_prompt_tokens = i.audio_in, audio_completion_tokens = i.audio_out,
            credits = i.from_held + i.from_balance, unpaid_credits = i.unpaid, late = i.late,
            unbilled_tokens = q.unbilled_tokens + i.unbilled,
            channel_id = COALESCE(NULLIF(i.channel, 0), q.channel_id), settled_at = now()
        FROM items i WHERE q.request_id = i.rid
        RETURNING q.request_id, q.user_id, q.key_id, i.from_held, i.from_balance, i.released, i.late
    ), per_user AS (
        SELECT user_id, sum(released - from_balance)::bigint AS back, sum(from_held + released)::bigint AS unheld
        FROM done GROUP BY user_id
    ), acct AS (
        UPDATE users u SET balance = u.balance + p.back, held = u.held - p.unheld
        FROM per_user p WHERE u.id = p.user_id
    ), per_key AS (
        -- A late call (its hold already released) has nothing held: its key's held sum is not touched.
        SELECT key_id, sum(CASE WHEN late THEN 0 ELSE from_held + released END)::bigint AS unheld,
               sum(from_held + from_balance)::bigint AS charged
        FROM done GROUP BY key_id
    ), ks AS (
        -- Never below zero: a hold placed before the key got its limit (and its row) was not in it.
        UPDATE key_spend k SET held = greatest(k.held - p.unheld, 0), spent = k.spent + p.charged
        FROM per_key p WHERE k.key_id = p.key_id
    ), mv AS (
        SELECT done.*, nextval('ledger_movement_seq') AS charge_mv, nextval('ledger_movement_seq') AS release_mv
        FROM done
    )
    INSERT INTO ledger (movement, kind, ref, user_id, account, amount)
    SELECT e.movement, e.kind, mv.request_id, e.user_id, e.account, e.amount
    FROM mv, LATERAL (VALUES
        (mv.charge_mv, 'charge', mv.user_id, 'held', -mv.from_held),
        (mv.charge_mv, 'charge', mv.user_id, 'available', -mv.from_balance),
        (mv.charge_mv, 'charge', NULL::bigint, 'revenue', mv.from_held + mv.from_balance),
        (mv.release_mv, 'release', mv.user_id, 'held', -mv.released),
        (mv.release_mv, 'release', mv.user_id, 'available', mv.released)
    ) AS e(movement, kind, user_id, account, amount)
    WHERE e.amount <> 0""")


def close_requests(closings: list[Closing]) -> Step:
    """Record decided settlements and move their money: the same rows and ledger entries as
    close_request for each, each account and key moved once by its totals."""
    c = closings
    return CLOSE_REQUESTS, (
        [x.request_id for x in c], [x.status for x in c], [x.usage_source for x in c],
        [x.usage.prompt for x in c], [x.usage.completion for x in c], [x.usage.cached_prompt for x in c],
        [x.usage.cache_write for x in c], [x.usage.reasoning for x in c], [x.usage.audio_prompt for x in c],
        [x.usage.audio_completion for x in c], [x.channel_id for x in c], [x.from_held for x in c],
        [x.from_balance for x in c], [x.released for x in c], [x.unpaid for x in c], [x.late for x in c],
        [x.unbilled for x in c])


ADD_UNBILLED = Statement("ck_add_unbilled", ("text[]", "integer[]"), """
    UPDATE requests q SET unbilled_tokens = q.unbilled_tokens + w.tokens
    FROM unnest($1, $2) AS w(rid, tokens) WHERE q.request_id = w.rid""")


def add_unbilled(work: list[tuple[str, int]]) -> Step:
    """Tokens the upstream worked on for a try that a later try superseded: the client pays only
    the try that answered it, the operator's cost of the other is counted on the call's row."""
    return ADD_UNBILLED, ([rid for rid, _ in work], [tokens for _, tokens in work])


WRITER_STATEMENTS = (LOCK_ACCOUNTS, LOCK_CALLS, ADD_KEY_SPEND, LOCK_KEY_SPEND, EXTEND_HOLDS, PLACE_HOLDS,
                     CLOSE_REQUESTS, ADD_UNBILLED)


async def still_held(conn: AsyncConnection, request_ids: list[str]) -> list[str]:
    """Which of these calls still hold credits."""
    cur = await conn.execute("SELECT request_id FROM requests WHERE request_id = ANY(%s::text[]) AND state = 'held'",
                             (request_ids,))
    return [row[0] for row in await cur.fetchall()]


async def overdue_holds(conn: AsyncConnection, limit: int = 200) -> list[str]:
    cur = await conn.execute(
        "SELECT request_id FROM requests WHERE state = 'held' AND deadline < now() ORDER BY deadline LIMIT %s",
        (limit,),
    )
    return [row[0] for row in await cur.fetchall()]


async def open_hold_count(conn: AsyncConnection) -> int:
    cur = await conn.execute("SELECT count(*) FROM requests WHERE state = 'held'")
    return (await cur.fetchone())[0]


# --- usage and reporting ------------------------------------------------------

@dataclass(frozen=True)
class UsageFilter:
    """Which calls a usage listing shows ('' / 0 = any)."""
    user_id: int = 0
    request_id: str = ""
    model: str = ""
    key_id: int = 0
    since: int = 0   # unix seconds, inclusive
    until: int = 0   # unix seconds, exclusive
    status: str = ""


async def list_usage(conn: AsyncConnection, where: UsageFilter, limit: int,
                     after: tuple[int, str] | None = None) -> list[tuple[RequestRow, int]]:
    """Finished calls, newest first, each with its created_at in microseconds (the cursor of
    the next page: rows strictly after `after` = (micros, request_id) in this order)."""
    cur = await conn.execute(
        f"""
        SELECT {_REQUEST_COLUMNS}, (extract(epoch FROM created_at) * 1000000)::bigint FROM requests
        WHERE state <> 'held' AND (%(uid)s = 0 OR user_id = %(uid)s)
          AND (%(rid)s = '' OR request_id = %(rid)s)
          AND (%(model)s = '' OR model = %(model)s)
          AND (%(kid)s = 0 OR key_id = %(kid)s)
          AND (%(status)s = '' OR status = %(status)s)
          AND (%(since)s = 0 OR created_at >= to_timestamp(%(since)s))
          AND (%(until)s = 0 OR created_at < to_timestamp(%(until)s))
          AND (%(after_us)s::bigint IS NULL
               OR (created_at, request_id) < (to_timestamp(0) + %(after_us)s::bigint * interval '1 microsecond',
                                              %(after_rid)s::text))
        ORDER BY created_at DESC, request_id DESC LIMIT %(limit)s
        """,
        {"uid": where.user_id, "rid": where.request_id, "model": where.model, "kid": where.key_id,
         "status": where.status, "since": where.since, "until": where.until, "limit": limit,
         "after_us": after[0] if after else None, "after_rid": after[1] if after else None},
    )
    return [(RequestRow(*row[:-1]), row[-1]) for row in await cur.fetchall()]


async def spend(conn: AsyncConnection, user_id: int, since: int, until: int) -> tuple[int, int]:
    """(credits charged in [since, until), credits ever granted to the user)."""
    cur = await conn.execute(
        """
        SELECT
            (SELECT coalesce(sum(credits), 0)::bigint FROM requests
             WHERE user_id = %(uid)s AND state = 'settled'
               AND created_at >= to_timestamp(%(since)s) AND created_at < to_timestamp(%(until)s)),
            (SELECT coalesce(sum(amount), 0)::bigint FROM ledger
             WHERE user_id = %(uid)s AND account = 'available'
               AND kind IN ('grant', 'topup', 'redeem', 'payment', 'invite', 'refund', 'invite_reversal', 'collect'))
        """,
        {"uid": user_id, "since": since, "until": until},
    )
    row = await cur.fetchone()
    return row[0], row[1]


async def daily_spend(conn: AsyncConnection, user_id: int, days: int) -> list[tuple[str, int, int, int]]:
    """(day, credits, requests, tokens) for each of the last `days` UTC days, today last, gaps as zeros."""
    cur = await conn.execute(
        """
        SELECT to_char(d.day, 'YYYY-MM-DD'), coalesce(sum(r.credits), 0)::bigint, count(r.request_id),
               coalesce(sum(r.prompt_tokens + r.completion_tokens), 0)::bigint
        FROM generate_series((now() AT TIME ZONE 'UTC')::date - (%(days)s - 1), (now() AT TIME ZONE 'UTC')::date,
                             interval '1 day') AS d(day)
        LEFT JOIN requests r ON r.user_id = %(uid)s AND r.state <> 'held'
             AND (r.created_at AT TIME ZONE 'UTC')::date = d.day::date
        GROUP BY d.day ORDER BY d.day
        """,
        {"uid": user_id, "days": days},
    )
    return [(day, credits, requests, tokens) for day, credits, requests, tokens in await cur.fetchall()]


StatRow = tuple[int, str, int, int, int, int, int, int, int]


async def model_stats(conn: AsyncConnection, since: int, bucket_s: int) -> list[StatRow]:
    """(bucket start, model, requests, prompt tokens, completion tokens, credits, errors) since `since`."""
    cur = await conn.execute(
        """
        SELECT (floor(extract(epoch FROM created_at) / %(b)s) * %(b)s)::bigint AS bucket, model, count(*),
               sum(prompt_tokens)::bigint, sum(completion_tokens)::bigint, sum(credits)::bigint,
               count(*) FILTER (WHERE status IS DISTINCT FROM 'complete'),
               sum(unbilled_tokens)::bigint, sum(unpaid_credits)::bigint
        FROM requests
        WHERE created_at >= to_timestamp(%(since)s) AND state <> 'held'
        GROUP BY 1, 2 ORDER BY 1, 2
        """,
        {"since": since, "b": bucket_s},
    )
    return [tuple(row) for row in await cur.fetchall()]  # type: ignore[misc]


async def verify_ledger(conn: AsyncConnection) -> dict[str, object]:
    """Check every invariant of the books; the list of problems is empty when they hold."""
    problems: list[str] = []
    cur = await conn.execute("SELECT count(*), coalesce(sum(amount), 0)::bigint FROM ledger")
    entries, total = await cur.fetchone()
    if total != 0:
        problems.append(f"ledger sums to {total}, not 0")
    cur = await conn.execute(
        "SELECT movement, sum(amount) FROM ledger GROUP BY movement HAVING sum(amount) <> 0 LIMIT 10"
    )
    for movement, amount in await cur.fetchall():
        problems.append(f"movement {movement} sums to {amount}")
    cur = await conn.execute(
        """
        SELECT u.id, u.balance, coalesce(a.s, 0), u.held, coalesce(h.s, 0), coalesce(r.s, 0)
        FROM users u
        LEFT JOIN (SELECT user_id, sum(amount) s FROM ledger WHERE account = 'available' GROUP BY user_id) a
               ON a.user_id = u.id
        LEFT JOIN (SELECT user_id, sum(amount) s FROM ledger WHERE account = 'held' GROUP BY user_id) h
               ON h.user_id = u.id
        LEFT JOIN (SELECT user_id, sum(hold) s FROM requests WHERE state = 'held' GROUP BY user_id) r
               ON r.user_id = u.id
        WHERE u.balance <> coalesce(a.s, 0) OR u.held <> coalesce(h.s, 0) OR u.held <> coalesce(r.s, 0)
        LIMIT 10
        """
    )
    for uid, balance, avail, held, held_sum, open_sum in await cur.fetchall():
        problems.append(
            f"user {uid}: balance {balance} vs ledger {avail}, held {held} vs ledger {held_sum}"
            f" vs open holds {open_sum}"
        )
    cur = await conn.execute(
        """
        SELECT (SELECT coalesce(sum(amount), 0) FROM ledger WHERE account = 'revenue'),
               (SELECT coalesce(sum(credits), 0) FROM requests WHERE state = 'settled')
        """
    )
    revenue, charged = await cur.fetchone()
    if revenue != charged:
        problems.append(f"revenue {revenue} differs from the sum of charges {charged}")
    cur = await conn.execute("SELECT count(*) FROM requests WHERE state = 'held' AND credits <> 0")
    if (bad := (await cur.fetchone())[0]) != 0:
        problems.append(f"{bad} open holds already charged")
    cur = await conn.execute("SELECT count(*) FROM users WHERE balance < 0 OR held < 0 OR owed < 0")
    if (bad := (await cur.fetchone())[0]) != 0:
        problems.append(f"{bad} users with a negative balance")
    # A debt is the negative of the user's `owed` account, and is collected before the
    # balance can rise above zero (migration 0018): never both at once.
    cur = await conn.execute(
        """
        SELECT u.id, u.owed, coalesce(o.s, 0), u.balance
        FROM users u
        LEFT JOIN (SELECT user_id, sum(amount) s FROM ledger WHERE account = 'owed' GROUP BY user_id) o
               ON o.user_id = u.id
        WHERE u.owed <> -coalesce(o.s, 0) OR (u.owed > 0 AND u.balance > 0)
        LIMIT 10
        """
    )
    for uid, owed, ledger_owed, balance in await cur.fetchall():
        if owed != -ledger_owed:
            problems.append(f"user {uid}: owed {owed} vs ledger {-ledger_owed}")
        if owed > 0 and balance > 0:
            problems.append(f"user {uid}: owes {owed} uncollected while the balance is {balance}")
    cur = await conn.execute("SELECT count(*) FROM users")
    users = (await cur.fetchone())[0]
    return {"entries": entries, "ledger_sum": total, "problems": problems, "users": users,
            "open_holds": await open_hold_count(conn)}


# --- redeem codes ----------------------------------------------------------------

async def create_redeem_codes(conn: AsyncConnection, credits: int, code_hashes: list[bytes]) -> None:
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO redeem_codes (code_hash, credits) VALUES (%s, %s)",
            [(h, credits) for h in code_hashes],
        )


async def redeem(conn: AsyncConnection, user_id: int, code_hash: bytes) -> UserRow | None:
    cur = await conn.execute(
        f"""
        WITH c AS (
            UPDATE redeem_codes SET redeemed_by = %(uid)s, redeemed_at = now()
            WHERE code_hash = %(hash)s AND redeemed_by IS NULL
            RETURNING id, credits
        ), u AS (
            UPDATE users SET balance = users.balance + c.credits FROM c WHERE users.id = %(uid)s
            RETURNING {_USER_COLUMNS.replace("id,", "users.id,", 1)}, c.id AS code_id, c.credits
        ), mv AS (
            SELECT nextval('ledger_movement_seq') AS id FROM u
        ), led AS (
            INSERT INTO ledger (movement, kind, ref, user_id, account, amount)
            SELECT mv.id, 'redeem', 'code:' || u.code_id, CASE WHEN e.account = 'available' THEN u.id END,
                   e.account, e.sign * u.credits
            FROM u, mv, {_CREDIT_ENTRIES}
        )
        SELECT id, name, balance, held, created, disabled, owed FROM u
        """,
        {"uid": user_id, "hash": code_hash},
    )
    row = await cur.fetchone()
    return UserRow(*row) if row else None


# --- payment orders ------------------------------------------------------------------


@dataclass(frozen=True)
class OrderRow:
    id: str
    user_id: int
    provider: str
    currency: str
    amount: int
    credits: int
    status: str  # pending, expired (pending past its time), paid, refunded, closed
    pay_url: str
    qr_code: str
    provider_ref: str
    refunded: int
    owed: int
    review: bool
    review_note: str
    created: int
    expires_at: int
    paid_at: int


_ORDER_COLUMNS = (
    "id, user_id, provider, currency, amount, credits,"
    " CASE WHEN status = 'pending' AND expires_at <= now() THEN 'expired' ELSE status END,"
    " pay_url, qr_code, provider_ref, refunded, owed, review, review_note,"
    " extract(epoch FROM created_at)::bigint, floor(extract(epoch FROM expires_at))::bigint,"
    " coalesce(extract(epoch FROM paid_at)::bigint, 0)"
)


async def create_order(conn: AsyncConnection, *, order_id: str, user_id: int, provider: str, currency: str,
                       amount: int, credits: int, ttl_s: int) -> OrderRow:
    cur = await conn.execute(
        f"""
        INSERT INTO orders (id, user_id, provider, currency, amount, credits, expires_at)
        VALUES (%s, %s, %s, %s, %s, %s, now() + make_interval(secs => %s))
        RETURNING {_ORDER_COLUMNS}
        """,
        (order_id, user_id, provider, currency, amount, credits, ttl_s),
    )
    return OrderRow(*await cur.fetchone())


async def set_order_links(conn: AsyncConnection, order_id: str, pay_url: str, qr_code: str,
                          provider_ref: str) -> OrderRow | None:
    cur = await conn.execute(
        f"""
        UPDATE orders SET pay_url = %s, qr_code = %s, provider_ref = %s WHERE id = %s
        RETURNING {_ORDER_COLUMNS}
        """,
        (pay_url, qr_code, provider_ref, order_id),
    )
    row = await cur.fetchone()
    return OrderRow(*row) if row else None


async def get_order(conn: AsyncConnection, order_id: str) -> OrderRow | None:
    cur = await conn.execute(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE id = %s", (order_id,))
    row = await cur.fetchone()
    return OrderRow(*row) if row else None


async def order_by_provider_ref(conn: AsyncConnection, provider: str, ref: str) -> OrderRow | None:
    cur = await conn.execute(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE provider = %s AND provider_ref = %s",
                             (provider, ref))
    row = await cur.fetchone()
    return OrderRow(*row) if row else None


async def list_orders(conn: AsyncConnection, *, user_id: int, status: str, provider: str, review: bool | None,
                      limit: int) -> list[OrderRow]:
    """Newest first; each filter applies when set (user 0, status '' and provider '' are any)."""
    cur = await conn.execute(
        f"""
        SELECT * FROM (SELECT {_ORDER_COLUMNS} FROM orders
                       WHERE (%(uid)s = 0 OR user_id = %(uid)s) AND (%(provider)s = '' OR provider = %(provider)s)
                         AND (%(review)s::boolean IS NULL OR review = %(review)s::boolean)
                       ORDER BY created_at DESC, id) o
        WHERE %(status)s = '' OR o.status = %(status)s
        LIMIT %(limit)s
        """,
        {"uid": user_id, "provider": provider, "status": status, "review": review, "limit": limit},
    )
    return [OrderRow(*row) for row in await cur.fetchall()]


@dataclass(frozen=True)
class Credit:
    """What crediting an order did: `order` when it was paid now, else the status it had."""

    order: OrderRow | None
    status: str  # the order's status before: pending (credited now), paid, refunded, closed; '' if none


async def credit_order(conn: AsyncConnection, order_id: str, provider_ref: str, invite_pct: int) -> Credit:
    """Pay a pending order, in one transaction: the order becomes paid, its credits (less what
    a refund that came first took back) are the top-up `order:<id>` with its ledger entries,
    and on the user's first paid order the inviter gets `invite_pct` percent of them. Any
    other status credits nothing: paid already (a repeated notification; the row lock makes a
    concurrent one wait, then find it paid), refunded before it was paid, or closed."""
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT user_id, status, credits - refunded FROM orders WHERE id = %s FOR UPDATE", (order_id,))
        row = await cur.fetchone()
        if row is None or row[1] != "pending":
            return Credit(None, row[1] if row else "")
        user_id, _, credits = row
        # The buyer and the inviter, locked in id order as billing's writer locks users: never a
        # deadlock with a batch that holds both.
        await conn.execute("SELECT 1 FROM users WHERE id = %s OR id = (SELECT invited_by FROM users WHERE id = %s)"
                           " ORDER BY id FOR UPDATE", (user_id, user_id))
        await conn.execute(
            "UPDATE orders SET status = 'paid', paid_at = now(), credited = %s,"
            " provider_ref = CASE WHEN %s = '' THEN provider_ref ELSE %s END WHERE id = %s",
            (credits, provider_ref, provider_ref, order_id),
        )
        if await top_up(conn, user_id, credits, f"order:{order_id}", "payment") is None:
            raise RuntimeError(f"order {order_id} was credited before it was paid")  # rolls the payment back
        cur = await conn.execute(
            "UPDATE users SET invite_rewarded = true WHERE id = %s AND invited_by IS NOT NULL"
            " AND NOT invite_rewarded RETURNING invited_by",
            (user_id,),
        )
        inviter = await cur.fetchone()
        reward = credits * invite_pct // 100
        if inviter is not None and reward > 0:
            await top_up(conn, inviter[0], reward, f"invite:{user_id}", "invite")
            await conn.execute("UPDATE orders SET inviter = %s, invite_reward = %s WHERE id = %s",
                               (inviter[0], reward, order_id))
        return Credit(await get_order(conn, order_id), "pending")


async def close_order(conn: AsyncConnection, order_id: str) -> bool:
    """A pending order whose trade the provider closed unpaid: it will never be credited."""
    cur = await conn.execute("UPDATE orders SET status = 'closed' WHERE id = %s AND status = 'pending' RETURNING 1",
                             (order_id,))
    return await cur.fetchone() is not None


@dataclass(frozen=True)
class Refund:
    taken: int        # micro-credits taken from the buyer's balance now
    owed: int         # the rest of what was due: the buyer's debt, collected from the next credits
    credited: bool    # False: the order was not credited yet, so the refund only lowers what it will credit
    invite_taken: int = 0  # the inviter's reward taken back, in proportion
    invite_owed: int = 0


async def refund_order(conn: AsyncConnection, order_id: str, target: int, fully: bool) -> Refund | None:
    """Reverse a refunded order's credits up to `target` in all, in one transaction. A credited
    order: the rest due is taken from the buyer's balance (what open holds keep aside is not
    in it), and what the balance cannot cover becomes owed (a ledger debt, collected first from
    the next credits); the inviter's reward for the order goes back in the same proportion,
    under the same rule. An order not credited yet keeps the refund, so a later payment
    notification credits only the rest (nothing once fully refunded). None when nothing more
    was due (a repeated refund notification)."""
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT user_id, status, credits, credited, refunded, paid_at IS NOT NULL, inviter, invite_reward,"
            " invite_reversed FROM orders WHERE id = %s FOR UPDATE",
            (order_id,))
        row = await cur.fetchone()
        if row is None:
            return None
        user_id, status, credits, credited, done, paid, inviter, reward, reversed_ = row
        target = min(target, credits)
        if target <= done:
            return None
        if not paid:
            if status == "closed":  # never paid, never to be: nothing to take back
                return None
            await conn.execute(
                "UPDATE orders SET refunded = %s,"
                " status = CASE WHEN %s AND status = 'pending' THEN 'refunded' ELSE status END WHERE id = %s",
                (target, fully, order_id))
            return Refund(0, 0, credited=False)
        due = target - done
        await conn.execute("SELECT 1 FROM users WHERE id = ANY(%s::bigint[]) ORDER BY id FOR UPDATE",
                           ([u for u in (user_id, inviter) if u is not None],))  # in id order, as the writer
        taken, owed = await _take_back(conn, user_id, due, "refund", f"refund:{order_id}:{target}")
        await conn.execute(
            "UPDATE orders SET refunded = %s, owed = owed + %s,"
            " status = CASE WHEN %s THEN 'refunded' ELSE status END WHERE id = %s",
            (target, owed, fully, order_id))
        refund = Refund(taken, owed, credited=True)
        if inviter is not None and reward > 0 and credited > 0:
            # The share of what the payment credited that refunds have now taken back.
            back = min(max(target - (credits - credited), 0), credited)
            owing = reward * back // credited - reversed_
            if owing > 0:
                i_taken, i_owed = await _take_back(conn, inviter, owing, "invite_reversal",
                                                   f"invite-reversal:{order_id}:{target}")
                await conn.execute("UPDATE orders SET invite_reversed = invite_reversed + %s WHERE id = %s",
                                   (owing, order_id))
                refund = Refund(taken, owed, True, i_taken, i_owed)
        return refund


async def _take_back(conn: AsyncConnection, user_id: int, due: int, kind: str, ref: str) -> tuple[int, int]:
    """Inside a transaction: take `due` credits back from a user — what the balance has now,
    the rest as a debt — in one ledger movement (available -taken, owed -rest, funding +due).
    (taken, owed)."""
    taken = min(due, await lock_balance(conn, user_id))
    rest = due - taken
    await conn.execute(
        """
        WITH u AS (
            UPDATE users SET balance = balance - %(taken)s, owed = owed + %(rest)s WHERE id = %(uid)s RETURNING id
        ), mv AS (
            SELECT nextval('ledger_movement_seq') AS id FROM u
        )
        INSERT INTO ledger (movement, kind, ref, user_id, account, amount)
        SELECT mv.id, %(kind)s, %(ref)s, e.user_id, e.account, e.amount
        FROM mv, (VALUES (%(uid)s::bigint, 'available', -%(taken)s::bigint),
                         (%(uid)s::bigint, 'owed', -%(rest)s::bigint),
                         (NULL::bigint, 'funding', %(due)s::bigint)) AS e(user_id, account, amount)
        WHERE e.amount <> 0
        """,
        {"taken": taken, "rest": rest, "due": due, "uid": user_id, "kind": kind, "ref": ref},
    )
    return taken, rest


async def set_order_review(conn: AsyncConnection, order_id: str, review: bool, note: str) -> OrderRow | None:
    cur = await conn.execute(
        f"UPDATE orders SET review = %s, review_note = %s WHERE id = %s RETURNING {_ORDER_COLUMNS}",
        (review, note, order_id),
    )
    row = await cur.fetchone()
    return OrderRow(*row) if row else None


async def record_notification(conn: AsyncConnection, provider: str, order_id: str, event: str, verdict: str,
                              reason: str) -> None:
    await conn.execute(
        "INSERT INTO payment_notifications (provider, order_id, event, verdict, reason) VALUES (%s, %s, %s, %s, %s)",
        (provider, _text(order_id, 100), _text(event, 100), verdict, _text(reason, 500)),
    )


def _text(value: str, limit: int) -> str:
    """What a hostile notification claimed, storable as text: no NUL, bounded."""
    return value.replace("\x00", "")[:limit]


@dataclass(frozen=True)
class NotificationRow:
    id: int
    provider: str
    order_id: str
    event: str
    verdict: str
    reason: str
    received: int


async def list_notifications(conn: AsyncConnection, order_id: str, limit: int) -> list[NotificationRow]:
    cur = await conn.execute(
        """
        SELECT id, provider, order_id, event, verdict, reason, extract(epoch FROM received_at)::bigint
        FROM payment_notifications WHERE %(oid)s = '' OR order_id = %(oid)s ORDER BY id DESC LIMIT %(limit)s
        """,
        {"oid": order_id, "limit": limit},
    )
    return [NotificationRow(*row) for row in await cur.fetchall()]


# --- invites ---------------------------------------------------------------------------


async def invite_code(conn: AsyncConnection, user_id: int, fresh: str) -> str | None:
    """The user's invite code, `fresh` becoming it the first time; None for no such user."""
    cur = await conn.execute(
        "UPDATE users SET invite_code = coalesce(invite_code, %s) WHERE id = %s RETURNING invite_code",
        (fresh, user_id))
    row = await cur.fetchone()
    return row[0] if row else None


async def invite_stats(conn: AsyncConnection, user_id: int) -> tuple[int, int]:
    """(users this user invited, credits earned by invites)."""
    cur = await conn.execute(
        """
        SELECT (SELECT count(*) FROM users WHERE invited_by = %(uid)s),
               (SELECT coalesce(sum(amount), 0)::bigint FROM ledger
                WHERE user_id = %(uid)s AND account IN ('available', 'owed') AND kind IN ('invite', 'invite_reversal'))
        """,
        {"uid": user_id})
    row = await cur.fetchone()
    return row[0], row[1]


async def accept_invite(conn: AsyncConnection, user_id: int, code: str) -> bool:
    """Record who invited a user (once, never themselves); False for an unknown code."""
    cur = await conn.execute(
        """
        UPDATE users u SET invited_by = i.id FROM users i
        WHERE u.id = %s AND i.invite_code = %s AND i.id <> u.id AND u.invited_by IS NULL
        RETURNING i.id
        """,
        (user_id, code))
    return await cur.fetchone() is not None


# --- low-balance alerts ---------------------------------------------------------------------


@dataclass(frozen=True)
class AlertRow:
    user_id: int
    threshold: int
    below: bool   # fired, not re-armed yet
    owned: int    # balance + held
    lang: str


async def set_alert(conn: AsyncConnection, user_id: int, threshold: int, lang: str) -> None:
    """Set (or clear, with 0) a user's threshold; setting it arms it afresh."""
    await conn.execute(
        "INSERT INTO balance_alerts (user_id, threshold, lang) VALUES (%(uid)s, %(t)s, %(lang)s)"
        " ON CONFLICT (user_id) DO UPDATE SET threshold = excluded.threshold, lang = excluded.lang,"
        " armed = true, updated_at = now()",
        {"uid": user_id, "t": threshold, "lang": lang},
    )


async def get_alert(conn: AsyncConnection, user_id: int) -> AlertRow | None:
    cur = await conn.execute(
        "SELECT u.id, coalesce(a.threshold, 0), coalesce(NOT a.armed AND a.threshold > 0, false),"
        " u.balance + u.held, coalesce(a.lang, 'en')"
        " FROM users u LEFT JOIN balance_alerts a ON a.user_id = u.id WHERE u.id = %s",
        (user_id,),
    )
    row = await cur.fetchone()
    return AlertRow(*row) if row else None


async def take_alerts(conn: AsyncConnection) -> list[AlertRow]:
    """Crossings since the last call, each returned once (the row is disarmed by this very
    statement, so two callers racing cannot both take it); alerts whose balance is back at or
    above the threshold are re-armed. Only committed balances are read: nothing here touches
    the settlement path."""
    cur = await conn.execute(
        """
        WITH rearmed AS (
            UPDATE balance_alerts a SET armed = true FROM users u
            WHERE u.id = a.user_id AND NOT a.armed AND u.balance + u.held >= a.threshold
            RETURNING a.user_id
        )
        UPDATE balance_alerts a SET armed = false, fired_at = now() FROM users u
        WHERE u.id = a.user_id AND a.armed AND a.threshold > 0 AND NOT u.disabled
          AND u.balance + u.held < a.threshold
        RETURNING a.user_id, a.threshold, true, u.balance + u.held, a.lang
        """
    )
    return [AlertRow(*row) for row in await cur.fetchall()]
