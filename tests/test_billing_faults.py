"""Billing survives its own crash and a PostgreSQL restart under load: nothing lost, nothing
charged twice, no hold left open past its deadline; and settlement is idempotent."""
from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
import threading
from decimal import Decimal
from pathlib import Path

import aiohttp
import grpc
import openai
import psycopg
import pytest

from chatkore.v1 import billing_pb2, billing_pb2_grpc
from services.common.migrations import apply_all
from tests import mock_upstream as up
from tests import openai_tokens
from tests.world import World
from tools import pg
from tools.stack import wait_until

MSG = [{"role": "user", "content": "hello"}]
HOLD_TTL_S = 5


@pytest.fixture(scope="module")
def fault_world(make_stack, mock) -> World:
    stack = make_stack(name="faults", env={"CHATKORE_HOLD_TTL_S": str(HOLD_TTL_S),
                                           "CHATKORE_SWEEP_INTERVAL_S": "0.3"})
    return World(stack, mock)


def _billing(world: World) -> billing_pb2_grpc.BillingStub:
    # Holds and charges are inference's to place: the test calls as inference, with its certificate.
    return billing_pb2_grpc.BillingStub(world.stack.grpc_channel("billing", "inference"))


def test_reserve_and_settle_are_idempotent(fault_world: World) -> None:
    w = fault_world
    uid = w.user(credits=10)["id"]
    billing = _billing(w)
    rid = "req_" + secrets.token_hex(8)
    reserve = billing_pb2.ReserveRequest(request_id=rid, user_id=uid, key_id=1, model="gpt-3.5-turbo",
                                         prompt_tokens=100, max_completion_tokens=100, choices=1)
    first, again = billing.Reserve(reserve), billing.Reserve(reserve)
    assert first.amount == again.amount > 0
    assert w.held(uid) * 1_000_000 == first.amount  # held once, not twice
    settle = billing_pb2.SettleRequest(request_id=rid, prompt_tokens=100, completion_tokens=50, status="complete",
                                       usage_source="upstream")
    charged = billing.Settle(settle).charged
    assert charged == (100 * 1_500_000 + 50 * 2_000_000) // 1000
    assert billing.Settle(settle).charged == charged
    assert billing.Settle(billing_pb2.SettleRequest(request_id=rid, prompt_tokens=9999, completion_tokens=9999,
                                                    status="complete")).charged == charged
    assert billing.Reserve(reserve).amount == first.amount  # a late retry holds nothing new
    assert w.held(uid) == 0
    assert w.balance(uid) * 1_000_000 == 10_000_000 - charged
    assert w.verify()["ok"]


def test_sweeper_releases_dead_holds_and_a_late_settle_still_charges(fault_world: World) -> None:
    """Issue 11 changed this contract: a settlement arriving after the sweeper released its
    hold (it used to be refused with HOLD_CLOSED, leaving the call free) charges what the
    balance can pay, once, and the usage row says it was late."""
    w = fault_world
    uid = w.user(credits=10)["id"]
    billing = _billing(w)
    rid = "req_" + secrets.token_hex(8)
    billing.Reserve(billing_pb2.ReserveRequest(request_id=rid, user_id=uid, key_id=1, model="gpt-3.5-turbo",
                                               prompt_tokens=10, max_completion_tokens=10, choices=1))
    assert w.held(uid) > 0
    wait_until(lambda: w.held(uid) == 0, HOLD_TTL_S + 10, "the sweeper to release the dead hold")
    assert w.balance(uid) == 10
    settle = billing_pb2.SettleRequest(request_id=rid, prompt_tokens=10, completion_tokens=10, status="complete")
    first = billing.Settle(settle)
    assert first.charged == (10 * 1_500_000 + 10 * 2_000_000) // 1000 and first.unpaid == 0
    assert billing.Settle(settle).charged == first.charged  # idempotent
    assert w.balance(uid) * 1_000_000 == 10_000_000 - first.charged
    # Reading usage is the edge's call (services/common/mtls.py), not inference's.
    as_edge = billing_pb2_grpc.BillingStub(w.stack.grpc_channel("billing", "edge"))
    row = as_edge.ListUsage(billing_pb2.ListUsageRequest(request_id=rid)).rows[0]
    assert row.late and row.status == "complete" and row.credits == first.charged
    assert w.verify()["ok"]


