"""Credits on the wire are JSON numbers (up to 6 decimals); inside, integer micro-credits."""
from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from edge.errors import invalid

MICRO = 1_000_000


def to_micro(value: Any, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise invalid(f"'{param}' must be a number of credits", param)
    try:
        amount = Decimal(str(value)) * MICRO
    except InvalidOperation:
        raise invalid(f"'{param}' must be a number of credits", param) from None
    if not amount.is_finite() or amount != amount.to_integral_value():
        raise invalid(f"'{param}' may have at most 6 decimal places", param)
    if abs(amount) > Decimal(10**18):
        raise invalid(f"'{param}' is too large", param)
    return int(amount)


def from_micro(amount: int) -> int | float:
    if amount % MICRO == 0:
        return amount // MICRO
    return float(Decimal(amount) / MICRO)
