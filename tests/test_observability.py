"""Operators can see what happens: Prometheus metrics on every process, one request's id in
the logs of all four, and (with an OTLP endpoint) one trace from the edge to the upstream."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from decimal import Decimal

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests import scrape
from tests.mock_upstream import MockUpstream
from tests.world import World
from tools.stack import wait_until

MSG = [{"role": "user", "content": "Say this is a test!"}]
PROCESSES = ("edge", "auth", "billing", "inference")


def test_metrics_move_on_every_process_for_one_request(world: World) -> None:
    model = world.model(prompt=1, completion=2)
    channel_id, _ = world.channel([model])
    t = world.tenant()  # a new key: its first request reaches auth, not the edge's key cache
    before = {p: scrape.scrape(world.stack, p) for p in PROCESSES}

    reply = t.client.chat.completions.create(model=model, messages=MSG)
    [row] = world.usage(t.user_id)
    after = {p: scrape.scrape(world.stack, p) for p in PROCESSES}

    def moved(process: str, name: str, **labels: str) -> float:
        return scrape.value(after[process], name, **labels) - scrape.value(before[process], name, **labels)

    route = {"route": "/v1/chat/completions", "model": model}
    assert moved("edge", "chatkore_http_requests_total", status="200", **route) == 1
    assert moved("edge", "chatkore_http_request_duration_seconds_count", **route) == 1
    assert moved("auth", "chatkore_grpc_requests_total", method="chatkore.v1.Auth/Authenticate", code="OK") == 1
    for method in ("Reserve", "Settle"):
        assert moved("billing", "chatkore_grpc_requests_total", method=f"chatkore.v1.Billing/{method}", code="OK") == 1
    assert moved("billing", "chatkore_credits_charged_total", status="complete") == pytest.approx(
        float(Decimal(str(row["credits"]))), abs=1e-9)  # a float counter that has summed many charges
    assert moved("inference", "chatkore_grpc_requests_total", method="chatkore.v1.Inference/Relay", code="OK") == 1
    assert moved("inference", "chatkore_grpc_request_duration_seconds_count",
                 method="chatkore.v1.Inference/Relay") == 1
    assert moved("inference", "chatkore_upstream_requests_total", channel=str(channel_id), outcome="ok") == 1
    assert moved("inference", "chatkore_tokens_total", model=model, kind="prompt") == reply.usage.prompt_tokens
    assert moved("inference", "chatkore_tokens_total", model=model, kind="completion") == \
        reply.usage.completion_tokens
    # Gauges read when scraped: the pools exist and are open; no hold is left open by this call.
    for process in ("auth", "billing", "inference"):
        assert scrape.value(after[process], "chatkore_db_pool_connections", pool=process, state="size") >= 1
    assert ("chatkore_holds_open", frozenset()) in after["billing"]


def test_unknown_model_names_stay_out_of_metric_labels(world: World) -> None:
    t = world.tenant()
    for i in range(3):
        resp = world.http.post(world.url + "/v1/chat/completions", json={"model": f"no-such-{i}", "messages": MSG},
                               headers={"Authorization": f"Bearer {t.key}"}, timeout=30)
        assert resp.status_code == 404
    samples = scrape.scrape(world.stack, "edge")
    assert not [labels for (name, labels) in samples if ("model", "no-such-0") in labels]
    assert scrape.value(samples, "chatkore_http_requests_total", route="/v1/chat/completions", model="",
                        status="404") >= 3


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector that keeps (service, trace id, span name, kind)."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str, int]] = []
        self._lock = threading.Lock()

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,  # noqa: N802 - gRPC's name
               context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            for resource_spans in request.resource_spans:
                service = next((a.value.string_value for a in resource_spans.resource.attributes
                                if a.key == "service.name"), "")
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append((service, span.trace_id.hex(), span.name, span.kind))
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: str) -> list[tuple[str, str, int]]:
        with self._lock:
            return [(s, name, kind) for s, t, name, kind in self.spans if t == trace_id]


@pytest.fixture(scope="module")
def observed(make_stack, mock: MockUpstream) -> Iterator[tuple[World, _Collector]]:
    """One stack for the module's two tests that need every process set apart: DEBUG logs, and
    traces exported to a collector of the test's own (OTLP over gRPC)."""
    collector = _Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        stack = make_stack(name="observed", env={"CHATKORE_LOG_LEVEL": "DEBUG",
                                                 "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                                                 "OTEL_BSP_SCHEDULE_DELAY": "100"})
        yield World(stack, mock), collector
        stack.stop()  # while the collector still takes the exporters' last spans
    finally:
        server.stop(0)


def test_one_request_id_is_in_the_logs_of_all_four_processes(observed: tuple[World, _Collector]) -> None:
    """At DEBUG every process logs the call under its request id; a served call's lines inside
    the services are DEBUG, so at the default INFO the edge's access line is its only line
    (issue 16: no per-call INFO line inside the services)."""
    world, _ = observed
    model, _ = world.served_model()
    t = world.tenant()
    raw = t.client.chat.completions.with_raw_response.create(model=model, messages=MSG, stream=True)
    for _ in raw.parse():
        pass
    rid = raw.headers["x-request-id"]

    def lines_with_id() -> dict[str, list[dict]]:
        found = {p: [line for line in scrape.log_lines(world.stack, p) if line.get("request_id") == rid]
                 for p in PROCESSES}
        # The settlement follows the reply (billing's Settle may be logged a moment after it).
        settled = any(line["msg"].startswith("chatkore.v1.Billing/Settle OK") for line in found["billing"])
        return found if all(found.values()) and settled else {}

    found = wait_until(lines_with_id, 10, f"{rid} in the logs of {', '.join(PROCESSES)}")
    assert {line["service"] for lines in found.values() for line in lines} == set(PROCESSES)
    assert any(line["msg"].startswith("chatkore.v1.Inference/RelayStream OK") for line in found["inference"])
    assert any(line["msg"].startswith("chatkore.v1.Billing/Settle OK") for line in found["billing"])
    assert any("POST /v1/chat/completions 200" in line["msg"] and line["level"] == "info" for line in found["edge"])
    services = [line for p in PROCESSES if p != "edge" for line in found[p]]
    assert {line["level"] for line in services} == {"debug"}, [line for line in services if line["level"] != "debug"]
    # The key itself never reaches a log line.
    for process in PROCESSES:
        assert t.key not in (world.stack.log_dir / f"{process}.log").read_text()


def test_one_trace_runs_from_the_edge_through_every_service_to_the_upstream(
        observed: tuple[World, _Collector]) -> None:
    w, collector = observed
    model, tag = w.served_model()
    t = w.tenant()
    t.client.chat.completions.create(model=model, messages=MSG)

    # The upstream got the trace's context in a W3C traceparent header.
    traceparent = w.mock.received(tag)[-1].headers["traceparent"]
    trace_id = traceparent.split("-")[1]
    want = {
        ("chatkore-edge", "POST /v1/chat/completions"),
        ("chatkore-edge", "chatkore.v1.Inference/Relay"),
        ("chatkore-edge", "chatkore.v1.Auth/Authenticate"),
        ("chatkore-auth", "chatkore.v1.Auth/Authenticate"),
        ("chatkore-inference", "chatkore.v1.Inference/Relay"),
        ("chatkore-inference", "chatkore.v1.Billing/Reserve"),
        ("chatkore-inference", "POST upstream"),
        ("chatkore-billing", "chatkore.v1.Billing/Reserve"),
        ("chatkore-billing", "chatkore.v1.Billing/Settle"),
    }
    seen = wait_until(lambda: want <= (got := {(s, n) for s, n, _ in collector.trace(trace_id)}) and got, 15,
                      "every span of the request to reach the collector")
    assert want <= seen
