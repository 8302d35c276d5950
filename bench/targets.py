"""What the load is sent to: the mock itself (direct), chatkore's whole stack, or the LiteLLM proxy."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bench import procs
from services.common.migrations import apply_all
from tools import pg, process
from tools.stack import ROOT, Stack, free_port, wait_until

# The models every target serves, and the mock path each one reaches (`/i<ms>` spaces stream chunks).
CHAT_MODEL = "gpt-3.5-turbo"
EMBED_MODEL = "text-embedding-ada-002"
STREAM_MODEL = "bench-stream"
HOLD_MODEL = "bench-hold"
STREAM_INTERVAL_MS = 50
HOLD_INTERVAL_MS = 1500
MOCK_PREFIX = {CHAT_MODEL: "/v1", EMBED_MODEL: "/v1", STREAM_MODEL: f"/i{STREAM_INTERVAL_MS}/v1",
               HOLD_MODEL: f"/i{HOLD_INTERVAL_MS}/v1"}
BENCH_CREDITS = 100_000_000     # enough for every hold of a 10-minute soak many times over
LITELLM_SPEC = os.environ.get("BENCH_LITELLM_SPEC", "litellm[proxy]==1.108.7")


def _get(url: str, headers: dict[str, str] | None = None, body: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@dataclass
class Target:
    name: str
    port: int
    key: str | None
    group: procs.Group
    processes: list[str] = field(default_factory=list)   # the group's names, in display order
    core: int | None = None

    def path(self, model: str, endpoint: str) -> str:
        return f"/v1{endpoint}"

    def stop(self) -> None:
        pass


class Mock(Target):
    """The fast mock, reached directly: the baseline every run is compared with."""

    def __init__(self, core: int | None, log_dir: Path) -> None:
        port = free_port()
        log = open(log_dir / "mock.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen([*procs.pin_prefix(core), sys.executable, "-m", "bench.mock", "--port", str(port)],
                                     cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        super().__init__("direct", port, None, procs.Group({"mock": [self.proc.pid]}), ["mock"], core)
        wait_until(lambda: _get(f"http://127.0.0.1:{port}/v1/models") == 200, 20, "the mock upstream")

    def path(self, model: str, endpoint: str) -> str:
        return MOCK_PREFIX[model].removesuffix("/v1") + f"/v1{endpoint}"

    def base_url(self, model: str) -> str:
        return f"http://127.0.0.1:{self.port}{MOCK_PREFIX[model]}"

    def stop(self) -> None:
        process.stop(self.proc, 10)


class Chatkore(Target):
    """The whole stack, full billing on: PostgreSQL (embedded, or DATABASE_URL's server), four services."""

    def __init__(self, mock: Mock, core: int | None, work: Path, log_dir: Path, users: int = 1) -> None:
        self.server = None
        self.users = users
        self.shared_pg = bool(os.environ.get("DATABASE_URL"))
        if self.shared_pg:
            server_url = os.environ["DATABASE_URL"]
        else:
            # A short path: PostgreSQL's unix socket lives in the data directory.
            server_url, self.server = pg.embedded(work / "pg")
        self.server_url = server_url
        self.dbname = f"chatkore_bench_{secrets.token_hex(4)}"
        self.database_url = pg.ensure_database(server_url, self.dbname)
        apply_all(self.database_url)
        self.stack = Stack(database_url=self.database_url, admin_key="ck-admin-" + secrets.token_hex(16),
                           secret_key=secrets.token_hex(16), log_dir=log_dir / "chatkore",
                           env_extra={"CHATKORE_LOG_LEVEL": os.environ.get("CHATKORE_LOG_LEVEL", "INFO"),
                                      "CHATKORE_UPSTREAM_ALLOW": "127.0.0.1"})  # the bench's mock upstream
        self.stack.start()
        names = ["edge", "auth", "billing", "inference"]
        members = {n: [self.stack.procs[n].pid] for n in names}
        group = procs.Group(members, {"postgres": self._pg_pids})
        super().__init__("chatkore", self.stack.http_port, None, group, [*names, "postgres"], core)
        if core is not None:
            procs.pin([p.pid for p in self.stack.procs.values()], core)
            if not self.shared_pg:
                procs.pin(self._pg_pids(), core)
        self._configure(mock)

    def _pg_pids(self) -> list[int]:
        """Every process of the embedded server (postmaster, backends, writers); with a shared server,
        only the backends connected to this run's database."""
        if self.server is not None:
            postmaster = self.server.get_pid()
            return [postmaster, *procs.children_of(postmaster)]
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                                " AND pid <> pg_backend_pid()").fetchall()
        return [r[0] for r in rows]

    def _configure(self, mock: Mock) -> None:
        admin = self.stack.admin
        for model in (STREAM_MODEL, HOLD_MODEL):
            admin("PUT", f"/admin/v1/prices/{model}", {"prompt": 1.5, "completion": 2.0})
        for name, models in (("bench", [CHAT_MODEL, EMBED_MODEL]), ("bench-stream", [STREAM_MODEL]),
                             ("bench-hold", [HOLD_MODEL])):
            admin("POST", "/admin/v1/channels", {"name": name, "base_url": mock.base_url(models[0]),
                                                 "api_key": "sk-mock-upstream", "models": models})
        # Tenants the non-streamed load takes in turn (wrk); the first one also streams.
        self.keys = []
        for i in range(self.users):
            user = admin("POST", "/admin/v1/users", {"name": f"bench-{i}", "credits": BENCH_CREDITS})
            self.keys.append(admin("POST", f"/admin/v1/users/{user['id']}/keys", {"name": "bench"})["key"])
        self.key = self.keys[0]
        url = f"http://127.0.0.1:{self.port}/v1/chat/completions"
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        body = json.dumps({"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
        wait_until(lambda: _get(url, headers, body) == 200, 20, "chatkore to serve the benchmark model")

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            return conn.execute(query, args).fetchall()

    def request_rows(self) -> dict[str, int]:
        """Usage rows by how the request ended (`held` = still open)."""
        rows = self.sql("SELECT coalesce(status, state), count(*) FROM requests GROUP BY 1")
        return {status: n for status, n in rows}

    def transactions(self) -> int:
        return self.sql("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
                        )[0][0]

    def verify(self) -> dict[str, Any]:
        return self.stack.admin("GET", "/admin/v1/ledger/verify")

    def stop(self) -> None:
        self.stack.stop()
        try:
            pg.drop_database(self.server_url, self.dbname)
        except Exception as exc:  # a leftover scratch database is harmless; say so and go on
            print(f"bench: could not drop {self.dbname}: {exc}", file=sys.stderr)
        if self.server is not None:
            self.server.cleanup()


def litellm_python(venv: Path) -> Path:
    """LiteLLM's own virtualenv (it pins its own FastAPI, pydantic, httpx...), created on first use."""
    python = venv / "bin" / "python"
    if not (venv / "bin" / "litellm").exists():
        print(f"bench: installing {LITELLM_SPEC} into {venv} (first use only)", flush=True)
        base = shutil.which("python3.11") or sys.executable
        if not python.exists():
            subprocess.run([base, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", LITELLM_SPEC],
                       check=True)
    return python


class LiteLLM(Target):
    """LiteLLM's proxy: one worker on the stack's core, the same mock, no database, the bundled cost map."""

    def __init__(self, mock: Mock, core: int | None, work: Path, log_dir: Path) -> None:
        python = litellm_python(work / "litellm-venv")
        port = free_port()
        key = "sk-bench-" + secrets.token_hex(16)
        config = work / "litellm.yaml"
        config.write_text(_litellm_config(mock, key))
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PYTHONPATH", "REDIS_URL")}
        env.update({"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
                    "NO_DOCS": "True", "DISABLE_ADMIN_UI": "True"})
        log = open(log_dir / "litellm.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [*procs.pin_prefix(core), str(python), str(python.parent / "litellm"), "--config", str(config),
             "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
            cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        group = procs.Group(finders={"litellm": self._pids})
        super().__init__("litellm", port, key, group, ["litellm"], core)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        body = json.dumps({"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"litellm exited with {self.proc.returncode}; see {log_dir}/litellm.log")
            return _get(url, headers, body) == 200

        wait_until(ready, 180, "the LiteLLM proxy to answer")

    def _pids(self) -> list[int]:
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(procs.children_of(pid))
        return found

    def stop(self) -> None:
        process.stop(self.proc, 20)


def _litellm_config(mock: Mock, key: str) -> str:
    models = []
    for name in (CHAT_MODEL, STREAM_MODEL, HOLD_MODEL, EMBED_MODEL):
        upstream = EMBED_MODEL if name == EMBED_MODEL else CHAT_MODEL
        models.append({"model_name": name, "litellm_params": {
            "model": f"openai/{upstream}", "api_base": mock.base_url(name), "api_key": "sk-mock-upstream"}})
    # JSON is YAML: no YAML library is needed on our side.
    return json.dumps({
        "model_list": models,
        "litellm_settings": {"telemetry": False, "request_timeout": 180},
        "general_settings": {"master_key": key},
    }, indent=2)
