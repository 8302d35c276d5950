"""Group commit in billing (issue 16): holds, settlements and heartbeats queued while billing's
one writer commits are committed together, and every rule one by one keeps holds inside a
batch: a contested account, a key's credit limit, a retried attempt taking its hold over,
settlements charged exactly, a caller gone while its Reserve waits, a replica killed with
batches in flight.

To put many requests in one batch the test makes the writer wait: a transaction of the
test's own locks an account row, a Reserve for that account makes the writer block on it,
and what arrives meanwhile queues (chatkore_billing_queued says how much). Releasing the
lock lets the writer commit the blocked batch, then everything queued as the next one.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from decimal import Decimal

import grpc
import psycopg
import pytest

from chatkore.v1 import billing_pb2, billing_pb2_grpc
from services.billing.batcher import SMALL_BATCH
from services.billing.pricing import Price, TokenRates, Usage, cost, plan_hold
from tests import mock_upstream as up
from tests import scrape
from tests.test_billing_faults import Load, _check_books
from tests.world import World
from tools.stack import Stack, wait_until

MSG = [{"role": "user", "content": "hello"}]
MICRO = 1_000_000


@pytest.fixture(scope="module")
def gc_world(make_stack, mock) -> World:
    return World(make_stack(name="groupcommit", env={"CHATKORE_HOLD_TTL_S": "60"}), mock)


def _billing(world: World) -> billing_pb2_grpc.BillingStub:
    # Holds and charges are inference's to place: the test calls as inference, with its certificate.
    return billing_pb2_grpc.BillingStub(world.stack.grpc_channel("billing", "inference"))


def _rid() -> str:
    return "req_" + secrets.token_hex(8)


def _metric(stack: Stack, name: str, process: str = "billing", **labels: str) -> float:
    return scrape.value(scrape.scrape(stack, process), name, **labels)


def _batches_above(stack: Stack, size: int, process: str = "billing") -> float:
    """How many batches of more than `size` items the writer has committed."""
    samples = scrape.scrape(stack, process)
    total = scrape.value(samples, "chatkore_billing_batch_size_count")
    return total - scrape.value(samples, "chatkore_billing_batch_size_bucket", le=f"{float(size)}")


def _writer_waits_on_a_lock(stack: Stack) -> bool:
    with psycopg.connect(stack.database_url) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'chatkore-billing-writer'"
                            " AND wait_event_type = 'Lock'").fetchone()[0] > 0


@contextmanager
def writer_blocked(world: World, billing: billing_pb2_grpc.BillingStub, model: str,
                   user_id: int | None = None) -> Iterator[None]:
    """The writer blocked inside a batch on an account row the test holds locked (a fresh
    account's, with a Reserve of its own, unless `user_id` names one whose Reserve is the
    caller's); on leaving, the lock goes and the writer commits everything queued."""
    blocker = user_id if user_id is not None else world.user(credits=10)["id"]
    rid = _rid()
    with psycopg.connect(world.stack.database_url) as conn:
        conn.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", (blocker,))
        held: Future | None = None
        if user_id is None:
            held = billing.Reserve.future(billing_pb2.ReserveRequest(
                request_id=rid, user_id=blocker, key_id=0, model=model, prompt_tokens=10,
                max_completion_tokens=10, choices=1))
            wait_until(lambda: _writer_waits_on_a_lock(world.stack), 30, "the writer to block on the locked account")
        try:
            yield
        finally:
            conn.rollback()
    if held is not None:
        assert held.result(30).amount > 0
        billing.Settle(billing_pb2.SettleRequest(request_id=rid, status="client_gone"))


def _queued(world: World, n: int) -> None:
    wait_until(lambda: _metric(world.stack, "chatkore_billing_queued") >= n, 30, f"{n} requests to queue")


def test_many_settlements_in_one_batch_each_charged_exactly(gc_world: World) -> None:
    w = gc_world
    billing = _billing(w)
    model = w.model(prompt=0.7, completion=1.3)  # credits per 1,000 tokens: charges round up to the micro-credit
    rates = TokenRates(700_000, 1_300_000, 700_000, 700_000, 0)
    users = [w.user(credits=50)["id"] for _ in range(3)]
    calls = []
    for i in range(36):
        rid = _rid()
        hold = billing.Reserve(billing_pb2.ReserveRequest(request_id=rid, user_id=users[i % 3], key_id=0, model=model,
                                                          prompt_tokens=40, max_completion_tokens=1000, choices=1))
        calls.append((rid, users[i % 3], Usage(7 + i, 13 * i + 1), hold.amount))
    big_before = _batches_above(w.stack, 32)

    with writer_blocked(w, billing, model):
        settling = [billing.Settle.future(billing_pb2.SettleRequest(
            request_id=rid, usage=billing_pb2.TokenUsage(prompt=u.prompt, completion=u.completion),
            status="complete", usage_source="upstream")) for rid, _, u, _ in calls]
        _queued(w, len(calls))
    settled = [f.result(30) for f in settling]

    assert _batches_above(w.stack, 32) > big_before  # the 36 settlements went as one batch
    expected = {rid: cost(rates, u) for rid, _, u, _ in calls}
    assert all(hold >= expected[rid] for rid, _, _, hold in calls)
    assert {s.request_id: s.charged for s in settled} == expected
    assert all(s.state == "settled" and s.released == hold - expected[rid]
               for s, (rid, _, _, hold) in zip(settled, calls, strict=True))
    for uid in users:
        rows = {r["request_id"]: Decimal(str(r["credits"])) for r in w.usage(uid, limit=100)}
        mine = [rid for rid, owner, _, _ in calls if owner == uid]
        assert rows == {rid: Decimal(expected[rid]) / MICRO for rid in mine}
        assert w.balance(uid) == Decimal(50) - sum(Decimal(expected[rid]) for rid in mine) / MICRO
        assert w.held(uid) == 0
    report = w.verify()
    assert report["ok"], report["problems"]


def _reserve_many(billing: billing_pb2_grpc.BillingStub, user_id: int, model: str, n: int, key_id: int = 0,
                  credit_limit: int = 0, ids: list[str] | None = None) -> list[tuple[str, Future]]:
    return [(rid, billing.Reserve.future(billing_pb2.ReserveRequest(
        request_id=rid, user_id=user_id, key_id=key_id, credit_limit=credit_limit, model=model, prompt_tokens=100,
        max_completion_tokens=100, choices=1))) for rid in (ids or [_rid() for _ in range(n)])]


def _outcomes(calls: list[tuple[str, Future]]) -> tuple[dict[str, billing_pb2.Hold], list[grpc.RpcError]]:
    holds, refused = {}, []
    for rid, f in calls:
        try:
            holds[rid] = f.result(30)
        except grpc.RpcError as exc:
            refused.append(exc)
    return holds, refused


def test_a_contested_account_in_one_batch_never_overdraws(gc_world: World) -> None:
    """Twenty holds on a balance for five and a bit, all in one batch: five get the whole
    hold, the sixth the rest (its budget capped, as one by one), fourteen the 402."""
    w = gc_world
    billing = _billing(w)
    model = w.model(prompt=1, completion=1)
    plan = plan_hold(Price(model, MICRO, MICRO, 0, 128_000, 4096), 100, 100, 1)
    assert (plan.desired, plan.minimum) == (200_000, 101_000)
    uid = w.user(credits=1.15)["id"]  # 5 x 200,000 + 150,000 micro-credits
    big_before = _batches_above(w.stack, 16)

    with writer_blocked(w, billing, model):
        calls = _reserve_many(billing, uid, model, 20)
        _queued(w, 20)
    holds, refused = _outcomes(calls)

    assert _batches_above(w.stack, 16) > big_before
    assert sorted(h.amount for h in holds.values()) == [150_000] + [200_000] * 5
    assert [h.budget_capped for h in holds.values()].count(True) == 1
    assert len(refused) == 14
    assert all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "Your balance cannot cover" in e.details()
               for e in refused)
    assert w.balance(uid) == 0 and w.held(uid) == Decimal("1.15")
    for rid in holds:
        billing.Settle(billing_pb2.SettleRequest(request_id=rid, status="upstream_error"))
    assert w.balance(uid) == Decimal("1.15") and w.held(uid) == 0
    report = w.verify()
    assert report["ok"], report["problems"]


