"""`make bench PROFILE=1`: where chatkore's CPU goes under load (chat at c=64 unless `--scenario`
names another non-streamed or streamed one), per process, ranked (py-spy).

py-spy samples each service's Python stacks while wrk drives the load; /proc gives each
process's CPU per request over the same window, so a function's share of the samples
becomes milliseconds per request. py-spy lives in its own virtualenv under `.bench/`.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench import procs, scenarios, streams, wrk
from bench.run import LOAD_CORE, RESULTS, STACK_CORE, WORK, _raise_open_files, commit, machine
from bench.targets import Chatkore, Mock

PY_SPY_SPEC = "py-spy==0.4.1"
SERVICES = ("edge", "auth", "billing", "inference")

# Where a frame's time belongs, by the file it runs in: first match wins.
CATEGORIES = [
    ("grpc", re.compile(r"grpc|_cython|cygrpc")),
    ("aiohttp", re.compile(r"aiohttp|yarl|multidict")),
    ("psycopg", re.compile(r"psycopg")),
    ("json", re.compile(r"json/")),
    ("logging", re.compile(r"logging/|services/common/logs\.py")),
    ("protobuf", re.compile(r"google/protobuf")),
    ("tiktoken", re.compile(r"tiktoken")),
    ("asyncio", re.compile(r"asyncio/|selectors\.py")),
    ("chatkore", re.compile(r"/(services|edge|tools)/")),
]


# Leaf frames of a thread that is waiting, not working (seen only with --native).
IDLE = {"epoll_wait", "epoll_pwait", "poll", "ppoll", "select", "pselect6", "pthread_cond_wait",
        "pthread_cond_timedwait", "sem_wait", "sem_timedwait", "nanosleep", "clock_nanosleep"}


def py_spy() -> Path:
    venv = WORK / "tools-venv"
    binary = venv / "bin" / "py-spy"
    if not binary.exists():
        print(f"bench: installing {PY_SPY_SPEC} into {venv} (first use only)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        PY_SPY_SPEC], check=True)
    return binary


def _frame_file(frame: str) -> str:
    match = re.search(r"\(([^)]*)\)$", frame)
    return match.group(1) if match else frame


def category(frame: str) -> str:
    where = _frame_file(frame)
    for name, pattern in CATEGORIES:
        if pattern.search(where):
            return name
    return "other"


def _short(frame: str) -> str:
    """`func (path/to/module.py:12)` -> `func (module.py:12)`, keeping the package for ours."""
    match = re.match(r"(.*) \((.*?)(?::(\d+))?\)$", frame)
    if not match:
        return frame
    func, path, line = match.groups()
    parts = Path(path).parts
    keep = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{func} ({keep}{':' + line if line else ''})"


def summarise(raw: Path) -> dict[str, object]:
    """Collapsed stacks -> total samples, self and inclusive time per function, time per category."""
    total = idle = 0
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    by_category: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        if frames[-1].split(" (")[0] in IDLE:
            idle += count
            continue
        total += count
        self_time[frames[-1]] += count
        for f in set(frames):
            inclusive[f] += count
        # A sample belongs to the innermost category that is not the event loop's own plumbing,
        # so time spent in aiohttp called from asyncio counts as aiohttp.
        cats = [category(f) for f in frames]
        specific = [c for c in cats if c not in ("asyncio", "other")]
        by_category[specific[-1] if specific else cats[-1]] += count
    return {"total": total, "idle": idle, "self": self_time, "inclusive": inclusive, "categories": by_category}


def profile(args: argparse.Namespace) -> int:
    binary = py_spy()
    _raise_open_files()
    pinned = procs.taskset_available()
    stack_core, load_core = (STACK_CORE, LOAD_CORE) if pinned else (None, None)
    if pinned:
        import os
        os.sched_setaffinity(0, {LOAD_CORE})
    log_dir = WORK / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    raw_dir = RESULTS / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    s = next((x for x in scenarios.SCENARIOS if x.name == args.scenario), None)
    if s is None or s.kind not in ("wrk", "stream"):
        raise SystemExit(f"bench: no scenario {args.scenario!r} to profile; "
                         f"one of {[x.name for x in scenarios.SCENARIOS if x.kind in ('wrk', 'stream')]}")
    mock = Mock(load_core, log_dir)
    chatkore = None
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M")
    try:
        chatkore = Chatkore(mock, stack_core, WORK, log_dir)
        load = _Load(chatkore, s, args.seconds, load_core)
        time.sleep(1)
        chatkore.group.start()
        spies = {}
        for name in SERVICES:
            out = raw_dir / f"{stamp}-{name}.txt"
            pid = chatkore.stack.procs[name].pid
            command = [*procs.pin_prefix(load_core), str(binary), "record", "--pid", str(pid),
                       "--duration", str(int(args.seconds)), "--rate", str(args.rate), "--format", "raw",
                       "--output", str(out)]
            # Native frames need the process paused while its stack is read; Python frames do not.
            # Without them a thread waiting in C (the event loop's epoll, gRPC's poller) cannot be
            # told from one working, so at low concurrency, where the services mostly wait, the
            # profile counts waiting as work: below c=16 it always reads native frames.
            command.append("--native" if args.native or s.concurrency < 16 else "--nonblocking")
            spies[name] = (subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), out)
        for name, (spy, _) in spies.items():
            _, err = spy.communicate(timeout=args.seconds + 60)
            if spy.returncode != 0:
                raise RuntimeError(f"py-spy on {name} failed: {err[-500:]}")
        cpu = chatkore.group.used()
        rate, p50_ms = load.finish()
    finally:
        if chatkore is not None:
            chatkore.stop()
        mock.stop()
    # Requests (or streams) answered while py-spy sampled: the load's rate over the sampling window.
    answered = rate * args.seconds
    unit = "stream" if s.kind == "stream" else "req"
    lines = [f"# Profile — {s.name}, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC}", "",
             f"Commit {commit()}, {machine()['cpu']}; py-spy {args.rate} Hz for {args.seconds:.0f} s on each "
             f"service{' with native frames' if args.native else ''} (py-spy ran on core {load_core}); "
             f"{rate:.1f} {unit}s/s, p50 {p50_ms:.1f} ms. Per-process CPU from /proc over the same "
             "window; a function's share of the process's samples scales its CPU per request. Raw collapsed "
             f"stacks: `bench/results/raw/{stamp}-<service>.txt` (not committed).", "",
             f"| process | CPU ms/{unit} |", "|---|---|"]
    for name, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {1000 * seconds / answered:.2f} |")
    lines.append(f"| **total** | **{1000 * sum(cpu.values()) / answered:.2f}** |")
    for name in sorted(SERVICES, key=lambda n: -cpu[n]):
        summary = summarise(spies[name][1])
        total = summary["total"] or 1
        per_req = 1000 * cpu[name] / answered
        idle = f", {summary['idle']} idle ones left out" if summary["idle"] else ""
        lines += ["", f"## {name}: {per_req:.2f} ms/{unit} ({summary['total']} samples{idle})", "",
                  "By library (innermost non-loop frame): " + ", ".join(
                      f"{c} {100 * n / total:.0f}% ({per_req * n / total:.2f} ms)"
                      for c, n in summary["categories"].most_common()),  # type: ignore[attr-defined]
                  "", f"| inclusive | ms/{unit} | function |", "|---|---|---|"]
        for frame, n in summary["inclusive"].most_common(args.top):  # type: ignore[attr-defined]
            lines.append(f"| {100 * n / total:.0f}% | {per_req * n / total:.3f} | `{_short(frame)}` |")
        lines += ["", f"| self | ms/{unit} | function |", "|---|---|---|"]
        for frame, n in summary["self"].most_common(args.top):  # type: ignore[attr-defined]
            lines.append(f"| {100 * n / total:.0f}% | {per_req * n / total:.3f} | `{_short(frame)}` |")
    path = RESULTS / f"{stamp}-profile.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:12]))
    print(f"bench: profile in {path.relative_to(RESULTS.parent.parent)}")
    return 0


class _Load:
    """The scenario's load, started before sampling and running past it: wrk for a non-streamed
    scenario, the open-loop stream client (on a thread of its own) for a streamed one."""

    def __init__(self, chatkore: Chatkore, s: scenarios.Scenario, seconds: float, core: int | None) -> None:
        self.kind = s.kind
        path = chatkore.path(s.model, s.endpoint)
        body = scenarios.body_bytes(s)
        if s.kind == "wrk":
            url = f"http://127.0.0.1:{chatkore.port}{path}"
            self.lua = wrk.script(body, chatkore.key, WORK)
            wrk.finish(wrk.start(url, self.lua, connections=s.concurrency, duration_s=3, core=core), 120)
            self.wrk = wrk.start(url, self.lua, connections=s.concurrency, duration_s=seconds + 4, core=core)
            return
        rate = s.concurrency / s.stream_s
        self.results: list[streams.StreamResult] = []
        self.span = 1.0
        started = threading.Event()

        async def go() -> None:
            await streams.open_loop("127.0.0.1", chatkore.port, path, body, chatkore.key, rate=rate, duration_s=3)
            started.set()
            self.results, self.span = await streams.open_loop("127.0.0.1", chatkore.port, path, body, chatkore.key,
                                                      rate=rate, duration_s=seconds + 4)

        self.thread = threading.Thread(target=asyncio.run, args=(go(),), daemon=True)
        self.thread.start()
        if not started.wait(120):
            raise RuntimeError("bench: the stream warm-up did not finish")

    def finish(self) -> tuple[float, float]:
        """(requests or streams a second, p50 ms: the full request, or a stream's first chunk)."""
        if self.kind == "wrk":
            result = wrk.finish(self.wrk, 60)
            self.lua.unlink(missing_ok=True)
            return result.rps, result.p50_ms
        self.thread.join(300)
        summary = scenarios.summarise_streams(self.results, self.span)
        return summary["rps"], summary["ttft_p50_ms"] or 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make bench PROFILE=1", description=__doc__)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--scenario", default="chat c=64", help="a non-streamed or streamed scenario's name")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--native", action="store_true", help="include C frames (grpc core, psycopg's libpq)")
    wrk.ensure_installed()
    return profile(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
