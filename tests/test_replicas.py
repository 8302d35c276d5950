"""Many replicas behind one edge: load spreads over all of them, and a replica that dies
mid-load loses no request that had not yet reached the client; nothing is charged twice,
the books balance and no hold stays open."""
from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal

import requests

from tests import mock_upstream as up
from tests import scrape
from tests.world import World
from tools.stack import wait_until

MSG = [{"role": "user", "content": "Say this is a test!"}]
REPLICAS = {"auth": 2, "billing": 2, "inference": 2}
WORKERS = 6
PER_WORKER = 24
KILL_AFTER = 40   # requests finished before one replica of each service is killed
VICTIMS = ("inference-2", "billing-2", "auth-2")


@dataclass
class Outcome:
    stream: bool
    ok: bool
    delivered: bool  # something had reached the client before it failed
    request_id: str
    detail: str = ""


def _one(url: str, key: str, model: str, stream: bool) -> Outcome:
    body = {"model": model, "messages": MSG, "stream": stream}
    try:
        resp = requests.post(url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                             stream=stream, timeout=60)
    except requests.RequestException as exc:
        return Outcome(stream, False, False, "", repr(exc))
    rid = resp.headers.get("x-request-id", "")
    if resp.status_code != 200:
        return Outcome(stream, False, False, rid, f"{resp.status_code} {resp.text[:200]}")
    if not stream:
        return Outcome(stream, bool(resp.json().get("choices")), True, rid)
    events = [line for line in resp.iter_lines() if line]
    chunks = [json.loads(e.removeprefix(b"data: ")) for e in events if e != b"data: [DONE]"]
    failed = [c for c in chunks if "error" in c]
    ok = events[-1:] == [b"data: [DONE]"] and not failed
    return Outcome(stream, ok, True, rid, json.dumps(failed)[:300])


def _served(stack, process: str, method: str) -> float:
    return scrape.value(scrape.scrape(stack, process), "chatkore_grpc_requests_total",
                        method=f"chatkore.v1.{method}", code="OK")


def test_load_spreads_over_replicas_and_survives_losing_one(make_stack, mock) -> None:
    stack = make_stack(name="replicas", replicas=REPLICAS,
                       env={"CHATKORE_HOLD_TTL_S": "8", "CHATKORE_KEY_CACHE_S": "0.1"})
    w = World(stack, mock)
    model, tag = w.served_model(prompt=1, completion=1)
    w.mock.always(tag, up.ok(pieces=8, delay_s=0.01))
    tenants = [w.tenant(credits=1000) for _ in range(WORKERS)]
    done = 0
    done_lock = threading.Lock()
    killed = threading.Event()
    after_kill: list[Outcome] = []

    def worker(i: int) -> list[Outcome]:
        nonlocal done
        outcomes = []
        for n in range(PER_WORKER):
            outcome = _one(w.url, tenants[i].key, model, stream=(i + n) % 2 == 0)
            outcomes.append(outcome)
            with done_lock:
                done += 1
                if killed.is_set():
                    after_kill.append(outcome)
        return outcomes

    with ThreadPoolExecutor(WORKERS) as pool:
        runs = [pool.submit(worker, i) for i in range(WORKERS)]
        wait_until(lambda: done >= KILL_AFTER or any(r.done() for r in runs), 120, "the load to get going")
        # Before the kill, every replica of every service took part.
        for process in stack.grpc_processes("inference"):
            assert _served(stack, process, "Inference/Relay") + _served(stack, process, "Inference/RelayStream") > 0
        for process in stack.grpc_processes("billing"):
            assert _served(stack, process, "Billing/Reserve") > 0 and _served(stack, process, "Billing/Settle") > 0
        for process in stack.grpc_processes("auth"):
            assert _served(stack, process, "Auth/Authenticate") > 0
        for victim in VICTIMS:
            stack.kill(victim)  # SIGKILL: no goodbye, calls in flight break
        killed.set()
        outcomes = [o for r in runs for o in r.result()]

    assert len(outcomes) == WORKERS * PER_WORKER
    lost = [o for o in outcomes if not o.ok and not o.delivered]
    assert not lost, f"requests lost before anything reached the client: {lost}"
    # A stream cut mid-way by the dead inference replica told its client in-band; nothing else failed.
    cut = [o for o in outcomes if not o.ok]
    assert all(o.stream and o.delivered for o in cut), cut
    assert len(after_kill) > WORKERS and all(o.ok for o in after_kill[WORKERS:]), after_kill
    assert stack.procs["inference"].poll() is None and stack.procs["billing"].poll() is None

    # Nothing charged twice: one usage row per request, each completed request settled complete once;
    # holds of streams cut by the dead replica are released by the sweeper (their TTL here is 8 s).
    wait_until(lambda: w.verify()["open_holds"] == 0, 30, "every hold to close")
    report = w.verify()
    assert report["ok"], report["problems"]
    rows = {r["request_id"]: r for t in tenants for r in w.usage(t.user_id, limit=1000)}
    assert len(rows) == len(outcomes)
    for o in outcomes:
        assert (rows[o.request_id]["status"] == "complete") == o.ok, (o, rows[o.request_id])
    spent = sum(Decimal(1000) - w.balance(t.user_id) for t in tenants)
    assert spent == sum(Decimal(str(r["credits"])) for r in rows.values())
    assert all(w.held(t.user_id) == 0 for t in tenants)