def test_a_key_credit_limit_in_one_batch(gc_world: World) -> None:
    """A rich account, a key limited to 0.55 credits: in one batch of ten holds, two whole, one
    capped to what the limit leaves, seven refused for the key's limit."""
    w = gc_world
    billing = _billing(w)
    model = w.model(prompt=1, completion=1)
    t = w.tenant(credits=100, credit_limit=0.55)

    with writer_blocked(w, billing, model):
        calls = _reserve_many(billing, t.user_id, model, 10, key_id=t.key_id, credit_limit=550_000)
        _queued(w, 10)
    holds, refused = _outcomes(calls)

    assert sorted(h.amount for h in holds.values()) == [150_000, 200_000, 200_000]
    assert len(refused) == 7
    assert all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "credit limit" in e.details() for e in refused)
    assert w.balance(t.user_id) == Decimal("99.45") and w.held(t.user_id) == Decimal("0.55")
    for rid in holds:
        billing.Settle(billing_pb2.SettleRequest(
            request_id=rid, usage=billing_pb2.TokenUsage(prompt=100, completion=20), status="complete"))
    assert w.balance(t.user_id) == Decimal(100) - 3 * Decimal("0.12") and w.held(t.user_id) == 0
    with psycopg.connect(w.stack.database_url) as conn:
        assert conn.execute("SELECT spent, held FROM key_spend WHERE key_id = %s",
                            (t.key_id,)).fetchone() == (360_000, 0)
    report = w.verify()
    assert report["ok"], report["problems"]