class Load:
    """Requests from a background thread until told to stop; every outcome recorded. A request
    that gets no HTTP answer at all (a dropped connection, a body that is not JSON) stops the
    load and fails the test: the edge must answer every call, whatever is down behind it."""

    def __init__(self, world: World, key: str, model: str, concurrency: int = 8) -> None:
        self.world, self.key, self.model, self.concurrency = world, key, model, concurrency
        self.results: list[tuple[int, str, dict]] = []  # (status, request id, body)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def count(self, status: int) -> int:
        self.check()
        return sum(1 for s, _, _ in list(self.results) if s == status)

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"the load stopped after {len(self.results)} calls: {self.error!r}") \
                from self.error

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported by count() and on exit, in the test's thread
            self.error = exc
            self._stop.set()

    async def _run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60),
                                         headers={"Authorization": f"Bearer {self.key}"}) as session:
            async def worker() -> None:
                while not self._stop.is_set():
                    async with session.post(self.world.url + "/v1/chat/completions",
                                            json={"model": self.model, "messages": MSG, "max_tokens": 20}) as resp:
                        self.results.append((resp.status, resp.headers.get("x-request-id", ""), await resp.json()))

            await asyncio.gather(*(worker() for _ in range(self.concurrency)))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)
        assert not self._thread.is_alive(), "the load did not stop within 120 s"
        if exc_type is None:
            self.check()


def _check_books(world: World, user_id: int, initial: Decimal, load: Load) -> None:
    """Every 200 charged exactly once, every failure charged nothing, the ledger whole."""
    wait_until(lambda: world.verify()["open_holds"] == 0, HOLD_TTL_S + 20, "every hold to close")
    ok_ids = {rid for status, rid, _ in load.results if status == 200}
    failed_ids = {rid for status, rid, _ in load.results if status != 200}

    def unsettled() -> int:
        with psycopg.connect(world.stack.database_url) as conn:
            return conn.execute("SELECT count(*) FROM requests WHERE request_id = ANY(%s) AND state <> 'settled'",
                                (list(ok_ids),)).fetchone()[0]

    # A 200 whose settlement met billing down is settled by inference's retries; if the sweeper
    # released its hold meanwhile, the retry still charges it (a late settlement, issue 11).
    wait_until(lambda: unsettled() == 0, 60, "every answered call to be settled")
    with psycopg.connect(world.stack.database_url) as conn:
        rows = {r[0]: r[1:] for r in conn.execute(
            "SELECT request_id, state, credits FROM requests WHERE user_id = %s", (user_id,))}
        overdue = conn.execute("SELECT count(*) FROM requests WHERE state = 'held'"
                               " AND deadline < now() - interval '3 seconds'").fetchone()[0]
    assert overdue == 0
    unpaid = [(rid, rows.get(rid)) for rid in ok_ids if rid not in rows or rows[rid][0] != "settled"
              or rows[rid][1] <= 0]
    assert unpaid == []  # every answered call charged
    assert all(rid not in rows or rows[rid][1] == 0 for rid in failed_ids)
    assert len([r for r in rows.values() if r[0] == "settled"]) == len(ok_ids)
    charged = sum(r[1] for r in rows.values())
    assert initial * 1_000_000 - world.balance(user_id) * 1_000_000 == charged
    report = world.verify()
    assert report["ok"], report["problems"]


def _clean_503(body: dict) -> bool:
    error = body.get("error", {})
    return set(error) == {"message", "type", "param", "code"} and error["type"] == "server_error"


def test_billing_killed_under_load(fault_world: World) -> None:
    w = fault_world
    model, _ = w.served_model(prompt=1, completion=1)
    t = w.tenant(credits=1000)
    with Load(w, t.key, model) as load:
        wait_until(lambda: load.count(200) >= 20, 30, "load to run")
        w.stack.kill("billing")
        wait_until(lambda: load.count(503) >= 5, 30, "calls to fail while billing is down")
        w.stack.start_process("billing")
        before = load.count(200)
        wait_until(lambda: load.count(200) >= before + 30, 60, "calls to succeed again")
    statuses = {s for s, _, _ in load.results}
    assert statuses <= {200, 503}, statuses
    assert all(_clean_503(body) for s, _, body in load.results if s == 503)
    _check_books(w, t.user_id, Decimal(1000), load)


