"""`make bench`: every scenario, direct to the mock and through chatkore (and LiteLLM), in alternating rounds."""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench import procs, report, scenarios, streams, wrk
from bench.targets import Chatkore, LiteLLM, Mock, Target
from tools.stack import ROOT, wait_until

RESULTS = ROOT / "bench" / "results"
WORK = ROOT / ".bench"
STACK_CORE, LOAD_CORE = 0, 1


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="make bench", description=__doc__)
    p.add_argument("--peer", choices=["litellm"], help="also measure this peer, in the same rounds")
    p.add_argument("--soak", action="store_true", help="10 minutes of steady load instead, memory sampled")
    p.add_argument("--soak-s", type=float, default=600.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--hold-rounds", type=int, default=1, help="rounds of the 1,000-stream scenario")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of measured load per run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load before each run")
    p.add_argument("--ramp", type=float, default=10.0, help="seconds over which the 1,000 streams open")
    p.add_argument("--users", type=int, default=1,
                   help="tenants (user + key) chatkore's non-streamed load takes in turn; 1 = one hot account")
    p.add_argument("--only", default="", help="comma-separated scenario names (substrings) to run")
    p.add_argument("--quick", action="store_true", help="one short round: checks the harness, not the speed")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    p.add_argument("--no-readme", action="store_true", help="leave README's Performance section alone")
    p.add_argument("--label", default="", help="a word for the result file names")
    p.add_argument("--render", type=Path, help="rewrite README's Performance section from this result JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup, args.ramp = 1, 3.0, 0.5, 5.0
    return args


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": model, "cores": os.cpu_count(), "memory_gb": round(mem_gb, 1), "kernel": platform.release(),
            "python": platform.python_version(), "loadavg_at_start": os.getloadavg()}


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def _raise_open_files() -> None:
    # 1,000 streams hold ~1,000 sockets in the client, the edge, inference and the mock.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _pinning(args: argparse.Namespace) -> tuple[int | None, int | None, str]:
    if args.no_pin:
        return None, None, "not pinned (--no-pin)"
    if not procs.taskset_available():
        return None, None, "not pinned: taskset is missing or the machine has one core"
    os.sched_setaffinity(0, {LOAD_CORE})  # this process runs the stream client
    return STACK_CORE, LOAD_CORE, (f"pinned with taskset: the stack under test (chatkore's four processes and "
                                   f"PostgreSQL, or LiteLLM) on core {STACK_CORE}; the mock, wrk and the stream "
                                   f"client on core {LOAD_CORE}")


def _show(run: dict[str, Any]) -> str:
    cpu = run.get("cpu_ms_per_request")
    parts = [f"{run['rps']:.1f}/s", f"p50 {run['p50_ms'] or 0:.2f} ms", f"p99 {run['p99_ms'] or 0:.2f} ms"]
    if run.get("ttft_p50_ms") is not None:
        parts.append(f"ttft p50 {run['ttft_p50_ms']:.2f} ms")
    parts.append(f"errors {run['errors']}/{run['requests']}")
    if cpu is not None:
        parts.append(f"cpu {cpu:.2f} ms/req")
    if run.get("lost") is not None:
        parts.append(f"lost {run['lost']}, {run['most_open']} open at once")
    return ", ".join(parts)


def measure(target: Target, s: scenarios.Scenario, args: argparse.Namespace, load_core: int | None,
            hold_streams: int) -> dict[str, Any]:
    if s.kind == "wrk":
        return scenarios.run_wrk(target, s, args.duration, args.warmup, WORK, load_core)
    if s.kind == "stream":
        return scenarios.run_streams(target, s, args.duration, args.warmup)
    held = scenarios.Scenario(s.name, s.kind, s.endpoint, s.model, hold_streams, s.body)
    return scenarios.run_hold(target, held, args.ramp)