def test_a_retried_attempt_takes_its_hold_over_inside_a_batch(gc_world: World) -> None:
    """A retry of a held call (its next try), in one batch with new holds of the same account and a
    settlement: it takes the hold over (held once), the earlier attempt's settlement then moves
    nothing, the retry's charges."""
    w = gc_world
    billing = _billing(w)
    model = w.model(prompt=1, completion=1)
    uid = w.user(credits=10)["id"]
    rid, other = _rid(), _rid()
    first = billing.Reserve(billing_pb2.ReserveRequest(request_id=rid, user_id=uid, key_id=0, model=model,
                                                       prompt_tokens=100, max_completion_tokens=100, choices=1,
                                                       try_number=1))
    billing.Reserve(billing_pb2.ReserveRequest(request_id=other, user_id=uid, key_id=0, model=model,
                                               prompt_tokens=100, max_completion_tokens=100, choices=1))

    with writer_blocked(w, billing, model):
        retry = billing.Reserve.future(billing_pb2.ReserveRequest(
            request_id=rid, user_id=uid, key_id=0, model=model, prompt_tokens=100, max_completion_tokens=100,
            choices=1, try_number=2))
        fresh = _reserve_many(billing, uid, model, 5)
        done = billing.Settle.future(billing_pb2.SettleRequest(
            request_id=other, usage=billing_pb2.TokenUsage(prompt=100, completion=50), status="complete"))
        _queued(w, 7)
    assert retry.result(30).amount == first.amount == 200_000
    holds, refused = _outcomes(fresh)
    assert not refused and all(h.amount == 200_000 for h in holds.values())
    assert done.result(30).charged == 150_000

    assert w.held(uid) == Decimal("1.2")  # the retried hold once, the five new ones
    with psycopg.connect(w.stack.database_url) as conn:
        assert conn.execute("SELECT state, try_number FROM requests WHERE request_id = %s",
                            (rid,)).fetchone() == ("held", 2)
    stale = billing.Settle(billing_pb2.SettleRequest(request_id=rid, usage=billing_pb2.TokenUsage(
        prompt=100, completion=100), status="complete", try_number=1))
    assert (stale.charged, stale.state) == (0, "superseded")
    settled = billing.Settle(billing_pb2.SettleRequest(request_id=rid, usage=billing_pb2.TokenUsage(
        prompt=100, completion=10), status="complete", try_number=2))
    assert settled.charged == 110_000
    for fresh_rid in holds:
        billing.Settle(billing_pb2.SettleRequest(request_id=fresh_rid, status="upstream_error"))
    assert w.balance(uid) == Decimal(10) - Decimal("0.26") and w.held(uid) == 0
    report = w.verify()
    assert report["ok"], report["problems"]