def test_postgres_restart_under_load(make_stack, mock) -> None:
    # A server of its own: restarting the session's would disturb other tests.
    datadir = Path(tempfile.mkdtemp(prefix="ckpgr-"))
    url, server = pg.embedded(datadir / "pg", cleanup="delete")
    stack = None
    try:
        database = pg.ensure_database(url, "chatkore")
        apply_all(database)
        stack = make_stack(database_url=database, name="pg-restart")
        w = World(stack, mock)
        model, _ = w.served_model(prompt=1, completion=1)
        t = w.tenant(credits=1000)
        from pgserver._commands import pg_ctl

        with Load(w, t.key, model, concurrency=4) as load:
            wait_until(lambda: load.count(200) >= 20, 30, "load to run")
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
            wait_until(lambda: load.count(503) >= 5, 30, "calls to fail while PostgreSQL is down")
            server.ensure_postgres_running()
            restarted_at = len(load.results)
            wait_until(lambda: load.count(200) >= 60 and len(load.results) > restarted_at + 40, 60,
                       "calls to succeed again")
        statuses = [s for s, _, _ in load.results]
        assert set(statuses) <= {200, 503}, set(statuses)
        assert all(_clean_503(body) for s, _, body in load.results if s == 503)
        assert statuses[-20:] == [200] * 20  # later ones succeed
        _check_books(w, t.user_id, Decimal(1000), load)
    finally:
        if stack is not None:
            stack.stop()
        server.cleanup()
        shutil.rmtree(datadir, ignore_errors=True)


def test_inference_killed_mid_stream_leaves_no_hold(fault_world: World) -> None:
    w = fault_world
    model, tag = w.served_model(prompt=1, completion=1)
    from tests import mock_upstream as up

    rest = w.mock.gate()  # after the role chunk the upstream holds the stream until inference is gone
    w.mock.always(tag, up.ok(pieces=40, gate_each=rest))
    t = w.tenant(credits=10)
    try:
        stream = t.client.chat.completions.create(model=model, messages=MSG, stream=True)
        next(iter(stream))
        wait_until(lambda: rest.arrived == 1, 10, "the upstream to hold the rest of the stream")
        assert w.held(t.user_id) > 0
        w.stack.kill("inference")  # the process that would have settled is gone
        with pytest.raises(openai.APIError):  # the in-band error event, or the broken connection
            for _ in stream:
                pass
        assert rest.passed == 0  # killed mid-stream: the upstream still held the rest
    finally:
        rest.open()
    w.stack.start_process("inference")
    wait_until(lambda: w.held(t.user_id) == 0, HOLD_TTL_S + 10, "the sweeper to release the orphaned hold")
    [row] = w.usage(t.user_id)
    assert row["status"] == "expired" and row["credits"] == 0
    assert w.balance(t.user_id) == 10
    w.stack.wait_healthy(30)
    assert w.verify()["ok"]


