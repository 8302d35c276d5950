"""chatkore's processes started and stopped together: for `make run`, the tests and the benchmark."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SERVICES = {"auth": "services.auth", "billing": "services.billing", "inference": "services.inference",
            "edge": "edge"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Any, timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """Poll `check()` until it returns something truthy, or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # keep polling: the thing may not be up yet
            last_error = exc
        time.sleep(interval_s)
    raise TimeoutError(f"timed out waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))


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

    def __post_init__(self) -> None:
        self.http_port = self.http_port or free_port()
        for name in ("auth", "billing", "inference"):
            self.ports.setdefault(name, free_port())
        self.log_dir.mkdir(parents=True, exist_ok=True)

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
            "CHATKORE_AUTH_ADDR": f"127.0.0.1:{self.ports['auth']}",
            "CHATKORE_BILLING_ADDR": f"127.0.0.1:{self.ports['billing']}",
            "CHATKORE_INFERENCE_ADDR": f"127.0.0.1:{self.ports['inference']}",
        })
        env.update(self.env_extra)
        return env

    def start_process(self, name: str, module: str | None = None, args: tuple[str, ...] = ()) -> None:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", module or SERVICES[name], *args], cwd=ROOT, env=self.env(),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def start(self, timeout_s: float = 60) -> Stack:
        for name in SERVICES:
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

    def restart(self, name: str) -> None:
        self.kill(name)
        self.start_process(name)

    def stop(self, timeout_s: float = 30) -> dict[str, int | None]:
        """SIGTERM every process, edge first; SIGKILL what does not stop in time."""
        order = ["edge", *[n for n in self.procs if n not in ("edge", "auth", "billing")], "billing", "auth"]
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
        return codes

    # --- the admin API, for bootstrapping ---------------------------------------------

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.admin_key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None
