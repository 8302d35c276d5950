"""The decisions billing's writer makes for a batch (services/billing/batcher.py), table-driven:
each as one request at a time decides it, following the batch's earlier changes."""
from __future__ import annotations

import pytest

from services.billing.batcher import HoldAsk, SettleAsk, Settlement, amount_to_hold, refusal, settlement_of
from services.billing.pricing import TokenRates, Usage
from services.billing.store import Account, Closing, LockedCall

RATES = TokenRates(1_000_000, 2_000_000, 1_000_000, 1_000_000, 0)  # per 1,000 tokens
USER, KEY = 7, 70


def _ask(desired: int = 200_000, minimum: int = 101_000, credit_limit: int = 0) -> HoldAsk:
    return HoldAsk("r", USER, KEY, credit_limit, "m", RATES, 100, desired, minimum, 0, 1)


def test_holds_in_order_until_the_balance_cannot_then_a_capped_one_then_none() -> None:
    balances, spent = {USER: 550_000}, {}
    amounts = [amount_to_hold(_ask(), Account(550_000, False, 0), balances, spent) for _ in range(5)]
    assert amounts == [200_000, 200_000, 150_000, None, None]
    assert balances == {USER: 0}


def test_a_key_credit_limit_caps_like_the_balance() -> None:
    balances, spent = {USER: 10_000_000}, {KEY: 100_000}  # the key has spent or holds 0.1 of its 0.5
    limited = _ask(credit_limit=500_000)
    amounts = [amount_to_hold(limited, Account(10_000_000, False, 0), balances, spent) for _ in range(4)]
    assert amounts == [200_000, 200_000, None, None]  # 0.4 left: two holds, then 0 < the minimum
    assert spent == {KEY: 500_000} and balances == {USER: 9_600_000}


@pytest.mark.parametrize("account", [None, Account(10_000_000, True, 0)])
def test_no_account_or_a_disabled_one_holds_nothing(account: Account | None) -> None:
    balances = {USER: 10_000_000}
    assert amount_to_hold(_ask(), account, balances, {}) is None
    assert balances == {USER: 10_000_000}


def _call(state: str = "held", status: str = "", hold: int = 200_000, try_number: int = 1, credits: int = 0,
          overdue: bool = False) -> LockedCall:
    return LockedCall(USER, KEY, hold, state, status, try_number, credits, 0, overdue, RATES, request_id="r")


def _settle(prompt: int, completion: int, status: str = "complete", try_number: int = 1) -> SettleAsk:
    return SettleAsk("r", Usage(prompt, completion), status, "upstream", 3, try_number, 0)


@pytest.mark.parametrize("call, ask, balance, settlement, moved", [
    # charged from the hold, the rest released to the balance
    (_call(), _settle(100, 50), 0, Settlement("r", 200_000, 0, "settled"), (200_000, 0, 0, 0, False)),
    (_call(), _settle(100, 20), 0, Settlement("r", 140_000, 60_000, "settled"), (140_000, 0, 60_000, 0, False)),
    # past the hold: from the balance as far as it reaches, the rest unpaid
    (_call(), _settle(100, 100), 50_000, Settlement("r", 250_000, 0, "settled", 50_000), (200_000, 50_000, 0, 50_000,
                                                                                         False)),
    # nothing used: released
    (_call(), _settle(0, 0, "upstream_error"), 0, Settlement("r", 0, 200_000, "released"), (0, 0, 200_000, 0, False)),
    # a later try holds it: nothing moves
    (_call(try_number=2), _settle(100, 20), 0, Settlement("r", 0, 0, "superseded"), None),
    # the sweeper's release of a hold whose heartbeat moved its deadline: nothing moves
    (_call(), _settle(0, 0, "expired"), 0, Settlement("r", 0, 0, "held"), None),
    # swept, then the call's settlement: charged late from the balance
    (_call("released", "expired"), _settle(100, 20), 1_000_000, Settlement("r", 140_000, 0, "settled"),
     (0, 140_000, 0, 0, True)),
    # settled already: the same answer, nothing moves
    (_call("settled", "complete", credits=140_000), _settle(100, 90), 0, Settlement("r", 140_000, 0, "settled"), None),
])
def test_settlements(call: LockedCall, ask: SettleAsk, balance: int, settlement: Settlement,
                     moved: tuple[int, int, int, int, bool] | None) -> None:
    balances, owed = {USER: balance}, {USER: 0}
    got, closing = settlement_of(call, ask, balances, owed)
    assert got == settlement
    if moved is None:
        assert closing is None and balances == {USER: balance}
        return
    assert isinstance(closing, Closing)
    assert (closing.from_held, closing.from_balance, closing.released, closing.unpaid, closing.late) == moved
    assert balances == {USER: balance - closing.from_balance + closing.released}


def test_a_release_pays_a_debt_first_and_the_batch_sees_what_is_left() -> None:
    balances, owed = {USER: 0}, {USER: 50_000}
    settlement_of(_call(), _settle(100, 20), balances, owed)  # 60,000 released
    assert balances == {USER: 10_000} and owed == {USER: 0}
    assert amount_to_hold(_ask(desired=60_000, minimum=11_000), Account(0, False, 50_000), balances, {}) is None
    assert amount_to_hold(_ask(desired=60_000, minimum=10_000), Account(0, False, 50_000), balances, {}) == 10_000


@pytest.mark.parametrize("account, credit_limit, spent, words", [
    (None, 0, 0, "disabled"),
    (Account(0, True, 0), 0, 0, "disabled"),
    (Account(100_000, False, 0), 0, 0, "Your balance cannot cover"),
    (Account(10_000_000, False, 0), 500_000, 450_000, "credit limit"),  # the key, not the balance, is short
    (Account(40_000, False, 0), 500_000, 450_000, "Your balance cannot cover"),  # the balance is shorter still
])
def test_a_refusal_says_why(account: Account | None, credit_limit: int, spent: int, words: str) -> None:
    ask = _ask(credit_limit=credit_limit)
    balances = {USER: account.balance if account else 0}
    assert amount_to_hold(ask, account, balances, {KEY: spent}) is None
    assert words in str(refusal(ask, account, balances, {KEY: spent}))