def _write(name: str, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path, md_path = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    json_path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    md_path.write_text(markdown + "\n")
    return json_path, md_path


def _header(data: dict[str, Any]) -> str:
    m = data["machine"]
    return (f"Measured {data['date']} on {m['cpu']} ({m['cores']} cores, {m['memory_gb']} GB, Linux {m['kernel']}, "
            f"Python {m['python']}), commit {data['commit']}; load average {m['loadavg_at_start'][0]:.2f} at the "
            f"start, {data['loadavg_at_end'][0]:.2f} at the end. {_sentence(data['pinning'])}. "
            f"{data['rounds']} round(s) of {data['duration_s']:.0f} s per scenario and target, direct and through "
            f"the gateway alternating. Full billing on (every request authenticated, held, settled, with a "
            f"usage row); {_tenants(data.get('users', 1))}.")


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _tenants(users: int) -> str:
    if users > 1:
        return f"chatkore's non-streamed load spread over {users} tenants"
    return "one tenant (one account row that every request locks)"


def benchmark(args: argparse.Namespace) -> int:
    stack_core, load_core, pinning = _pinning(args)
    print(f"bench: {pinning}", flush=True)
    chosen = [s for s in scenarios.SCENARIOS
              if not args.only or any(w.strip() and w.strip() in s.name for w in args.only.split(","))]
    hold_streams = 1000
    log_dir = WORK / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit(),
                            "machine": machine(), "pinning": pinning, "rounds": args.rounds,
                            "duration_s": args.duration, "warmup_s": args.warmup, "peer": args.peer,
                            "quick": args.quick, "users": args.users, "runs": []}
    targets: list[Target] = []
    try:
        mock = Mock(load_core, log_dir)
        targets.append(mock)
        chatkore = Chatkore(mock, stack_core, WORK, log_dir, users=args.users)
        targets.append(chatkore)
        if args.peer == "litellm":
            targets.append(LiteLLM(mock, stack_core, WORK, log_dir))
        print(f"bench: targets up: {', '.join(t.name for t in targets)}", flush=True)
        for s in chosen:
            rounds = args.rounds if s.kind != "hold" else min(args.rounds, args.hold_rounds)
            for rnd in range(rounds):
                order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
                for target in order:
                    run = measure(target, s, args, load_core, hold_streams)
                    run.update({"scenario": s.name, "kind": s.kind, "target": target.name, "round": rnd})
                    data["runs"].append(run)
                    print(f"bench: {s.name:<18} round {rnd + 1}/{rounds} {target.name:<9} {_show(run)}", flush=True)
        data["integrity"] = _integrity(chatkore, data["runs"])
    finally:
        for target in reversed(targets):
            target.stop()
    data["loadavg_at_end"] = os.getloadavg()
    data["summary"] = report.aggregate(data["runs"])
    data["targets"] = report.targets(data["summary"])
    body = _body(data)
    label = args.label or ("quick" if args.quick else (args.peer or "chatkore"))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M")
    json_path, md_path = _write(f"{stamp}-{label}", data, f"# make bench — {data['date']}\n\n{body}")
    print("\n" + body + "\n", flush=True)
    print(f"bench: results in {json_path.relative_to(ROOT)} and {md_path.relative_to(ROOT)}", flush=True)
    if not args.quick and not args.only and not args.no_readme:
        _readme(data, json_path)
    return 0 if data["integrity"]["ok"] else 1


def _body(data: dict[str, Any]) -> str:
    return "\n\n".join([_header(data), report.tables(data["summary"]), report.targets_table(data["targets"]),
                        _integrity_line(data["integrity"])])


def _readme(data: dict[str, Any], json_path: Path) -> None:
    command = "make bench" + (f" PEER={data['peer']}" if data.get("peer") else "")
    report.update_readme(ROOT / "README.md", f"""\
`make bench` starts the stack and a fast mock upstream, drives it with `wrk` (non-streamed) and an
open-loop asyncio client (streams), and sends the same load straight to the mock in the same run,
so "added" columns are what chatkore costs over the upstream alone. CPU per request is summed
over every process of the stack, PostgreSQL's included, from `/proc`. `make bench PEER=litellm`
adds LiteLLM's proxy (one worker, same core, same mock, no database) to the same rounds;
`make bench SOAK=1` runs ten minutes of steady load and samples memory; `make bench PROFILE=1`
shows where each service's CPU goes (py-spy). Results: `bench/results/`; where the time goes and
what would cut it: `bench/FINDINGS.md`.

The latest `{command}` (`{json_path.relative_to(ROOT)}`). Read the load
averages in the line below (the harness's own load is about 1.5) and the min–max spreads
before quoting a figure.

{_body(data)}{_soak_line()}""")
    print("bench: README.md's Performance section updated", flush=True)


def _soak_line() -> str:
    """The latest soak's verdict, for README."""
    soaks = sorted(RESULTS.glob("*-soak.json"))
    if not soaks:
        return ""
    d = json.loads(soaks[-1].read_text())
    return (f"\n\nSoak (`make bench SOAK=1`, {d['date']}, `{soaks[-1].relative_to(ROOT)}`): {d['soak_s']:.0f} s of "
            f"chat at c=64 plus streams, {d['chat']['rps']:.0f} req/s, errors {d['chat']['errors']}, "
            f"{d['streams']['completed']}/{d['streams']['requests']} streams whole; the four services' memory "
            f"{d['flatness']['text']}.")