def test_a_debt_is_collected_first_inside_a_batch(gc_world: World) -> None:
    """An account owing credits (what a refund could not take back, migration 0018) gets a
    release and asks for a new hold in one batch: the release pays the debt first, the new
    hold gets only what is left (its budget capped), and the books verify."""
    w = gc_world
    billing = _billing(w)
    model = w.model(prompt=1, completion=1)
    uid = w.user(credits=0.2)["id"]
    rid, later = _rid(), _rid()
    assert billing.Reserve(billing_pb2.ReserveRequest(request_id=rid, user_id=uid, key_id=0, model=model,
                                                      prompt_tokens=100, max_completion_tokens=100,
                                                      choices=1)).amount == 200_000
    with psycopg.connect(w.stack.database_url) as conn:  # a debt of 0.05, as a refund records one
        conn.execute("UPDATE users SET owed = 50000 WHERE id = %s", (uid,))
        conn.execute("INSERT INTO ledger (movement, kind, ref, user_id, account, amount)"
                     " SELECT m, 'refund', 'owed:test', e.u, e.a, e.x FROM nextval('ledger_movement_seq') m,"
                     " (VALUES (%s::bigint, 'owed', -50000), (NULL::bigint, 'funding', 50000)) AS e(u, a, x)", (uid,))
    assert w.verify()["ok"]

    with writer_blocked(w, billing, model):
        settling = billing.Settle.future(billing_pb2.SettleRequest(
            request_id=rid, usage=billing_pb2.TokenUsage(prompt=100, completion=20), status="complete"))
        holding = billing.Reserve.future(billing_pb2.ReserveRequest(
            request_id=later, user_id=uid, key_id=0, model=model, prompt_tokens=10, max_completion_tokens=50,
            choices=1))
        _queued(w, 2)
    assert settling.result(30).charged == 120_000
    hold = holding.result(30)
    assert hold.amount == 30_000 and hold.budget_capped  # 0.08 released, 0.05 of it paid the debt
    with psycopg.connect(w.stack.database_url) as conn:
        assert conn.execute("SELECT balance, held, owed FROM users WHERE id = %s", (uid,)).fetchone() == (0, 30_000, 0)
    billing.Settle(billing_pb2.SettleRequest(request_id=later, status="upstream_error"))
    assert w.balance(uid) == Decimal("0.03") and w.held(uid) == 0
    report = w.verify()
    assert report["ok"], report["problems"]


def _cancelled_reserves(stack: Stack) -> float:
    return _metric(stack, "chatkore_grpc_requests_total", method="chatkore.v1.Billing/Reserve", code="CANCELLED")


