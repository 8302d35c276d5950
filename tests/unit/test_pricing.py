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


@pytest.mark.parametrize("amount", [34, 1000, 150_000, 2_985_000, 8_342_150])
@pytest.mark.parametrize("prompt, n", [(13, 1), (500, 2), (1, 4)])
def test_budget_never_lets_charge_exceed_hold(amount, prompt, n) -> None:
    plan = plan_hold(GPT35, prompt, 0, n)
    if amount < plan.minimum:
        return
    budget = completion_budget(GPT35, amount, prompt, n, plan.per_choice_limit)
    assert budget >= 1
    assert charge(GPT35.prompt, GPT35.completion, 0, prompt, budget * n) <= amount
    if budget < plan.per_choice_limit:  # one more token each would not fit
        assert charge(GPT35.prompt, GPT35.completion, 0, prompt, (budget + 1) * n) > amount


def test_embeddings_hold_is_the_minimum_charge() -> None:
    plan = plan_hold(ADA, 8, 0, 1)
    assert plan.per_choice_limit == 0 and plan.desired == plan.minimum == 4_000_000
