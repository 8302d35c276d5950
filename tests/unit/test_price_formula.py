"""The one price formula, cost(), on a table of cases: cached, cache writes, reasoning,
min_charge, rounding, multipliers, and the hold it sizes."""
from __future__ import annotations

import pytest

from services.billing.pricing import (
    Price,
    TokenRates,
    Usage,
    charge,
    completion_budget,
    cost,
    multiplier,
    plan_hold,
    rates_of,
)

# gpt-4o-like: 2.5 / 10 credits per 1,000, cache reads at half price, writes at 1.25x.
R = TokenRates(prompt=2_500_000, completion=10_000_000, cached_prompt=1_250_000, cache_write=3_125_000, min_charge=0)


@pytest.mark.parametrize("usage, expected", [
    (Usage(), 0),                                            # nothing used, nothing charged
    (Usage(1000, 0), 2_500_000),
    (Usage(1000, 0, cached_prompt=1000), 1_250_000),         # every prompt token a cache read
    (Usage(1000, 0, cached_prompt=400), 600 * 2_500 + 400 * 1_250),
    (Usage(1000, 0, cache_write=1000), 3_125_000),
    (Usage(1000, 0, cached_prompt=200, cache_write=300), 500 * 2_500 + 200 * 1_250 + 300 * 3_125),
    (Usage(10, 100, reasoning=80), 10 * 2_500 + 100 * 10_000),  # reasoning is part of completion
    (Usage(1, 0), 2_500),
    (Usage(1, 0, cached_prompt=1), 1_250),
    (Usage(100, 0, cached_prompt=5000), 100 * 1_250),         # more cached than prompt: clamped
    (Usage(100, 0, cached_prompt=60, cache_write=60), 60 * 1_250 + 40 * 3_125),
])
def test_cost_table(usage: Usage, expected: int) -> None:
    assert cost(R, usage) == expected


def test_rounding_is_up_to_the_micro_credit_on_the_sum() -> None:
    r = TokenRates(333_333, 1, 333_333, 333_333, 0)
    assert cost(r, Usage(1, 0)) == 334               # 333.333
    assert cost(r, Usage(3, 0)) == 1000              # 999.999: rounded once, on the total
    assert cost(r, Usage(1, 1)) == 334               # 333.334


def test_min_charge_is_a_floor_but_nothing_used_is_free() -> None:
    r = TokenRates(250_000, 0, 250_000, 250_000, 4_000_000)
    assert cost(r, Usage(8, 0)) == 4_000_000
    assert cost(r, Usage(100_000, 0)) == 25_000_000
    assert cost(r, Usage(0, 0)) == 0


def test_plain_charge_is_the_same_formula() -> None:
    for pt, ct in [(0, 0), (13, 7), (1234, 567), (1, 0)]:
        plain = TokenRates(1_500_000, 2_000_000, 1_500_000, 1_500_000, 7)
        assert charge(1_500_000, 2_000_000, 7, pt, ct) == cost(plain, Usage(pt, ct))


PRICE = Price("m", prompt=2_500_000, completion=10_000_000, min_charge=0, context_window=128000,
              max_output_tokens=16384, cached_prompt=1_250_000, tiers={"priority": 2.0, "flex": 0.5},
              features={"web_search": 4.0})
# gpt-4o-audio-preview-like: text 2.5 / 10, audio 40 / 80 credits per 1,000 tokens.
AUDIO = Price("a", prompt=2_500_000, completion=10_000_000, min_charge=0, context_window=128000,
              max_output_tokens=16384, audio_prompt=40_000_000, audio_completion=80_000_000)


def test_cache_prices_default_to_the_prompt_price() -> None:
    plain = Price("p", 1000, 2000, 0, 100, 10)
    assert rates_of(plain) == TokenRates(1000, 2000, 1000, 1000, 0)
    assert rates_of(PRICE).cached_prompt == 1_250_000 and rates_of(PRICE).cache_write == 2_500_000


