"""chatkore's processes started and stopped together: for `make run`, the tests and the benchmark."""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from services.common.mtls import GrpcTls
from tools import pki

ROOT = Path(__file__).resolve().parents[1]
SERVICES = {"auth": "services.auth", "billing": "services.billing", "inference": "services.inference",
            "edge": "edge"}
GRPC_SERVICES = ("auth", "billing", "inference")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, for a service to bind later. Taken below the kernel's
    ephemeral range, which outgoing connections draw from (a port 0 pick could be taken by one
    before the service binds it: 'Failed to bind' at a stack's start), and never handed out twice
    by this process."""
    high = min(_ephemeral_low(), 65536)
    low = max(1024, high - 12000)
    for _ in range(2000):
        port = random.randrange(low, high)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free loopback port between {low} and {high}")


def wait_until(check: Any, timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """Poll `check()` until it returns something truthy, or fail after `timeout_s`.

    An `AssertionError` from `check` is a verdict, not a "not yet": it fails at once. Other
    errors (a service still starting, a refused connection) keep the polling going, and the
    last of them is chained to the timeout so the failure shows what went wrong."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except AssertionError:
            raise
        except Exception as exc:  # keep polling: the thing may not be up yet
            last_error = exc
        time.sleep(interval_s)
    raise TimeoutError(f"timed out waiting for {what}" + (f" (last error: {last_error!r})" if last_error else "")) \
        from last_error


@dataclass
class Stack:
    database_url: str
    admin_key: str
    secret_key: str
    log_dir: Path
    http_port: int = 0
    ports: dict[str, int] = field(default_factory=dict)
    env_extra: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Processes per gRPC service (default 1). Replica i > 1 is named "<service>-<i>" and has its
    # own port in `ports`; peers get every replica's address in one target, balanced round-robin.
    replicas: dict[str, int] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)  # per gRPC process: its /metrics
    health_ports: dict[str, int] = field(default_factory=dict)  # per gRPC process: plaintext, health only
    # The CA and a certificate per process (tools/pki.py); a second Stack sharing this one's
    # services passes the same directory.
    pki_dir: Path | None = None
    # Extra environment of one process only (`start_process(name, env=...)`): a restarted
    # service with a setting of its own, while the rest of the stack keeps its own.
    process_env_extra: dict[str, dict[str, str]] = field(default_factory=dict)
    # Called once after `stop()` whenever a process ran since the last call: the tests check
    # the stack's books there, while its database is still certain to exist.
    on_stopped: Callable[[Stack], None] | None = None
    _ran: bool = field(default=False, init=False, repr=False)

    @property
    def name(self) -> str:
        return self.log_dir.name

    def __post_init__(self) -> None:
        self.http_port = self.http_port or free_port()
        for name in self.grpc_processes():
            self.ports.setdefault(name, free_port())
            self.metrics_ports.setdefault(name, free_port())
            self.health_ports.setdefault(name, free_port())
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.pki_dir = pki.ensure(self.pki_dir or self.log_dir / "pki")

    def tls_dir(self, process: str) -> Path:
        """Where `process`'s certificate, key and CA are (CHATKORE_GRPC_TLS_DIR)."""
        assert self.pki_dir is not None
        return self.pki_dir / process

    def grpc_processes(self, service: str | None = None) -> list[str]:
        names = []
        for svc in (service,) if service else GRPC_SERVICES:
            names += [svc] + [f"{svc}-{i}" for i in range(2, self.replicas.get(svc, 1) + 1)]
        return names

    def target(self, service: str) -> str:
        """The address peers dial: one replica's, or all of them (gRPC's ipv4: list, round-robin)."""
        ports = [self.ports[name] for name in self.grpc_processes(service)]
        if len(ports) == 1:
            return f"127.0.0.1:{ports[0]}"
        return "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports)

    def grpc_channel(self, service: str, caller: str) -> grpc.Channel:
        """A blocking channel to `service` presenting `caller`'s certificate (for tests and tools)."""
        tls = GrpcTls.from_dir(caller, self.tls_dir(caller))
        return grpc.secure_channel(self.target(service), tls.channel_credentials(),
                                   options=[("grpc.ssl_target_name_override", service)])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "PYTHONPATH": f"{ROOT / 'gen'}{os.pathsep}{ROOT}",
            "DATABASE_URL": self.database_url,
            "CHATKORE_ADMIN_KEY": self.admin_key,
            "CHATKORE_SECRET_KEY": self.secret_key,
            "CHATKORE_HOST": "127.0.0.1",
            "CHATKORE_HTTP_PORT": str(self.http_port),
            "CHATKORE_AUTH_ADDR": self.target("auth"),
            "CHATKORE_BILLING_ADDR": self.target("billing"),
            "CHATKORE_INFERENCE_ADDR": self.target("inference"),
        })
        env.update(self.env_extra)
        return env

    def process_env(self, name: str) -> dict[str, str]:
        env = self.env()
        service = name.split("-")[0]
        if service in pki.PROCESSES and "CHATKORE_GRPC_TLS_DIR" not in self.env_extra:
            env["CHATKORE_GRPC_TLS_DIR"] = str(self.tls_dir(service))
        if name in self.metrics_ports:
            service = name.split("-")[0]
            env[f"CHATKORE_{service.upper()}_LISTEN"] = f"127.0.0.1:{self.ports[name]}"
            env["CHATKORE_METRICS_HOST"] = "127.0.0.1"
            env["CHATKORE_METRICS_PORT"] = str(self.metrics_ports[name])
            env["CHATKORE_HEALTH_LISTEN"] = f"127.0.0.1:{self.health_ports[name]}"
        env.update(self.process_env_extra.get(name, {}))
        return env

    def start_process(self, name: str, module: str | None = None, args: tuple[str, ...] = (),
                      env: dict[str, str] | None = None) -> None:
        """Start `name`; `env` (kept for its later restarts) adds to the stack's environment."""
        if env is not None:
            self.process_env_extra[name] = dict(env)
        self._ran = True
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", module or SERVICES[name.split("-")[0]], *args], cwd=ROOT,
            env=self.process_env(name), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def start(self, timeout_s: float = 60) -> Stack:
        for name in [*self.grpc_processes(), "edge"]:
            self.start_process(name)
        self.wait_healthy(timeout_s)
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_healthy(self, timeout_s: float = 60) -> None:
        def check() -> bool:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.log_dir / name}.log")
            return self.healthy()

        wait_until(check, timeout_s, "chatkore to become healthy")

    def signal(self, name: str, sig: int) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(sig)

    def kill(self, name: str) -> None:
        self.signal(name, signal.SIGKILL)
        self.procs[name].wait(10)

    def restart(self, name: str, env: dict[str, str] | None = None) -> None:
        self.kill(name)
        self.start_process(name, env=env)

    @contextmanager
    def process_with(self, name: str, env: dict[str, str], timeout_s: float = 60) -> Iterator[None]:
        """`name` restarted with `env` added for the block; afterwards (whether it is still running,
        was stopped or was killed inside the block) it runs again as before and the stack is healthy."""
        self.restart(name, env=env)
        self.wait_healthy(timeout_s)
        try:
            yield
        finally:
            if self.procs[name].poll() is None:
                self.kill(name)
            self.start_process(name, env={})
            self.wait_healthy(timeout_s)

    def stop(self, timeout_s: float = 30) -> dict[str, int | None]:
        """SIGTERM every process, edge first; SIGKILL what does not stop in time."""
        rank = {"edge": 0, "auth": 3, "billing": 2}
        order = sorted(self.procs, key=lambda n: rank.get(n.split("-")[0], 1))
        codes: dict[str, int | None] = {}
        for name in order:
            if name not in self.procs:
                continue
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            codes[name] = proc.returncode
        if self._ran and self.on_stopped is not None:
            self._ran = False
            self.on_stopped(self)
        return codes

    # --- the admin API, for bootstrapping ---------------------------------------------

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.admin_key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None
