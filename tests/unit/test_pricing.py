"""The price formula and hold sizing, table-driven."""
from __future__ import annotations

import pytest

from services.billing.pricing import Price, charge, completion_budget, plan_hold

GPT35 = Price("gpt-3.5-turbo", prompt=1_500_000, completion=2_000_000, min_charge=0, context_window=16385,
              max_output_tokens=4096)
ADA = Price("text-embedding-ada-002", prompt=250_000, completion=0, min_charge=4_000_000, context_window=8191,
            max_output_tokens=0)


@pytest.mark.parametrize("pt, ct, expected", [
    (0, 0, 0),                # nothing used, nothing charged
    (1000, 0, 1_500_000),
    (0, 1000, 2_000_000),
    (13, 7, 33_500),          # 0.0195 + 0.014 credits
    (1234, 567, 2_985_000),
])
def test_charge_gpt35(pt, ct, expected) -> None:
    assert charge(GPT35.prompt, GPT35.completion, GPT35.min_charge, pt, ct) == expected


def test_charge_rounds_up_to_the_micro_credit() -> None:
    assert charge(333_333, 0, 0, 1, 0) == 334  # 333.333 micro-credits


def test_embeddings_minimum() -> None:
    assert charge(ADA.prompt, ADA.completion, ADA.min_charge, 8, 0) == 4_000_000
    assert charge(ADA.prompt, ADA.completion, ADA.min_charge, 100_000, 0) == 25_000_000


@pytest.mark.parametrize("prompt, max_tokens, n, limit", [
    (100, 0, 1, 4096),        # no max_tokens: the model's output limit
    (16000, 0, 1, 385),       # ...or what is left of the context
    (100, 50, 1, 50),
    (100, 50, 3, 50),
])
def test_plan_hold(prompt, max_tokens, n, limit) -> None:
    plan = plan_hold(GPT35, prompt, max_tokens, n)
    assert plan.per_choice_limit == limit
    assert plan.desired == charge(GPT35.prompt, GPT35.completion, 0, prompt, limit * n)
    assert plan.minimum == charge(GPT35.prompt, GPT35.completion, 0, prompt, n)


# Amounts at or above each plan's minimum only (a smaller hold is never placed: billing refuses
# it, tests/test_credits.py), so no case returns early. Minimums: 21,500 (13 prompt tokens, one
# choice), 754,000 (500 and two), 9,500 (one and four).
@pytest.mark.parametrize("prompt, n, amount", [
    (13, 1, 21_500), (13, 1, 34_000), (13, 1, 150_000), (13, 1, 2_985_000), (13, 1, 8_342_150),
    (500, 2, 754_000), (500, 2, 1_000_000), (500, 2, 2_985_000), (500, 2, 8_342_150),
    (1, 4, 9_500), (1, 4, 34_000), (1, 4, 150_000), (1, 4, 2_985_000), (1, 4, 8_342_150),
    (1, 4, 10**12),  # more than the whole budget costs: capped at the model's limit
])
def test_budget_never_lets_charge_exceed_hold(prompt: int, n: int, amount: int) -> None:
    plan = plan_hold(GPT35, prompt, 0, n)
    assert amount >= plan.minimum
    budget = completion_budget(GPT35, amount, prompt, n, plan.per_choice_limit)
    assert 1 <= budget <= plan.per_choice_limit
    assert charge(GPT35.prompt, GPT35.completion, 0, prompt, budget * n) <= amount
    if budget < plan.per_choice_limit:  # one more token each would not fit
        assert charge(GPT35.prompt, GPT35.completion, 0, prompt, (budget + 1) * n) > amount
    assert plan.minimum == {(13, 1): 21_500, (500, 2): 754_000, (1, 4): 9_500}[(prompt, n)]


def test_budget_below_the_minimum_is_no_budget() -> None:
    plan = plan_hold(GPT35, 13, 0, 1)
    assert completion_budget(GPT35, plan.minimum - 1, 13, 1, plan.per_choice_limit) < 1


def test_embeddings_hold_is_the_minimum_charge() -> None:
    plan = plan_hold(ADA, 8, 0, 1)
    assert plan.per_choice_limit == 0 and plan.desired == plan.minimum == 4_000_000