@pytest.mark.parametrize("tier, features, factor, refused", [
    ("", [], 1.0, None), ("auto", [], 1.0, None), ("default", [], 1.0, None),
    ("priority", [], 2.0, None), ("flex", [], 0.5, None), ("scale", [], 1.0, "service_tier"),
    ("", ["web_search"], 4.0, None), ("priority", ["web_search"], 8.0, None),
    ("", ["audio"], 1.0, "modalities"),  # audio is no multiplier: a row without audio prices refuses it
    ("", ["prediction"], 1.0, "prediction"),
])
def test_multipliers(tier: str, features: list[str], factor: float, refused: str | None) -> None:
    assert multiplier(PRICE, tier, features) == (factor, refused)


def test_a_multiplier_scales_every_rate_rounding_up() -> None:
    assert rates_of(PRICE, 2.0) == TokenRates(5_000_000, 20_000_000, 2_500_000, 5_000_000, 0)
    assert rates_of(Price("x", 3, 3, 0, 10, 10), 0.5) == TokenRates(2, 2, 2, 2, 0)


def test_hold_covers_a_prompt_of_cache_writes_and_the_budget_stays_inside_it() -> None:
    price = Price("c", 3_000_000, 15_000_000, 0, 200_000, 8192, cached_prompt=300_000, cache_write=3_750_000)
    plan = plan_hold(price, 1000, 0, 1)
    assert plan.per_choice_limit == 8192
    assert plan.desired == cost(rates_of(price), Usage(1000, 8192, cache_write=1000))
    amount = plan.desired // 3
    budget = completion_budget(price, amount, 1000, 1, plan.per_choice_limit)
    assert cost(rates_of(price), Usage(1000, budget, cache_write=1000)) <= amount


def test_client_budget_never_above_the_model_maximum() -> None:
    assert plan_hold(PRICE, 10, 100_000, 1).per_choice_limit == 16384
    assert plan_hold(PRICE, 10, 500, 1).per_choice_limit == 500


def test_audio_is_allowed_by_audio_prices_and_carries_no_multiplier() -> None:
    assert multiplier(AUDIO, "", ["audio"]) == (1.0, None)
    assert rates_of(AUDIO, audio=True) == TokenRates(2_500_000, 10_000_000, 2_500_000, 2_500_000, 0,
                                                     40_000_000, 80_000_000)
    assert rates_of(AUDIO) == TokenRates(2_500_000, 10_000_000, 2_500_000, 2_500_000, 0)  # a text call
    assert rates_of(AUDIO, 2.0, audio=True).audio_completion == 160_000_000


@pytest.mark.parametrize("usage, expected", [
    # OpenAI's audio counts are part of prompt_tokens / completion_tokens: the rest is text.
    (Usage(1000, 500, audio_prompt=300, audio_completion=400), 700 * 2_500 + 300 * 40_000 + 100 * 10_000
     + 400 * 80_000),
    (Usage(1000, 0, cached_prompt=200, audio_prompt=300), 500 * 2_500 + 200 * 2_500 + 300 * 40_000),
    (Usage(100, 10, audio_prompt=500, audio_completion=50), 100 * 40_000 + 10 * 80_000),  # clamped to the totals
    (Usage(100, 10, cached_prompt=100, audio_prompt=50), 100 * 2_500 + 10 * 10_000),  # all cached: none uncached
])
def test_audio_tokens_are_charged_at_the_audio_prices(usage: Usage, expected: int) -> None:
    assert cost(rates_of(AUDIO, audio=True), usage) == expected
    # Without the audio rates (a text call), the same counts are text.
    assert cost(rates_of(AUDIO), usage) == cost(rates_of(AUDIO), Usage(usage.prompt, usage.completion,
                                                                        usage.cached_prompt))


def test_an_audio_hold_covers_every_token_at_the_audio_price_and_its_budget_stays_inside() -> None:
    rates = rates_of(AUDIO, audio=True)
    plan = plan_hold(AUDIO, 1000, 0, 1, rates)
    assert plan.desired == cost(rates, Usage(1000, 16384, audio_prompt=1000, audio_completion=16384))
    amount = plan.desired // 5
    budget = completion_budget(AUDIO, amount, 1000, 1, plan.per_choice_limit, rates)
    assert 0 < budget < plan.per_choice_limit
    assert cost(rates, Usage(1000, budget, audio_prompt=1000, audio_completion=budget)) <= amount
    assert cost(rates, Usage(1000, budget + 1, audio_prompt=1000, audio_completion=budget + 1)) > amount