async def _leave_after(url_port: int, key: str, model: str, left: asyncio.Event) -> None:
    """A chat call whose client goes away when `left` is set (its own connection)."""
    body = json.dumps({"model": model, "messages": MSG, "max_tokens": 20}).encode()
    _, writer = await asyncio.open_connection("127.0.0.1", url_port)
    writer.write((f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
    await writer.drain()
    await left.wait()
    writer.close()


# Text the writer writes into its statements (its arguments go as literals): quotes, backslashes,
# array syntax, the word NULL, statement separators, non-ASCII.
_AWKWARD = ["NULL", "it's", "back\\slash", "{a,b}", '"quoted"', "x'); DROP TABLE users; --", "模型 ü ",
            "semi;colon", "tab\tand\nnewline"]


def test_awkward_text_reaches_the_books_unchanged(gc_world: World) -> None:
    """Request ids, a model name and a usage source full of what SQL and array literals treat
    specially, held and settled alone, in a small batch (its arguments written into the
    statements) and in a large one (sent apart): every row says exactly what was sent, and the
    books verify."""
    w = gc_world
    billing = _billing(w)
    model = "it's {a,\"b\"}; NULL \\ 模型-" + secrets.token_hex(3)
    w.admin("PUT", f"/admin/v1/prices/{urllib.parse.quote(model, safe='')}", {"prompt": 1, "completion": 1})
    uid = w.user(credits=10)["id"]
    alone = [text + _rid() for text in _AWKWARD[:3]]
    small = [_rid() + _AWKWARD[n % len(_AWKWARD)] for n in range(SMALL_BATCH)]
    large = [_AWKWARD[n % len(_AWKWARD)] + _rid() for n in range(SMALL_BATCH + 1)]
    for rid in alone:
        billing.Reserve(billing_pb2.ReserveRequest(request_id=rid, user_id=uid, key_id=0, model=model,
                                                   prompt_tokens=10, max_completion_tokens=10, choices=1))
    for batch in (small, large):
        with writer_blocked(w, billing, model):
            calls = _reserve_many(billing, uid, model, len(batch), ids=batch)
            _queued(w, len(batch))
        holds, refused = _outcomes(calls)
        assert not refused and sorted(holds) == sorted(batch)

    everything = alone + small + large
    charged = {}
    for batch in (alone, small, large):
        with writer_blocked(w, billing, model):
            settling = [(rid, billing.Settle.future(billing_pb2.SettleRequest(
                request_id=rid, usage=billing_pb2.TokenUsage(prompt=3, completion=everything.index(rid) + 1),
                status="complete", usage_source="upstream 'x' {y}"))) for rid in batch]
            _queued(w, len(batch))
        charged |= {rid: f.result(30).charged for rid, f in settling}
    # One credit per 1,000 tokens: 1,000 micro-credits a token.
    assert charged == {rid: (3 + n + 1) * 1000 for n, rid in enumerate(everything)}

    with psycopg.connect(w.stack.database_url) as conn:
        rows = conn.execute("SELECT request_id, model, state, status, usage_source, completion_tokens FROM requests"
                            " WHERE user_id = %s", (uid,)).fetchall()
    assert {r[0]: r[1:] for r in rows} == {rid: (model, "settled", "complete", "upstream 'x' {y}", n + 1)
                                           for n, rid in enumerate(everything)}
    assert w.held(uid) == 0
    report = w.verify()
    assert report["ok"], report["problems"]


@pytest.mark.parametrize("where", ["queued", "in_the_batch"])
def test_a_call_cancelled_while_its_reserve_waits_for_the_writer(gc_world: World, where: str) -> None:
    """The client leaves while its call's Reserve waits: still queued (it is dropped: nothing
    is held) or taken into the batch the writer is committing (the hold lands and inference
    releases it at once). Either way no hold stays open and nothing is charged."""
    w = gc_world
    billing = _billing(w)
    model, tag = w.served_model()
    w.mock.always(tag, up.ok())
    t = w.tenant(credits=10)
    cancelled = _cancelled_reserves(w.stack)

    async def run() -> None:
        left = asyncio.Event()
        call = asyncio.create_task(_leave_after(w.stack.http_port, t.key, model, left))
        if where == "queued":
            await asyncio.to_thread(_queued, w, 1)
        else:
            await asyncio.to_thread(wait_until, lambda: _writer_waits_on_a_lock(w.stack), 30,
                                    "the writer to block on the caller's account")
        left.set()
        await call
        await asyncio.to_thread(wait_until, lambda: _cancelled_reserves(w.stack) > cancelled, 30,
                                "billing to see the Reserve cancelled")

    with writer_blocked(w, billing, model, user_id=None if where == "queued" else t.user_id):
        asyncio.run(run())

    def rows() -> list[tuple[str, str | None, int]]:
        with psycopg.connect(w.stack.database_url) as conn:
            return conn.execute("SELECT state, status, credits FROM requests WHERE user_id = %s",
                                (t.user_id,)).fetchall()

    if where == "queued":
        assert rows() == []  # never held
    else:
        wait_until(lambda: rows() == [("released", "client_gone", 0)], 30, "inference to release the hold")
    assert w.held(t.user_id) == 0 and w.balance(t.user_id) == 10
    assert w.mock.received(tag) == []  # the call never went upstream
    report = w.verify()
    assert report["ok"], report["problems"]


def test_a_billing_replica_killed_with_batches_in_flight(make_stack, mock) -> None:
    """Two billing replicas under load, each committing batches; one is killed (SIGKILL) with
    a batch in flight: every 200 is charged exactly once, every failure nothing, the books
    verify."""
    stack = make_stack(name="groupcommit-kill", replicas={"billing": 2},
                       env={"CHATKORE_HOLD_TTL_S": "5", "CHATKORE_SWEEP_INTERVAL_S": "0.3"})
    w = World(stack, mock)
    model, tag = w.served_model(prompt=1, completion=1)
    w.mock.always(tag, up.ok(delay_s=0.01))
    t = w.tenant(credits=1000)
    with Load(w, t.key, model, concurrency=24) as load:
        wait_until(lambda: load.count(200) >= 40 and _batches_above(stack, 1, "billing-2") > 0, 60,
                   "load to run, with batches of more than one on the victim")
        stack.kill("billing-2")
        before = load.count(200)
        wait_until(lambda: load.count(200) >= before + 40, 60, "calls to go on succeeding")
    statuses = {s for s, _, _ in load.results}
    assert statuses <= {200, 503}, statuses
    _check_books(w, t.user_id, Decimal(1000), load)
