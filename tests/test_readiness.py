"""Probes while something is down (README: Probes). A service down: /healthz names it, the
others stay SERVING, the edge stays ready. PostgreSQL down: every service's readiness is
NOT_SERVING but its liveness stays SERVING (an outage takes replicas out of the balancer, it
does not restart them), /healthz says so, /readyz still answers; all of it comes back."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import grpc
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.migrations import apply_all
from tests.world import World
from tools import pg
from tools.stack import GRPC_SERVICES, Stack, wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _health(stack: Stack, process: str, service: str) -> int:
    """`process`'s answer for `service` on its plaintext health port (what a kubelet probe asks)."""
    with grpc.insecure_channel(f"127.0.0.1:{stack.health_ports[process]}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return reply.status


def _healthz(stack: Stack) -> tuple[int, dict]:
    resp = requests.get(stack.url + "/healthz", timeout=10)
    return resp.status_code, resp.json()


def _readyz(stack: Stack) -> tuple[int, dict]:
    resp = requests.get(stack.url + "/readyz", timeout=10)
    return resp.status_code, resp.json()


def test_a_service_down_shows_in_healthz_and_nowhere_else(world: World) -> None:
    stack = world.stack
    assert _healthz(stack) == (200, {"status": "ok", "services": dict.fromkeys(GRPC_SERVICES, "serving")})
    stack.kill("billing")
    try:
        wait_until(lambda: _healthz(stack)[0] == 503, 10, "/healthz to notice billing is gone")
        assert _healthz(stack) == (503, {"status": "unavailable", "services": {
            "auth": "serving", "billing": "unavailable", "inference": "serving"}})
        assert _readyz(stack) == (200, {"status": "ok"})  # the edge itself still takes traffic
        for process in ("auth", "inference"):  # they reach PostgreSQL: ready, and alive
            for service in ("", f"chatkore.v1.{process.capitalize()}", "liveness"):
                assert _health(stack, process, service) == SERVING, (process, service)
    finally:
        stack.start_process("billing")
        stack.wait_healthy(60)
    assert _health(stack, "billing", "") == SERVING
    assert _healthz(stack)[0] == 200


def test_postgres_down_is_not_ready_but_alive_and_comes_back(make_stack) -> None:
    # A server of its own: stopping the session's would stop every other stack's database.
    datadir = Path(tempfile.mkdtemp(prefix="ckpgh-"))
    url, server = pg.embedded(datadir / "pg", cleanup="delete")
    stack = None
    try:
        database = pg.ensure_database(url, "chatkore")
        apply_all(database)
        stack = make_stack(database_url=database, name="pg-down")
        from pgserver._commands import pg_ctl

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
        for process in GRPC_SERVICES:
            wait_until(lambda p=process: _health(stack, p, "") == NOT_SERVING, 15,
                       f"{process} to say NOT_SERVING without its database")
            assert _health(stack, process, f"chatkore.v1.{process.capitalize()}") == NOT_SERVING
            assert _health(stack, process, "liveness") == SERVING  # not a reason to restart it
        wait_until(lambda: _healthz(stack)[0] == 503, 10, "/healthz to say so")
        assert _healthz(stack) == (503, {"status": "unavailable",
                                         "services": dict.fromkeys(GRPC_SERVICES, "not_serving")})
        assert _readyz(stack) == (200, {"status": "ok"})
        assert all(proc.poll() is None for proc in stack.procs.values())  # nobody died of it

        server.ensure_postgres_running()
        wait_until(lambda: _healthz(stack)[0] == 200, 30, "every service to serve again")
        for process in GRPC_SERVICES:
            assert _health(stack, process, "") == SERVING
    finally:
        if stack is not None:
            stack.stop()  # its books are checked now, while its database still exists
        server.cleanup()
        shutil.rmtree(datadir, ignore_errors=True)
