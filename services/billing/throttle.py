"""A bound on the unverified payment notifications billing keeps: anyone can post one, and
each would be a row. Counted per source address and in all over a sliding window, before
anything is stored; memory is bounded by the total limit (only admitted ones are counted)."""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class Throttle:
    def __init__(self, per_source: int, total: int, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._per_source = per_source
        self._total = total
        self._window_s = window_s
        self._clock = clock
        self._all: deque[tuple[float, str]] = deque()      # admitted, oldest first
        self._by_source: dict[str, deque[float]] = {}

    def admit(self, source: str) -> str:
        """'' when one more from `source` may be kept (and it is counted); otherwise the limit
        it is over: 'source' or 'total'."""
        now = self._clock()
        cutoff = now - self._window_s
        while self._all and self._all[0][0] <= cutoff:
            _, old = self._all.popleft()
            times = self._by_source[old]
            times.popleft()
            if not times:
                del self._by_source[old]
        times = self._by_source.get(source)
        if times is not None and len(times) >= self._per_source:
            return "source"
        if len(self._all) >= self._total:
            return "total"
        self._all.append((now, source))
        self._by_source.setdefault(source, deque()).append(now)
        return ""
