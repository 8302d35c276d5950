"""`make bench`'s harness checked quickly: the fast mock, the stream client through chatkore, /proc, the report.

Correctness only; the benchmark itself measures speed (never timed assertions here).
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from bench import mock as bench_mock
from bench import procs, report, streams, wrk
from bench.targets import Mock
from tests.world import World


@pytest.fixture(scope="module")
def fast_mock(tmp_path_factory) -> Iterator[Mock]:
    m = Mock(None, tmp_path_factory.mktemp("bench-mock"))
    yield m
    m.stop()


def test_mock_answers_as_openai_does(fast_mock: Mock) -> None:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{fast_mock.port}/v1", api_key="sk-x", max_retries=0)
    reply = client.chat.completions.create(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content and reply.usage.prompt_tokens == bench_mock.PROMPT_TOKENS
    chunks = list(client.chat.completions.create(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "hi"}],
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == bench_mock.streamed_text()
    assert len([c for c in chunks if c.choices]) == bench_mock.CHUNKS
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == bench_mock.CHUNKS
    vector = client.embeddings.create(model="text-embedding-ada-002", input="x", encoding_format="float")
    assert len(vector.data[0].embedding) == bench_mock.EMBEDDING_DIMS


def test_stream_client_reads_chatkore_streams_whole(world: World, fast_mock: Mock) -> None:
    """The open-loop client against the real stack, pointed at the fast mock: every stream whole and billed."""
    model = world.model()
    spaced = f"http://127.0.0.1:{fast_mock.port}/i2/v1"  # chunks 2 ms apart
    world.admin("POST", "/admin/v1/channels", {"name": f"bench-{model}", "base_url": spaced, "api_key": "sk-mock",
                                               "models": [model]}, expect=201)
    tenant = world.tenant(credits=1000)  # each hold covers a whole 16k-token completion
    body = f'{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"stream":true}}'.encode()
    tally = streams.Tally()
    results, span = asyncio.run(streams.open_loop("127.0.0.1", world.stack.http_port, "/v1/chat/completions", body,
                                                  tenant.key, rate=50, duration_s=0.1, tally=tally))
    assert len(results) == 5 and span > 0
    for r in results:
        assert r.ok(bench_mock.streamed_text()), r
        assert r.ttft_s is not None and r.total_s is not None and r.total_s >= r.ttft_s
    assert tally.most >= 1 and tally.open == 0
    rows = world.usage(tenant.user_id)
    assert len(rows) == 5 and {r["status"] for r in rows} == {"complete"}


def test_stream_client_counts_a_refusal_as_an_error(world: World, fast_mock: Mock) -> None:
    body = b'{"model":"gpt-3.5-turbo","messages":[{"role":"user","content":"hi"}],"stream":true}'
    results, _ = asyncio.run(streams.open_loop("127.0.0.1", world.stack.http_port, "/v1/chat/completions", body,
                                               "sk-not-a-key", rate=10, duration_s=0.1))
    assert results and all(r.error.startswith("http 401") and not r.ok(bench_mock.streamed_text()) for r in results)


def test_process_accounting_reads_proc() -> None:
    group = procs.Group({"me": [os.getpid()]})
    group.start()
    spent = time.process_time()
    while time.process_time() - spent < 0.05:  # burn a little CPU for the counter to move
        sum(range(1000))
    assert group.used()["me"] > 0
    memory = group.memory()["me"]
    assert memory.rss_kb > 0 and 0 < memory.pss_kb <= memory.rss_kb
    assert os.getpid() in procs.children_of(os.getppid())
    assert procs.cpu_seconds(2**22 + 12345) is None  # no such process


def test_wrk_summary_is_parsed() -> None:
    out = ("Running 1s test @ http://x\nWRKJSON {\"requests\":300,\"duration_us\":1500000,\"bytes\":1,\"connect\":0,"
           "\"read\":1,\"write\":0,\"status\":2,\"timeout\":0,\"p50_us\":1500,\"p90_us\":2000,\"p99_us\":9000,"
           "\"max_us\":12000,\"mean_us\":1600.5}\n")
    result = wrk.parse(out)
    assert result.rps == 200 and result.errors == 3 and result.status_errors == 2
    assert (result.p50_ms, result.p99_ms) == (1.5, 9.0)
    with pytest.raises(RuntimeError):
        wrk.parse("wrk: connection refused")


def _run(target: str, rnd: int, rps: float, p50: float, cpu: float | None = None) -> dict:
    return {"scenario": "chat c=1", "kind": "wrk", "target": target, "round": rnd, "rps": rps, "requests": 100,
            "errors": 0, "p50_ms": p50, "p99_ms": p50 * 2, "cpu_ms_per_request": cpu,
            "memory": {n: {"rss_mb": 40.0, "pss_mb": 30.0} for n in ("edge", "auth", "billing", "inference")}}


def test_report_compares_each_round_with_its_direct_run(tmp_path: Path) -> None:
    runs = [_run("direct", 0, 5000, 0.5), _run("chatkore", 0, 400, 3.0, 2.5),
            _run("direct", 1, 5000, 1.5), _run("chatkore", 1, 500, 3.5, 1.5),
            _run("direct", 2, 5000, 0.5), _run("chatkore", 2, 450, 2.0, 2.0)]
    rows = report.aggregate(runs)
    ck = next(r for r in rows if r["target"] == "chatkore")
    assert ck["added_p50_ms"] == {"median": 2.0, "min": 1.5, "max": 2.5, "n": 3}
    assert ck["rps"]["median"] == 450 and ck["rss_mb"]["median"] == 160
    checks = {c["target"]: c["met"] for c in report.targets(rows)}
    assert checks["added p50 at c=1: ≤3.5 ms (stretch ≤3.0)"] is True        # 2.0 ms
    assert checks["CPU per request at c=1: ≤3.0 ms"] is True                  # 2.0 ms, the median
    assert checks["memory, four processes at steady load: ≤200 MB PSS (stretch ≤175)"] is True  # 4 × 30 MB
    assert checks["req/s per core vs LiteLLM: ≥5×"] is None
    assert checks["CPU per request at c=64, incl. PostgreSQL: ≤1.5 ms (stretch ≤1.0)"] is None  # not run
    slow = report.aggregate([_run("direct", 0, 5000, 0.5), _run("chatkore", 0, 100, 5.0, 4.0)])
    assert {c["target"]: c["met"] for c in report.targets(slow)}["CPU per request at c=1: ≤3.0 ms"] is False
    table = report.tables(rows)
    assert "| chat c=1 | chatkore | 450 (400–500) |" in table
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n## Tests\n\ntext\n")
    report.update_readme(readme, "first")
    report.update_readme(readme, "second")
    text = readme.read_text()
    assert text.count("## Performance") == 1 and "second" in text and "first" not in text
