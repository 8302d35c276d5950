"""Money that must arrive once, raced: one redeem code claimed by many sessions at the same
instant, one top-up reference sent by many callers at the same instant (DESIGN §5: the same
`reference` twice credits once; a code is redeemed once)."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import psycopg
import requests

from tests.console import ConsoleUser
from tests.world import World

RACERS = 12


def _together(calls: list) -> list[requests.Response]:
    """Run every call at once (released by one barrier), each on a thread of its own."""
    barrier = threading.Barrier(len(calls))

    def run(call) -> requests.Response:  # noqa: ANN001 - a closure
        barrier.wait(30)
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def _ledger(world: World, kind: str, ref: str | None = None, user_ids: list[int] | None = None) -> list[tuple]:
    with psycopg.connect(world.stack.database_url) as conn:
        if ref is not None:
            rows = conn.execute("SELECT movement, user_id, account, amount FROM ledger WHERE kind = %s AND ref = %s",
                                (kind, ref))
        else:
            rows = conn.execute("SELECT movement, user_id, account, amount FROM ledger WHERE kind = %s"
                                " AND movement IN (SELECT movement FROM ledger WHERE user_id = ANY(%s))",
                                (kind, user_ids))
        return rows.fetchall()


def test_one_code_raced_by_many_sessions_credits_one_account_once(world: World) -> None:
    code = world.admin("POST", "/admin/v1/redeem-codes", {"credits": 7.5, "count": 1}, expect=201)["codes"][0]
    accounts = [ConsoleUser(world.url).register() for _ in range(RACERS // 2)]
    # Every account twice: a second session of the same account races its first one too.
    sessions = accounts + [ConsoleUser(world.url, email=a.email).login() for a in accounts]
    answers = _together([lambda s=s: s.call("POST", "/api/redeem", {"code": code}) for s in sessions])

    won = [(s, a) for s, a in zip(sessions, answers, strict=True) if a.status_code == 200]
    assert len(won) == 1, [a.status_code for a in answers]
    refused = [a for a in answers if a.status_code != 200]
    assert [(a.status_code, a.json()["error"]["code"]) for a in refused] == \
        [(400, "invalid_redeem_code")] * (len(sessions) - 1)
    winner, reply = won[0]
    assert reply.json()["balance"] == 107.5
    assert sorted(world.balance(a.user_id) for a in accounts) == [Decimal(100)] * (len(accounts) - 1) + \
        [Decimal("107.5")]
    # One movement in the books: the winner's available up 7.5 credits, funding down as much.
    entries = _ledger(world, "redeem", user_ids=[a.user_id for a in accounts])
    assert len({movement for movement, *_ in entries}) == 1
    assert sorted(((user_id, account, amount) for _, user_id, account, amount in entries), key=repr) == \
        sorted([(winner.user_id, "available", 7_500_000), (None, "funding", -7_500_000)], key=repr)
    assert world.verify()["ok"]


def test_one_topup_reference_raced_by_many_callers_credits_once(world: World) -> None:
    uid = world.user(credits=None)["id"]  # the sign-up bonus: 100
    reference = f"race-{uid}"
    url = f"{world.url}/admin/v1/users/{uid}/topups"
    headers = {"Authorization": f"Bearer {world.stack.admin_key}"}
    answers = _together([lambda: requests.post(url, json={"credits": 12.5, "reference": reference},
                                               headers=headers, timeout=30)] * RACERS)
    # Every caller is told the same: the top-up is in, and the balance it made.
    assert [(a.status_code, a.json()["balance"]) for a in answers] == [(200, 112.5)] * RACERS
    assert world.balance(uid) == Decimal("112.5")
    with psycopg.connect(world.stack.database_url) as conn:
        rows = conn.execute("SELECT user_id, credits FROM topups WHERE reference = %s", (reference,)).fetchall()
    assert rows == [(uid, 12_500_000)]
    entries = _ledger(world, "topup", ref=reference)
    assert len({movement for movement, *_ in entries}) == 1
    assert sorted(((user_id, account, amount) for _, user_id, account, amount in entries), key=repr) == \
        sorted([(uid, "available", 12_500_000), (None, "funding", -12_500_000)], key=repr)
    assert world.verify()["ok"]


def test_one_reference_raced_for_different_accounts_credits_one_of_them(world: World) -> None:
    uids = [world.user(credits=None)["id"] for _ in range(RACERS // 2)]
    reference = f"race-shared-{uids[0]}"
    headers = {"Authorization": f"Bearer {world.stack.admin_key}"}
    answers = _together([lambda u=u: requests.post(f"{world.url}/admin/v1/users/{u}/topups", headers=headers,
                                                   json={"credits": 3, "reference": reference}, timeout=30)
                         for u in uids])
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] + [409] * (len(uids) - 1), [a.text for a in answers]
    [winner] = [u for u, a in zip(uids, answers, strict=True) if a.status_code == 200]
    assert sorted(world.balance(u) for u in uids) == [Decimal(100)] * (len(uids) - 1) + [Decimal(103)]
    assert world.balance(winner) == 103
    with psycopg.connect(world.stack.database_url) as conn:
        rows = conn.execute("SELECT user_id FROM topups WHERE reference = %s", (reference,)).fetchall()
    assert rows == [(winner,)]
    assert len({m for m, *_ in _ledger(world, "topup", ref=reference)}) == 1
    assert world.verify()["ok"]
