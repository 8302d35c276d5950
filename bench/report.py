"""Rounds folded into medians and spreads; the Markdown tables, the targets of issue 8, the README section."""
from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

SERVICES = ("edge", "auth", "billing", "inference")
README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"


def spread(values: list[float | None]) -> dict[str, float] | None:
    real = [v for v in values if v is not None]
    if not real:
        return None
    return {"median": statistics.median(real), "min": min(real), "max": max(real), "n": len(real)}


def _mem(run: dict[str, Any], names: tuple[str, ...], kind: str) -> float | None:
    memory = run.get("memory") or {}
    if not all(n in memory for n in names):
        return None
    return sum(memory[n][kind] for n in names)


def _memory_names(target: str) -> tuple[str, ...]:
    return {"chatkore": SERVICES, "litellm": ("litellm",), "direct": ("mock",)}[target]


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (scenario, target): the median of each figure over rounds, with min and max."""
    keys: list[tuple[str, str]] = []
    for r in runs:
        if (r["scenario"], r["target"]) not in keys:
            keys.append((r["scenario"], r["target"]))
    return [_aggregate_one(scenario, target, runs) for scenario, target in keys]


def _aggregate_one(scenario: str, target: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    mine = [r for r in runs if r["scenario"] == scenario and r["target"] == target]
    direct = {r["round"]: r for r in runs if r["scenario"] == scenario and r["target"] == "direct"}
    names = _memory_names(target)

    def figure(get: Callable[[dict[str, Any]], float | None]) -> Any:
        return spread([get(r) for r in mine])

    def added(field: str) -> Any:
        """The gateway's figure minus the direct one of the same round."""
        if target == "direct":
            return None
        return spread([r[field] - direct[r["round"]][field] for r in mine
                       if r["round"] in direct and r.get(field) is not None
                       and direct[r["round"]].get(field) is not None])

    row: dict[str, Any] = {
        "scenario": scenario, "target": target, "kind": mine[0]["kind"], "rounds": len(mine),
        "rps": figure(lambda r: r["rps"]),
        "p50_ms": figure(lambda r: r.get("p50_ms")),
        "p99_ms": figure(lambda r: r.get("p99_ms")),
        "ttft_p50_ms": figure(lambda r: r.get("ttft_p50_ms")),
        "ttft_p99_ms": figure(lambda r: r.get("ttft_p99_ms")),
        "errors": sum(r["errors"] for r in mine),
        "requests": sum(r["requests"] for r in mine),
        "added_p50_ms": added("p50_ms"),
        "added_ttft_p50_ms": added("ttft_p50_ms"),
        "cpu_ms_per_request": figure(lambda r: r.get("cpu_ms_per_request")),
        "cpu_ms_by_process": {
            name: spread([(r.get("cpu_ms_per_request_by_process") or {}).get(name) for r in mine])
            for name in (mine[0].get("cpu_ms_per_request_by_process") or {})
        },
        "rss_mb": figure(lambda r: _mem(r, names, "rss_mb")),
        "pss_mb": figure(lambda r: _mem(r, names, "pss_mb")),
        "pg_pss_mb": figure(lambda r: _mem(r, ("postgres",), "pss_mb")) if target == "chatkore" else None,
        "pg_transactions_per_request": figure(lambda r: r.get("pg_transactions_per_request")),
    }
    if mine[0]["kind"] == "hold":
        row["lost"] = sum(r.get("lost", 0) for r in mine)
        row["most_open"] = min(r.get("most_open", 0) for r in mine)
    return row


def _fmt(s: dict[str, float] | None, digits: int = 1, spread_: bool = True) -> str:
    if s is None:
        return "–"
    med = f"{s['median']:.{digits}f}"
    if not spread_ or s["n"] < 2:
        return med
    return f"{med} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def _mem_cell(row: dict[str, Any]) -> str:
    if row["rss_mb"] is None:
        return "–"
    cell = f"{row['rss_mb']['median']:.0f} / {row['pss_mb']['median']:.0f}"
    if row.get("pg_pss_mb"):
        cell += f" (+PG {row['pg_pss_mb']['median']:.0f})"
    return cell


