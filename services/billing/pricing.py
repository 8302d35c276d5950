"""The price formula and hold sizing: pure arithmetic on integer micro-credits.

`cost()` is the only place a call's price is computed; holds, settlements and late
settlements all go through it.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

# service_tier values that run at the base price (OpenAI's own default tiers).
BASE_TIERS = frozenset({"", "auto", "default"})
# Options that make the upstream charge more than its base price, and the request field
# each comes from (what a refusal names as its `param`).
FEATURES = {"web_search": "web_search_options", "prediction": "prediction"}
# Audio in or out is not a multiplier: its tokens are priced by the row's audio prices (OpenAI
# reports them apart, in prompt_tokens_details/completion_tokens_details.audio_tokens), and a
# call with audio on a model without them is refused, naming this param.
AUDIO_PARAM = "modalities"


@dataclass(frozen=True)
class Price:
    model: str
    prompt: int            # micro-credits per 1,000 prompt tokens
    completion: int        # micro-credits per 1,000 completion tokens
    min_charge: int        # micro-credits, the least a call that did anything costs
    context_window: int
    max_output_tokens: int  # 0 for models that produce no completion (embeddings)
    cached_prompt: int | None = None  # per 1,000 cache-read prompt tokens; None: the prompt price
    cache_write: int | None = None    # per 1,000 cache-write prompt tokens; None: the prompt price
    tiers: Mapping[str, float] = field(default_factory=dict)     # service_tier -> multiplier
    features: Mapping[str, float] = field(default_factory=dict)  # FEATURES key -> multiplier
    units: Mapping[str, int] = field(default_factory=dict)       # unit (UNITS) -> micro-credits per unit
    audio_prompt: int | None = None      # per 1,000 audio input tokens; None: no audio on this model
    audio_completion: int | None = None  # per 1,000 audio output tokens; None: no audio on this model

    @property
    def audio_priced(self) -> bool:
        return self.audio_prompt is not None and self.audio_completion is not None

    @property
    def cached_prompt_rate(self) -> int:
        return self.prompt if self.cached_prompt is None else self.cached_prompt

    @property
    def cache_write_rate(self) -> int:
        return self.prompt if self.cache_write is None else self.cache_write


@dataclass(frozen=True)
class TokenRates:
    """The prices one call is charged at (its model's, with its multipliers applied)."""

    prompt: int
    completion: int
    cached_prompt: int
    cache_write: int
    min_charge: int
    audio_prompt: int | None = None      # None: audio tokens (if any) at the text prices
    audio_completion: int | None = None


@dataclass(frozen=True)
class Usage:
    """What a call used, protocol-neutral. `prompt` counts every input token, cache reads
    (`cached_prompt`) and cache writes (`cache_write`) included, as OpenAI counts them;
    `completion` counts every output token, `reasoning` included. `audio_prompt` and
    `audio_completion` are the audio tokens among them (uncached audio input, audio output)."""

    prompt: int = 0
    completion: int = 0
    cached_prompt: int = 0
    cache_write: int = 0
    reasoning: int = 0
    audio_prompt: int = 0
    audio_completion: int = 0

    def normalised(self) -> Usage:
        """The same usage with its parts made consistent: never more cached or cache-write
        tokens than prompt tokens, never more reasoning than completion tokens, never more
        audio tokens than the prompt tokens left or the completion tokens."""
        prompt, completion = max(0, self.prompt), max(0, self.completion)
        cached = min(max(0, self.cached_prompt), prompt)
        written = min(max(0, self.cache_write), prompt - cached)
        return Usage(prompt, completion, cached, written, min(max(0, self.reasoning), completion),
                     min(max(0, self.audio_prompt), prompt - cached - written),
                     min(max(0, self.audio_completion), completion))


def rates_of(price: Price, multiplier: float = 1.0, *, audio: bool = False) -> TokenRates:
    """The rates a call is held and charged at; with `audio` (the call sends or asks for audio),
    its audio tokens at the row's audio prices."""
    def scaled(rate: int) -> int:
        return rate if multiplier == 1.0 else math.ceil(rate * multiplier)

    audio_prompt = scaled(price.audio_prompt) if audio and price.audio_prompt is not None else None
    audio_completion = scaled(price.audio_completion) if audio and price.audio_completion is not None else None
    return TokenRates(scaled(price.prompt), scaled(price.completion), scaled(price.cached_prompt_rate),
                      scaled(price.cache_write_rate), price.min_charge, audio_prompt, audio_completion)


def cost(rates: TokenRates, usage: Usage) -> int:
    """What a call costs: each kind of token x its price per 1,000, rounded up to the
    micro-credit, never below min_charge. A call that used no tokens at all (it failed with
    nothing delivered) costs nothing. Reasoning tokens are completion tokens."""
    u = usage.normalised()
    if u.prompt == 0 and u.completion == 0:
        return 0
    audio_in = rates.prompt if rates.audio_prompt is None else rates.audio_prompt
    audio_out = rates.completion if rates.audio_completion is None else rates.audio_completion
    uncached_text = u.prompt - u.cached_prompt - u.cache_write - u.audio_prompt
    total = (uncached_text * rates.prompt + u.cached_prompt * rates.cached_prompt + u.cache_write * rates.cache_write
             + u.audio_prompt * audio_in + (u.completion - u.audio_completion) * rates.completion
             + u.audio_completion * audio_out)
    return max(rates.min_charge, -(-total // 1000))


def charge(price_prompt: int, price_completion: int, min_charge: int, prompt_tokens: int,
           completion_tokens: int) -> int:
    """cost() of plain prompt and completion tokens."""
    return cost(TokenRates(price_prompt, price_completion, price_prompt, price_prompt, min_charge),
                Usage(prompt_tokens, completion_tokens))


def worst_prompt_rates(rates: TokenRates) -> TokenRates:
    """Rates for sizing a hold: any prompt token may turn out to be a cache write (or audio), so
    every prompt token is held at the dearest prompt price; any output token may be audio."""
    top = max(rates.prompt, rates.cached_prompt, rates.cache_write, rates.audio_prompt or 0)
    out = max(rates.completion, rates.audio_completion or 0)
    return TokenRates(top, out, top, top, rates.min_charge)


@dataclass(frozen=True)
class HoldPlan:
    desired: int           # the worst case: every completion token the call may produce
    minimum: int           # the least the call can run on: one completion token per choice
    per_choice_limit: int  # completion tokens per choice the client or the model allows


def plan_hold(price: Price, prompt_tokens: int, max_tokens: int, choices: int,
              rates: TokenRates | None = None) -> HoldPlan:
    """Size the hold for a call. `max_tokens` is per choice; 0 means the client set none.
    The client's value is never above the model's maximum output."""
    choices = max(1, choices)
    worst = worst_prompt_rates(rates or rates_of(price))
    if price.max_output_tokens <= 0:
        limit = 0
    else:
        model_limit = max(1, min(price.max_output_tokens, price.context_window - prompt_tokens))
        limit = min(max_tokens, price.max_output_tokens) if max_tokens > 0 else model_limit
    desired = cost(worst, Usage(prompt_tokens, limit * choices))
    minimum = cost(worst, Usage(prompt_tokens, min(limit, 1) * choices))
    # A prompt of zero tokens still has to be paid for once it runs.
    minimum = max(minimum, worst.min_charge, 1 if (worst.prompt or worst.completion) else 0)
    desired = max(desired, minimum)
    return HoldPlan(desired=desired, minimum=minimum, per_choice_limit=limit)


def completion_budget(price: Price, amount: int, prompt_tokens: int, choices: int, limit: int,
                      rates: TokenRates | None = None) -> int:
    """Completion tokens per choice that `amount` pays for, never above `limit`.

    With this budget, prompt x price + choices x budget x price <= amount x 1,000,
    so the charge computed at settlement can never exceed the hold.
    """
    worst = worst_prompt_rates(rates or rates_of(price))
    if worst.completion <= 0 or limit <= 0:
        return limit
    room = amount * 1000 - prompt_tokens * worst.prompt
    return max(0, min(limit, room // (worst.completion * max(1, choices))))


def multiplier(price: Price, service_tier: str, features: list[str]) -> tuple[float, str | None]:
    """The product of the multipliers a call's options carry, or the `param` of the first
    option the model's price row does not price (such a call is refused). Audio carries no
    multiplier: it is allowed when the row has audio prices (rates_of(audio=True))."""
    factor = 1.0
    if service_tier not in BASE_TIERS:
        tier = price.tiers.get(service_tier)
        if tier is None:
            return 1.0, "service_tier"
        factor *= tier
    for feature in features:
        if feature == "audio":
            if not price.audio_priced:
                return 1.0, AUDIO_PARAM
            continue
        value = price.features.get(feature)
        if value is None:
            return 1.0, FEATURES.get(feature, feature)
        factor *= value
    return factor, None


# What one priced unit is, in the things a call counts: an image is one image, a "1k_characters"
# unit 1,000 characters of input, a minute of audio 60 seconds. A unit key may name a variant
# after a slash ("image/1024x1024/hd"), priced by its most specific entry on the row.
UNITS = {"image": 1, "1k_characters": 1000, "minute": 60}


def unit_kind(key: str) -> str:
    return key.split("/", 1)[0]


def valid_unit(key: str) -> bool:
    parts = key.split("/")
    return (unit_kind(key) in UNITS and len(key) <= 64 and all(parts)
            and (len(parts) == 1 or (parts[0] == "image" and len(parts) <= 3)))


def unit_price(price: Price, unit: str) -> tuple[str, int] | None:
    """The entry of the price row that prices `unit`: itself, else the nearest more general one."""
    key = unit
    while key:
        if key in price.units:
            return key, price.units[key]
        key = key.rpartition("/")[0]
    return None


def per_unit(price: Price, unit: str, value: int) -> Price:
    """The price row as one for a call counted in the unit's things (images, characters, seconds)
    as prompt tokens: cost() then charges count x value / things-per-unit, rounded up once."""
    per_thing_per_1000 = -(-value * 1000 // UNITS[unit_kind(unit)])
    return Price(price.model, per_thing_per_1000, 0, price.min_charge, 2**31 - 1, 0)


def input_only(price: Price) -> Price:
    """The price row for a call that produces no completion tokens (its hold is the prompt's)."""
    return replace(price, max_output_tokens=0)


@dataclass(frozen=True)
class Rates:
    """What money buys: micro-credits per unit of each currency an order may be paid in."""

    cny: int
    usd: int

    def credits_for(self, amount_minor: int, currency: str) -> int:
        """Micro-credits for an amount in the currency's minor unit (fen, cents), rounded down."""
        rate = {"CNY": self.cny, "USD": self.usd}[currency]
        return amount_minor * rate // 100
