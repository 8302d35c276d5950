"""The scenarios of `make bench`, and one measured run of a scenario against one target."""
from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import streams, wrk
from bench.mock import CHUNKS, streamed_text
from bench.targets import (
    CHAT_MODEL,
    EMBED_MODEL,
    HOLD_INTERVAL_MS,
    HOLD_MODEL,
    STREAM_INTERVAL_MS,
    STREAM_MODEL,
    Chatkore,
    Target,
)
from tools.stack import wait_until

CHAT_BODY = {"model": CHAT_MODEL, "messages": [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say this is a test! Then tell me, in one sentence, what a gateway does."}]}
EMBED_BODY = {"model": EMBED_MODEL, "input": "The food was delicious and the waiter was very friendly.",
              "encoding_format": "float"}


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str            # "wrk" (closed loop), "stream" (open loop), "hold" (many streams open at once)
    endpoint: str
    model: str
    concurrency: int
    body: dict[str, Any]

    @property
    def interval_s(self) -> float:
        return {STREAM_MODEL: STREAM_INTERVAL_MS, HOLD_MODEL: HOLD_INTERVAL_MS}.get(self.model, 0) / 1000

    @property
    def stream_s(self) -> float:
        """How long the mock takes to send one whole stream."""
        return (CHUNKS - 1) * self.interval_s


def _stream_body(model: str) -> dict[str, Any]:
    return {**CHAT_BODY, "model": model, "stream": True}


SCENARIOS = [
    Scenario("chat c=1", "wrk", "/chat/completions", CHAT_MODEL, 1, CHAT_BODY),
    Scenario("chat c=16", "wrk", "/chat/completions", CHAT_MODEL, 16, CHAT_BODY),
    Scenario("chat c=64", "wrk", "/chat/completions", CHAT_MODEL, 64, CHAT_BODY),
    Scenario("chat c=256", "wrk", "/chat/completions", CHAT_MODEL, 256, CHAT_BODY),
    Scenario("stream c=16", "stream", "/chat/completions", STREAM_MODEL, 16, _stream_body(STREAM_MODEL)),
    Scenario("stream c=128", "stream", "/chat/completions", STREAM_MODEL, 128, _stream_body(STREAM_MODEL)),
    Scenario("embeddings c=64", "wrk", "/embeddings", EMBED_MODEL, 64, EMBED_BODY),
    Scenario("1000 open streams", "hold", "/chat/completions", HOLD_MODEL, 1000, _stream_body(HOLD_MODEL)),
]


def body_bytes(s: Scenario) -> bytes:
    return json.dumps(s.body, separators=(",", ":")).encode()


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of a list, or None when it is empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


class MemoryProbe:
    """Samples the target's memory once, `after_s` into the run, while the load is on."""

    def __init__(self, target: Target, after_s: float) -> None:
        self.target = target
        self.result: dict[str, Any] = {}
        self._timer = threading.Timer(after_s, self._take)
        self._timer.daemon = True

    def _take(self) -> None:
        self.target.group.sample()
        self.result = {name: {"rss_mb": m.rss_kb / 1024, "pss_mb": m.pss_kb / 1024}
                       for name, m in self.target.group.memory().items()}

    def __enter__(self) -> MemoryProbe:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        self._timer.join()
        if not self.result:
            self._take()


def _costs(target: Target, cpu: dict[str, float], done: int, memory: dict[str, Any]) -> dict[str, Any]:
    total = sum(cpu.values())
    return {
        "cpu_ms_per_request": 1000 * total / done if done else None,
        "cpu_ms_per_request_by_process": {k: 1000 * v / done if done else None for k, v in cpu.items()},
        "cpu_s": cpu,
        "memory": memory,
    }


def _billing_before(target: Target) -> dict[str, Any]:
    if isinstance(target, Chatkore):
        return {"rows": target.request_rows(), "xacts": target.transactions()}
    return {}


def _billing_settled(target: Target, before: dict[str, Any], done: int) -> dict[str, Any]:
    """_billing_after once no hold is open (settlements follow the reply, and the calls cut when
    the load stopped are released as client_gone), or 30 s on: an answer counted before its
    settlement landed would read as unbilled."""
    if isinstance(target, Chatkore):
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: target.request_rows().get("held", 0) == 0, 30, "every hold to close")
    return _billing_after(target, before, done)


def _billing_after(target: Target, before: dict[str, Any], done: int) -> dict[str, Any]:
    if not isinstance(target, Chatkore):
        return {}
    rows = target.request_rows()
    added = {k: rows.get(k, 0) - before["rows"].get(k, 0) for k in rows}
    xacts = target.transactions() - before["xacts"]
    return {"usage_rows_added": {k: v for k, v in added.items() if v},
            "pg_transactions_per_request": xacts / done if done else None}


def run_wrk(target: Target, s: Scenario, duration_s: float, warmup_s: float, tmp: Path,
            core: int | None) -> dict[str, Any]:
    url = f"http://127.0.0.1:{target.port}{target.path(s.model, s.endpoint)}"
    lua = wrk.script(body_bytes(s), getattr(target, "keys", None) or target.key, tmp)
    try:
        if warmup_s > 0:
            wrk.finish(wrk.start(url, lua, connections=s.concurrency, duration_s=warmup_s, core=core),
                       warmup_s + 120)
        before = _billing_before(target)
        target.group.start()
        proc = wrk.start(url, lua, connections=s.concurrency, duration_s=duration_s, core=core)
        with MemoryProbe(target, duration_s * 0.75) as probe:
            result = wrk.finish(proc, duration_s + 180)
        cpu = target.group.used()
    finally:
        lua.unlink(missing_ok=True)
    ok = result.requests - result.status_errors
    return {
        "rps": result.rps, "requests": result.requests, "errors": result.errors,
        "p50_ms": result.p50_ms, "p90_ms": result.p90_ms, "p99_ms": result.p99_ms, "max_ms": result.max_ms,
        **_costs(target, cpu, ok, probe.result), **_billing_settled(target, before, ok),
    }


def summarise_streams(results: list[streams.StreamResult], span_s: float) -> dict[str, Any]:
    expected = streamed_text()
    good = [r for r in results if r.ok(expected)]
    ttft = [1000 * r.ttft_s for r in good if r.ttft_s is not None]
    full = [1000 * r.total_s for r in good if r.total_s is not None]
    errors = [r.error or f"incomplete ({r.chunks} chunks, done={r.done})" for r in results if not r.ok(expected)]
    return {
        "rps": len(good) / span_s if span_s else 0.0, "requests": len(results), "completed": len(good),
        "errors": len(errors), "error_samples": sorted(set(errors))[:5],
        "ttft_p50_ms": percentile(ttft, 50), "ttft_p99_ms": percentile(ttft, 99),
        "p50_ms": percentile(full, 50), "p99_ms": percentile(full, 99),
    }


def run_streams(target: Target, s: Scenario, duration_s: float, warmup_s: float) -> dict[str, Any]:
    """Open loop at the rate that keeps `s.concurrency` streams in flight when nothing queues."""
    rate = s.concurrency / s.stream_s
    path = target.path(s.model, s.endpoint)
    body = body_bytes(s)

    async def go() -> dict[str, Any]:
        conns = streams.Connections("127.0.0.1", target.port)
        if warmup_s > 0:
            await streams.open_loop("127.0.0.1", target.port, path, body, target.key, rate=rate,
                                    duration_s=warmup_s, connections=conns)
        before = _billing_before(target)
        target.group.start()
        tally = streams.Tally()
        with MemoryProbe(target, duration_s * 0.75) as probe:
            results, span = await streams.open_loop("127.0.0.1", target.port, path, body, target.key, rate=rate,
                                                    duration_s=duration_s, tally=tally, connections=conns)
        cpu = target.group.used()
        await conns.close()
        summary = summarise_streams(results, span)
        return {**summary, "offered_rate": rate, "most_open": tally.most,
                "mean_open": statistics.fmean(tally.samples) if tally.samples else 0,
                **_costs(target, cpu, summary["completed"], probe.result),
                **_billing_after(target, before, summary["completed"])}

    return asyncio.run(go())


def run_hold(target: Target, s: Scenario, ramp_s: float) -> dict[str, Any]:
    """Open `s.concurrency` long streams over `ramp_s`, all of them open at once for a while; every one
    must arrive whole (20 chunks and [DONE]) and, through chatkore, be billed as complete."""
    rate = s.concurrency / ramp_s
    if s.stream_s <= ramp_s:
        raise ValueError("the streams must outlast the ramp for all of them to be open at once")
    path = target.path(s.model, s.endpoint)

    async def go() -> dict[str, Any]:
        before = _billing_before(target)
        target.group.start()
        tally = streams.Tally()
        # Memory at the plateau: every stream opened, none finished yet.
        with MemoryProbe(target, ramp_s + min(5.0, (s.stream_s - ramp_s) / 2)) as probe:
            results, span = await streams.open_loop("127.0.0.1", target.port, path, body_bytes(s), target.key,
                                                    rate=rate, duration_s=ramp_s, tally=tally,
                                                    timeout_s=s.stream_s + 120)
        cpu = target.group.used()
        summary = summarise_streams(results, span)
        lost = s.concurrency - summary["completed"]
        out = {**summary, "most_open": tally.most, "lost": lost,
               **_costs(target, cpu, summary["completed"], probe.result)}
        out.update(await asyncio.to_thread(_billing_settled, target, before, summary["completed"]))
        return out

    return asyncio.run(go())