def tables(rows: list[dict[str, Any]]) -> str:
    out = ["Non-streamed (wrk, closed loop; medians over rounds, min–max in brackets):", "",
           "| scenario | target | req/s | p50 ms | p99 ms | errors | added p50 ms | CPU ms/req | RSS / PSS MB |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] != "wrk":
            continue
        out.append(f"| {r['scenario']} | {r['target']} | {_fmt(r['rps'], 0)} | {_fmt(r['p50_ms'], 2)} | "
                   f"{_fmt(r['p99_ms'], 2)} | {r['errors']}/{r['requests']} | {_fmt(r['added_p50_ms'], 2)} | "
                   f"{_fmt(r['cpu_ms_per_request'], 2)} | {_mem_cell(r)} |")
    out += ["", "Streamed (20 chunks; open-loop asyncio client, times from each stream's scheduled start):", "",
            "| scenario | target | streams/s | TTFT p50 ms | TTFT p99 ms | full p50 ms | full p99 ms | errors |"
            " added TTFT p50 ms | added full p50 ms | CPU ms/stream | RSS / PSS MB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] == "wrk":
            continue
        errors = f"{r['errors']}/{r['requests']}"
        if r["kind"] == "hold":
            errors += f", lost {r['lost']}, {r['most_open']} open at once"
        out.append(f"| {r['scenario']} | {r['target']} | {_fmt(r['rps'], 1)} | {_fmt(r['ttft_p50_ms'], 2)} | "
                   f"{_fmt(r['ttft_p99_ms'], 2)} | {_fmt(r['p50_ms'], 1)} | {_fmt(r['p99_ms'], 1)} | {errors} | "
                   f"{_fmt(r['added_ttft_p50_ms'], 2)} | {_fmt(r['added_p50_ms'], 2)} | "
                   f"{_fmt(r['cpu_ms_per_request'], 2)} | {_mem_cell(r)} |")
    by_process = [r for r in rows if r["target"] == "chatkore" and r["cpu_ms_by_process"]]
    if by_process:
        names = list(by_process[0]["cpu_ms_by_process"])
        out += ["", "chatkore's CPU per request by process (ms, medians):", "",
                "| scenario | " + " | ".join(names) + " | PG transactions/req |",
                "|---|" + "---|" * (len(names) + 1)]
        for r in by_process:
            cells = [_fmt(r["cpu_ms_by_process"].get(n), 2, spread_=False) for n in names]
            out.append(f"| {r['scenario']} | " + " | ".join(cells) +
                       f" | {_fmt(r['pg_transactions_per_request'], 1, spread_=False)} |")
    return "\n".join(out)


def _row(rows: list[dict[str, Any]], scenario: str, target: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["scenario"] == scenario and r["target"] == target), None)


def _med(row: dict[str, Any] | None, key: str) -> float | None:
    if row is None or row.get(key) is None:
        return None
    return row[key]["median"]


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 16's targets (target and stretch), each with the measured figure and whether it was met."""
    checks: list[dict[str, Any]] = []

    def check(name: str, value: float | None, ok: bool | None, shown: str) -> None:
        checks.append({"target": name, "value": value, "met": ok, "shown": shown})

    def at_most(name: str, value: float | None, target: float, stretch: float | None, where: str) -> None:
        if value is None:
            check(name, None, None, "–")
            return
        extra = "" if stretch is None else (" (stretch met)" if value <= stretch else f" (stretch ≤{stretch:g})")
        check(name, value, value <= target, f"{value:.2f} {where}{extra}")

    wrk_scenarios = [r["scenario"] for r in rows if r["kind"] == "wrk" and r["scenario"].startswith("chat")]
    best = {t: max((_med(_row(rows, s, t), "rps") or 0 for s in wrk_scenarios), default=0)
            for t in ("chatkore", "litellm")}
    at64 = {t: _med(_row(rows, "chat c=64", t), "rps") for t in ("chatkore", "litellm")}
    if at64["litellm"] and at64["chatkore"]:
        ratio = at64["chatkore"] / at64["litellm"]
        check("req/s per core vs LiteLLM, non-stream c=64: ≥5× (stretch ≥10×)", ratio, ratio >= 5,
              f"{ratio:.2f}× ({at64['chatkore']:.0f} vs {at64['litellm']:.0f} req/s)"
              + (" (stretch met)" if ratio >= 10 else ""))
    elif best["litellm"]:
        ratio = best["chatkore"] / best["litellm"]
        check("req/s per core vs LiteLLM: ≥5× (stretch ≥10×)", ratio, ratio >= 5,
              f"{ratio:.2f}× ({best['chatkore']:.0f} vs {best['litellm']:.0f} req/s, best non-stream scenario)")
    else:
        check("req/s per core vs LiteLLM: ≥5×", None, None, "not measured (run `make bench PEER=litellm`)")
    at_most("CPU per request at c=64, incl. PostgreSQL: ≤1.5 ms (stretch ≤1.0)",
            _med(_row(rows, "chat c=64", "chatkore"), "cpu_ms_per_request"), 1.5, 1.0, "ms")
    at_most("CPU per request at c=1: ≤3.0 ms", _med(_row(rows, "chat c=1", "chatkore"), "cpu_ms_per_request"),
            3.0, None, "ms")
    at_most("added p50 at c=1: ≤3.5 ms (stretch ≤3.0)", _med(_row(rows, "chat c=1", "chatkore"), "added_p50_ms"),
            3.5, 3.0, "ms")
    at_most("stream: added time to first chunk (c=16): ≤3.5 ms (stretch ≤3.0)",
            _med(_row(rows, "stream c=16", "chatkore"), "added_ttft_p50_ms"), 3.5, 3.0, "ms")
    at_most("CPU per 20-chunk stream (c=16): ≤10 ms",
            _med(_row(rows, "stream c=16", "chatkore"), "cpu_ms_per_request"), 10.0, None, "ms")
    pss = max((_med(r, "pss_mb") or 0 for r in rows if r["target"] == "chatkore"), default=None)
    rss = max((_med(r, "rss_mb") or 0 for r in rows if r["target"] == "chatkore"), default=None)
    if pss:
        check("memory, four processes at steady load: ≤200 MB PSS (stretch ≤175)", pss, pss <= 200,
              f"PSS {pss:.0f} MB, RSS {rss:.0f} MB (the highest over the scenarios; PostgreSQL not included)"
              + (" (stretch met)" if pss <= 175 else ""))
    hold = _row(rows, "1000 open streams", "chatkore")
    if hold is not None:
        ok = hold["lost"] == 0 and hold["errors"] == 0 and hold["most_open"] >= 1000
        check("1,000 concurrent streams, zero loss", hold["lost"], ok,
              f"lost {hold['lost']}, errors {hold['errors']}, {hold['most_open']} open at once")
    return checks


def targets_table(checks: list[dict[str, Any]]) -> str:
    mark = {True: "met", False: "**not met**", None: "not measured"}
    lines = ["| target (issue 16) | measured | |", "|---|---|---|"]
    lines += [f"| {c['target']} | {c['shown']} | {mark[c['met']]} |" for c in checks]
    return "\n".join(lines)


def update_readme(readme: Path, section: str) -> None:
    text = readme.read_text()
    block = f"{README_START}\n{section.strip()}\n{README_END}"
    if README_START in text and README_END in text:
        text = re.sub(re.escape(README_START) + ".*?" + re.escape(README_END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n## Performance\n\n" + block + "\n"
    readme.write_text(text)
