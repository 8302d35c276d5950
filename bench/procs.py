"""What processes cost, read from /proc: CPU time, RSS and PSS; and pinning them to a core with taskset."""
from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name, or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name may hold spaces or parentheses: the fields start after the last ')'.
    return raw[raw.rindex(b")") + 2:].split()


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), or None once it is gone."""
    fields = _stat(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) * TICK_S


def parent_of(pid: int) -> int | None:
    fields = _stat(pid)
    return None if fields is None else int(fields[1])


def children_of(pid: int) -> list[int]:
    """Direct children of `pid` (PostgreSQL's backends and helpers are the postmaster's)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and parent_of(int(entry)) == pid:
            found.append(int(entry))
    return found


@dataclass(frozen=True)
class Memory:
    rss_kb: int
    pss_kb: int


def memory(pid: int) -> Memory | None:
    """RSS and PSS of a process from smaps_rollup (PSS shares shared pages out fairly)."""
    values = {"Rss:": 0, "Pss:": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] in values:
                    values[parts[0]] = int(parts[1])
    except OSError:
        return None
    return Memory(values["Rss:"], values["Pss:"])


class Group:
    """Named sets of processes whose CPU time is summed between two snapshots.

    A process that appears after the first snapshot (a new PostgreSQL backend) counts
    from zero; one that exits in between loses what it used since the last snapshot,
    which is why the runner takes snapshots while the load runs too.
    """

    def __init__(self, members: dict[str, Iterable[int]] | None = None, finders: dict[str, object] | None = None):
        self._static = {name: list(pids) for name, pids in (members or {}).items()}
        self._finders = finders or {}   # name -> callable returning the current pids
        self._base: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._used: dict[str, float] = {}
        self._owner: dict[int, str] = {}

    def pids(self) -> dict[str, list[int]]:
        out = {name: list(pids) for name, pids in self._static.items()}
        for name, find in self._finders.items():
            out[name] = list(find())  # type: ignore[operator]
        return out

    def start(self) -> None:
        self._base.clear()
        self._last.clear()
        self._used = {name: 0.0 for name in self.pids()}
        for name, pids in self.pids().items():
            for pid in pids:
                t = cpu_seconds(pid)
                if t is not None:
                    self._base[pid] = self._last[pid] = t
                    self._owner[pid] = name

    def sample(self) -> None:
        for name, pids in self.pids().items():
            for pid in pids:
                t = cpu_seconds(pid)
                if t is None:
                    continue
                self._owner[pid] = name
                self._base.setdefault(pid, 0.0)
                self._last[pid] = t

    def used(self) -> dict[str, float]:
        """CPU seconds per name since start(), including the latest sample()."""
        self.sample()
        out = {name: 0.0 for name in self._used}
        for pid, last in self._last.items():
            name = self._owner.get(pid)
            if name is not None:
                out[name] = out.get(name, 0.0) + max(0.0, last - self._base.get(pid, 0.0))
        return out

    def memory(self) -> dict[str, Memory]:
        out = {}
        for name, pids in self.pids().items():
            rss = pss = 0
            for pid in pids:
                m = memory(pid)
                if m is not None:
                    rss += m.rss_kb
                    pss += m.pss_kb
            out[name] = Memory(rss, pss)
        return out


def taskset_available() -> bool:
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def pin(pids: Iterable[int], core: int) -> None:
    """Pin processes (every thread of each) to one core; threads they start later inherit it."""
    for pid in pids:
        subprocess.run(["taskset", "-a", "-p", "-c", str(core), str(pid)], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pin_prefix(core: int | None) -> list[str]:
    """A command prefix that starts a program on one core (empty when not pinning)."""
    return ["taskset", "-c", str(core)] if core is not None else []