def test_a_retried_call_takes_its_hold_over_or_places_it_again(fault_world: World) -> None:
    """The edge may retry a call on another replica under the same request id: the retry's
    attempt takes the hold over, a superseded attempt's settlement moves nothing, and a hold
    an earlier attempt released is placed again — so the answer the client gets is paid once."""
    w = fault_world
    uid = w.user(credits=10)["id"]
    billing = _billing(w)

    def reserve(rid: str, try_number: int) -> int:
        return billing.Reserve(billing_pb2.ReserveRequest(
            request_id=rid, user_id=uid, key_id=1, model="gpt-3.5-turbo", prompt_tokens=100,
            max_completion_tokens=100, choices=1, try_number=try_number)).amount

    def settle(rid: str, try_number: int, completion: int) -> billing_pb2.Settlement:
        return billing.Settle(billing_pb2.SettleRequest(
            request_id=rid, prompt_tokens=100 if completion else 0, completion_tokens=completion,
            status="complete" if completion else "client_gone", usage_source="upstream", try_number=try_number))

    # Taken over: the first attempt's late release is superseded; the retry's settlement charges.
    rid = "req_" + secrets.token_hex(8)
    amount = reserve(rid, 1)
    assert reserve(rid, 2) == amount and w.held(uid) * 1_000_000 == amount
    # Only the try holding the hold keeps it alive (the earlier try's heartbeat stops).
    assert not billing.KeepAlive(billing_pb2.KeepAliveRequest(request_id=rid, try_number=1)).alive
    assert billing.KeepAlive(billing_pb2.KeepAliveRequest(request_id=rid, try_number=2)).alive
    assert settle(rid, 1, 0).state == "superseded"
    assert w.held(uid) * 1_000_000 == amount  # still held, for try 2
    charged = settle(rid, 2, 50).charged
    assert charged == (100 * 1_500_000 + 50 * 2_000_000) // 1000
    assert w.balance(uid) * 1_000_000 == 10_000_000 - charged

    # Placed again: the first attempt released its hold before the retry reserved.
    rid = "req_" + secrets.token_hex(8)
    reserve(rid, 1)
    assert settle(rid, 1, 0).state == "released"
    assert reserve(rid, 2) > 0 and w.held(uid) > 0
    assert settle(rid, 2, 50).charged == charged
    assert w.held(uid) == 0
    assert w.balance(uid) * 1_000_000 == 10_000_000 - 2 * charged
    [row] = [r for r in w.usage(uid) if r["request_id"] == rid]
    assert row["status"] == "complete" and row["completion_tokens"] == 50

    # Stale: an attempt older than the one holding the call (its Reserve arrived late) can
    # neither take the newer attempt's hold nor place one again once the newer released it.
    rid = "req_" + secrets.token_hex(8)
    amount = reserve(rid, 2)
    with pytest.raises(grpc.RpcError) as stale:
        reserve(rid, 1)
    assert stale.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert settle(rid, 1, 50).state == "superseded"
    assert w.held(uid) * 1_000_000 == amount
    assert settle(rid, 2, 0).state == "released"
    with pytest.raises(grpc.RpcError):
        reserve(rid, 1)
    assert w.held(uid) == 0 and w.balance(uid) * 1_000_000 == 10_000_000 - 2 * charged
    # What the superseded try had the upstream do (100 prompt + 50 completion tokens) is free for
    # the client but counted for the operator on the call's row.
    with psycopg.connect(w.stack.database_url) as conn:
        [(unbilled,)] = conn.execute("SELECT unbilled_tokens FROM requests WHERE request_id = %s", (rid,)).fetchall()
    assert unbilled == 150

    # Answered: a call settled with a charge is never held again — neither a later try (its
    # Reserve would otherwise get a hold that no longer exists and run upstream for free) nor
    # a repeat of the same try.
    rid = "req_" + secrets.token_hex(8)
    reserve(rid, 1)
    assert settle(rid, 1, 50).charged == charged
    balance = w.balance(uid)
    for try_number in (2, 1):
        with pytest.raises(grpc.RpcError) as answered:
            reserve(rid, try_number)
        assert answered.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert w.balance(uid) == balance and w.held(uid) == 0
    assert settle(rid, 2, 50).charged == charged  # idempotent: the one charge, not a second
    assert w.balance(uid) == balance
    assert w.verify()["ok"]


