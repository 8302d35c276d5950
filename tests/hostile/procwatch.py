"""A process's peak RSS and CPU time over a block, sampled from outside (bench/procs.py reads /proc)."""
from __future__ import annotations

import threading

from bench import procs


class Watch:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = self.base = self._rss()
        self._cpu = procs.cpu_seconds(pid) or 0.0
        self.cpu_s = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _rss(self) -> int:
        memory = procs.memory(self.pid)
        assert memory is not None, f"process {self.pid} is gone"
        return memory.rss_kb * 1024

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.cpu_s = (procs.cpu_seconds(self.pid) or 0.0) - self._cpu

    @property
    def growth(self) -> int:
        return self.peak - self.base
