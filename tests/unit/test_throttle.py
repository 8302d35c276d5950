"""The bound on unverified payment notifications (services/billing/throttle.py): per source,
in all, over a sliding window, counting only what it admits."""
from __future__ import annotations

from services.billing.throttle import Throttle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_per_source_then_total_then_the_window_slides() -> None:
    clock = Clock()
    throttle = Throttle(per_source=2, total=3, window_s=60, clock=clock)
    assert [throttle.admit("a") for _ in range(3)] == ["", "", "source"]
    assert [throttle.admit("b") for _ in range(2)] == ["", "total"]
    assert throttle.admit("c") == "total"
    clock.now += 30
    assert throttle.admit("c") == "total"  # nothing has left the window yet
    clock.now += 30  # the first three (t=1000) leave it: 'a' twice, 'b' once
    assert [throttle.admit("a") for _ in range(3)] == ["", "", "source"]
    assert throttle.admit("b") == ""
    assert throttle.admit("c") == "total"


def test_refusals_are_not_counted_and_memory_stays_within_the_total() -> None:
    clock = Clock()
    throttle = Throttle(per_source=1, total=5, window_s=60, clock=clock)
    verdicts = [throttle.admit(f"10.0.{i // 256}.{i % 256}") for i in range(10_000)]
    assert verdicts.count("") == 5 and verdicts.count("total") == 9_995
    assert len(throttle._by_source) == 5 and len(throttle._all) == 5
    clock.now += 61
    assert throttle.admit("10.9.9.9") == ""
    assert len(throttle._by_source) == 1