def test_a_retry_that_finds_the_row_moved_on_under_its_lock_moves_no_money(fault_world: World) -> None:
    """A retry about to place a released hold again waits for the row's lock; meanwhile a later
    attempt re-held and released it. Under the lock the retry must see it is stale and move
    nothing (the debit must never commit without the hold it pays for)."""
    w = fault_world
    uid = w.user(credits=10)["id"]
    billing = _billing(w)
    rid = "req_" + secrets.token_hex(8)
    call = dict(request_id=rid, user_id=uid, key_id=1, model="gpt-3.5-turbo", prompt_tokens=100,
                max_completion_tokens=100, choices=1)
    billing.Reserve(billing_pb2.ReserveRequest(**call, try_number=1))
    assert billing.Settle(billing_pb2.SettleRequest(request_id=rid, status="client_gone", try_number=1)).state \
        == "released"
    outcome: list[grpc.RpcError | int] = []

    def retry() -> None:
        try:
            outcome.append(billing.Reserve(billing_pb2.ReserveRequest(**call, try_number=2)).amount)
        except grpc.RpcError as exc:
            outcome.append(exc)

    with psycopg.connect(w.stack.database_url) as conn:
        conn.execute("SELECT 1 FROM requests WHERE request_id = %s FOR UPDATE", (rid,))
        thread = threading.Thread(target=retry)
        thread.start()

        def waiting_on_the_row() -> bool:  # a session waits for a lock this one holds: the row's
            with psycopg.connect(w.stack.database_url, autocommit=True) as probe:
                return probe.execute("SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                                     (conn.info.backend_pid,)).fetchone()[0] > 0

        wait_until(waiting_on_the_row, 15, "the retry to wait for the request row")
        # What a later try 3 leaves behind once it has held the call again and released it.
        conn.execute("UPDATE requests SET try_number = 3 WHERE request_id = %s", (rid,))
        conn.commit()
    thread.join(15)
    [result] = outcome
    assert isinstance(result, grpc.RpcError) and result.code() == grpc.StatusCode.ALREADY_EXISTS
    assert w.held(uid) == 0 and w.balance(uid) == 10
    assert w.verify()["ok"]


def test_a_stream_outliving_the_hold_ttl_keeps_its_hold_and_is_charged(fault_world: World) -> None:
    """The relay's heartbeat pushes a live call's hold deadline forward, so the sweeper (every
    0.3 s here, holds of 5 s) leaves it alone however long the stream runs (issue 11)."""
    w = fault_world
    model, tag = w.served_model(prompt=1, completion=1)
    pieces = 2 * HOLD_TTL_S * 4  # at 0.25 s each: twice the hold's lifetime
    w.mock.always(tag, up.ok(delay_s=0.25, pieces=pieces))
    t = w.tenant(credits=10)
    stream = t.client.chat.completions.create(model=model, messages=MSG, stream=True)
    chunks = [c for c in stream if c.choices and c.choices[0].delta.content]
    assert len(chunks) * 0.25 > 1.5 * HOLD_TTL_S  # the mock's own pace made the stream outlive the hold
    text = "".join(c.choices[0].delta.content for c in chunks)
    [row] = w.usage(t.user_id)
    assert row["status"] == "complete" and not row["late"]
    # 1 credit per 1,000 tokens either way: the cookbook's prompt count and the answer's tokens.
    prompt, completion = openai_tokens.chat_prompt_tokens(MSG, model), openai_tokens.text_tokens(text, model)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, completion)
    assert Decimal(str(row["credits"])) == Decimal(prompt + completion) / 1000
    assert w.held(t.user_id) == 0 and w.verify()["ok"]


def test_a_key_whose_limit_came_and_went_still_pays_for_its_calls(fault_world: World) -> None:
    """A key that once had a credit limit keeps its spend row. Its calls without a limit (the
    operator lifted it), and a call held before the limit came, still settle and are charged:
    settling must not take out of the key's held sum what placing never put in."""
    w = fault_world
    uid = w.user(credits=10)["id"]
    billing = _billing(w)
    key_id = 900_000 + secrets.randbelow(99_999)

    def reserve(rid: str, credit_limit: int) -> None:
        billing.Reserve(billing_pb2.ReserveRequest(
            request_id=rid, user_id=uid, key_id=key_id, credit_limit=credit_limit, model="gpt-3.5-turbo",
            prompt_tokens=100, max_completion_tokens=100, choices=1, try_number=1))

    def settle(rid: str) -> int:
        return billing.Settle(billing_pb2.SettleRequest(
            request_id=rid, status="complete", usage_source="upstream", try_number=1,
            usage=billing_pb2.TokenUsage(prompt=100, completion=50))).charged

    one = (100 * 1_500_000 + 50 * 2_000_000) // 1000
    before = "req_" + secrets.token_hex(8)
    reserve(before, 0)                      # held before the key had a limit (no spend row yet)
    limited = "req_" + secrets.token_hex(8)
    reserve(limited, 5_000_000)             # the limit comes: the key's spend row with this hold
    assert settle(before) == one            # not taken out of a held sum it was never in
    assert settle(limited) == one
    lifted = "req_" + secrets.token_hex(8)
    reserve(lifted, 0)                      # the limit is lifted; the spend row stays
    assert settle(lifted) == one
    assert w.balance(uid) * 1_000_000 == 10_000_000 - 3 * one and w.held(uid) == 0
    with psycopg.connect(w.stack.database_url) as conn:
        [(held, spent)] = conn.execute("SELECT held, spent FROM key_spend WHERE key_id = %s", (key_id,)).fetchall()
    assert (held, spent) == (0, 3 * one)
    assert w.verify()["ok"]
