"""The price formula and hold sizing: pure arithmetic on integer micro-credits."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Price:
    model: str
    prompt: int            # micro-credits per 1,000 prompt tokens
    completion: int        # micro-credits per 1,000 completion tokens
    min_charge: int        # micro-credits, the least a call that did anything costs
    context_window: int
    max_output_tokens: int  # 0 for models that produce no completion (embeddings)


def charge(price_prompt: int, price_completion: int, min_charge: int, prompt_tokens: int,
           completion_tokens: int) -> int:
    """What a call costs: tokens x price per 1,000, rounded up, never below min_charge.

    A call that used no tokens at all (it failed with nothing delivered) costs nothing.
    """
    if prompt_tokens == 0 and completion_tokens == 0:
        return 0
    cost = -(-(prompt_tokens * price_prompt + completion_tokens * price_completion) // 1000)
    return max(min_charge, cost)


@dataclass(frozen=True)
class HoldPlan:
    desired: int           # the worst case: every completion token the call may produce
    minimum: int           # the least the call can run on: one completion token per choice
    per_choice_limit: int  # completion tokens per choice the client or the model allows


def plan_hold(price: Price, prompt_tokens: int, max_tokens: int, choices: int) -> HoldPlan:
    """Size the hold for a call. `max_tokens` is per choice; 0 means the client set none."""
    choices = max(1, choices)
    if price.max_output_tokens <= 0:
        limit = 0
    elif max_tokens > 0:
        limit = max_tokens
    else:
        limit = max(1, min(price.max_output_tokens, price.context_window - prompt_tokens))
    desired = charge(price.prompt, price.completion, price.min_charge, prompt_tokens, limit * choices)
    minimum = charge(price.prompt, price.completion, price.min_charge, prompt_tokens, min(limit, 1) * choices)
    # A prompt of zero tokens still has to be paid for once it runs.
    minimum = max(minimum, price.min_charge, 1 if (price.prompt or price.completion) else 0)
    desired = max(desired, minimum)
    return HoldPlan(desired=desired, minimum=minimum, per_choice_limit=limit)


def completion_budget(price: Price, amount: int, prompt_tokens: int, choices: int, limit: int) -> int:
    """Completion tokens per choice that `amount` pays for, never above `limit`.

    With this budget, prompt x price + choices x budget x price <= amount x 1,000,
    so the charge computed at settlement can never exceed the hold.
    """
    if price.completion <= 0 or limit <= 0:
        return limit
    room = amount * 1000 - prompt_tokens * price.prompt
    return max(0, min(limit, room // (price.completion * max(1, choices))))


@dataclass(frozen=True)
class Rates:
    """What money buys: micro-credits per unit of each currency an order may be paid in."""

    cny: int
    usd: int

    def credits_for(self, amount_minor: int, currency: str) -> int:
        """Micro-credits for an amount in the currency's minor unit (fen, cents), rounded down."""
        rate = {"CNY": self.cny, "USD": self.usd}[currency]
        return amount_minor * rate // 100