def render(path: Path) -> int:
    """README's Performance section again from a saved result, without measuring."""
    _readme(json.loads(path.read_text()), path.resolve())
    return 0


def _integrity(chatkore: Chatkore, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The books after the whole run: no hold left open, the ledger balanced, every success billed."""
    try:
        wait_until(lambda: chatkore.verify()["open_holds"] == 0, 15, "every hold to close")
    except TimeoutError:
        pass
    verify = chatkore.verify()
    unbilled = []
    for r in runs:
        if r["target"] != "chatkore":
            continue
        ok = r.get("completed", r["requests"] - r["errors"])
        complete = (r.get("usage_rows_added") or {}).get("complete", 0)
        if complete < ok:
            unbilled.append(f"{r['scenario']} round {r['round'] + 1}: {ok} answered, {complete} complete usage rows")
    # A hold still open here belongs to a request whose client left while the hold was being placed
    # (wrk drops its connections when it stops); chatkore's sweeper releases it after CHATKORE_HOLD_TTL_S.
    open_holds = chatkore.sql("SELECT request_id, extract(epoch FROM now() - created_at)::int FROM requests"
                              " WHERE state = 'held' ORDER BY created_at LIMIT 50")
    return {"ok": verify["ok"] and not unbilled, "ledger": verify, "unbilled": unbilled,
            "open_holds": [{"request_id": r, "age_s": age} for r, age in open_holds]}


def _integrity_line(integrity: dict[str, Any]) -> str:
    ledger = integrity["ledger"]
    if integrity["ok"]:
        held = (f"{ledger['open_holds']} hold(s) still open 15 s after the load stopped (requests whose client "
                f"left while the hold was being placed; the sweeper releases them)" if ledger["open_holds"]
                else "no hold open")
        return (f"Books after the run: ledger verified ({ledger['entries']} entries, sum {ledger['ledger_sum']}), "
                f"{held}, every answered request has its `complete` usage row.")
    return (f"**Books after the run are not right**: ledger ok={ledger['ok']} problems={ledger['problems']}, "
            f"open holds {ledger['open_holds']}, unbilled: {integrity['unbilled']}")


def soak(args: argparse.Namespace) -> int:
    """Steady load (chat at c=64 with wrk, streams at ~8 in flight) for `soak_s`; memory every 10 s."""
    stack_core, load_core, pinning = _pinning(args)
    print(f"bench: {pinning}", flush=True)
    log_dir = WORK / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    chat = next(s for s in scenarios.SCENARIOS if s.name == "chat c=64")
    stream = next(s for s in scenarios.SCENARIOS if s.name == "stream c=16")
    mock = Mock(load_core, log_dir)
    chatkore = None
    samples: list[dict[str, Any]] = []
    try:
        chatkore = Chatkore(mock, stack_core, WORK, log_dir)
        lua = wrk.script(scenarios.body_bytes(chat), chatkore.key, WORK)
        url = f"http://127.0.0.1:{chatkore.port}{chatkore.path(chat.model, chat.endpoint)}"
        stream_body = scenarios.body_bytes(stream)
        stream_path = chatkore.path(stream.model, stream.endpoint)
        holder: dict[str, Any] = {}

        def stream_load() -> None:
            holder["results"], holder["span"] = asyncio.run(streams.open_loop(
                "127.0.0.1", chatkore.port, stream_path, stream_body, chatkore.key, rate=8, duration_s=args.soak_s))

        streamer = threading.Thread(target=stream_load, daemon=True)
        streamer.start()
        chatkore.group.start()
        started = time.monotonic()
        proc = wrk.start(url, lua, connections=64, duration_s=args.soak_s, core=load_core)
        print(f"bench: soak running for {args.soak_s:.0f} s (chat c=64 + streams at 8/s)", flush=True)
        while proc.poll() is None:
            time.sleep(10)
            mem = chatkore.group.memory()
            sample = {"t_s": round(time.monotonic() - started, 1),
                      "rss_mb": sum(mem[n].rss_kb for n in report.SERVICES) / 1024,
                      "pss_mb": sum(mem[n].pss_kb for n in report.SERVICES) / 1024,
                      "pg_pss_mb": mem["postgres"].pss_kb / 1024,
                      "by_process_rss_mb": {n: m.rss_kb / 1024 for n, m in mem.items()}}
            samples.append(sample)
            print(f"bench: soak t={sample['t_s']:.0f}s services RSS {sample['rss_mb']:.1f} MB PSS "
                  f"{sample['pss_mb']:.1f} MB, PostgreSQL PSS {sample['pg_pss_mb']:.1f} MB", flush=True)
        result = wrk.finish(proc, 60)
        cpu = chatkore.group.used()
        streamer.join(300)
        stream_summary = scenarios.summarise_streams(holder.get("results", []), holder.get("span", 0.0))
        lua.unlink(missing_ok=True)
        integrity = _integrity(chatkore, [])
    finally:
        if chatkore is not None:
            chatkore.stop()
        mock.stop()
    done = result.requests - result.status_errors + stream_summary["completed"]
    flat = _flatness(samples)
    data = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit(),
            "machine": machine(), "pinning": pinning, "soak_s": args.soak_s, "samples": samples, "flatness": flat,
            "chat": {"rps": result.rps, "requests": result.requests, "errors": result.errors,
                     "p50_ms": result.p50_ms, "p99_ms": result.p99_ms},
            "streams": stream_summary, "cpu_ms_per_request": 1000 * sum(cpu.values()) / done if done else None,
            "cpu_s": cpu, "integrity": integrity}
    md = (f"# make bench SOAK=1 — {data['date']}\n\n{_sentence(pinning)}. {args.soak_s:.0f} s of chat at c=64 "
          f"(wrk) plus streams at 8/s, full billing on.\n\n"
          f"- chat: {result.rps:.0f} req/s, p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, errors "
          f"{result.errors}/{result.requests}\n"
          f"- streams: {stream_summary['completed']}/{stream_summary['requests']} whole, errors "
          f"{stream_summary['errors']}\n"
          f"- CPU per request, chat requests and streams together (all processes incl. PostgreSQL): "
          f"{data['cpu_ms_per_request']:.2f} ms\n"
          f"- memory of the four services, sampled every 10 s: {flat['text']}\n"
          f"- PostgreSQL's PSS (not judged: it grows while its shared buffers fill, up to shared_buffers): "
          f"{samples[0]['pg_pss_mb']:.0f} MB at the start, {samples[-1]['pg_pss_mb']:.0f} MB at the end\n"
          f"- {_integrity_line(integrity)}\n\n"
          "| t (s) | services RSS MB | services PSS MB | PostgreSQL PSS MB |\n|---|---|---|---|\n" +
          "\n".join(f"| {s['t_s']:.0f} | {s['rss_mb']:.1f} | {s['pss_mb']:.1f} | {s['pg_pss_mb']:.1f} |"
                    for s in samples))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M")
    json_path, md_path = _write(f"{stamp}-soak", data, md)
    print("\n" + md + "\n", flush=True)
    print(f"bench: results in {json_path.relative_to(ROOT)} and {md_path.relative_to(ROOT)}", flush=True)
    return 0 if flat["flat"] and integrity["ok"] else 1


def _flatness(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Flat = after a minute of warm-up, every sample within ±5% of the first steady minute's median."""
    steady = [s for s in samples if s["t_s"] >= 60]
    if len(steady) < 3:
        return {"flat": False, "text": "too few samples to judge (the soak was shorter than 90 s)"}
    first_minute = [s for s in steady if s["t_s"] < 120] or steady[:3]
    out: dict[str, Any] = {}
    for key in ("rss_mb", "pss_mb"):
        base = sorted(s[key] for s in first_minute)[len(first_minute) // 2]
        worst = max(steady, key=lambda s, k=key, b=base: abs(s[k] - b))
        out[key] = {"baseline": base, "last": steady[-1][key], "worst_deviation_pct": 100 * (worst[key] - base) / base,
                    "min": min(s[key] for s in steady), "max": max(s[key] for s in steady)}
    ok = all(abs(v["worst_deviation_pct"]) <= 5 for v in out.values())
    out["flat"] = ok
    out["text"] = (f"RSS {out['rss_mb']['baseline']:.1f} MB after the first minute, {out['rss_mb']['last']:.1f} MB at "
                   f"the end (range {out['rss_mb']['min']:.1f}–{out['rss_mb']['max']:.1f}, worst "
                   f"{out['rss_mb']['worst_deviation_pct']:+.1f}%); PSS {out['pss_mb']['baseline']:.1f} → "
                   f"{out['pss_mb']['last']:.1f} MB (worst {out['pss_mb']['worst_deviation_pct']:+.1f}%): "
                   + ("flat within ±5%" if ok else "**not flat within ±5%**"))
    return out


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.render:
        return render(args.render)
    wrk.ensure_installed()
    _raise_open_files()
    WORK.mkdir(exist_ok=True)
    return soak(args) if args.soak else benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
