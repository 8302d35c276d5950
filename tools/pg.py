"""PostgreSQL for a laptop or a test run: an embedded server, or the one DATABASE_URL names."""
from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo


def embedded(datadir: Path, *, cleanup: str = "stop", max_connections: int = 0) -> tuple[str, Any]:
    """Start (or join) a PostgreSQL 16 living in `datadir`; returns (url, server handle)."""
    import pgserver  # only needed when no DATABASE_URL is given

    datadir.mkdir(parents=True, exist_ok=True)
    if max_connections and not (datadir / "PG_VERSION").exists():
        # A new cluster: set its connection limit before the server that is handed out starts
        # (max_connections takes effect only at start).
        first = pgserver.get_server(str(datadir.resolve()), cleanup_mode="stop")
        first.psql(f"ALTER SYSTEM SET max_connections = {int(max_connections)};")
        first.cleanup()
    server = pgserver.get_server(str(datadir.resolve()), cleanup_mode=cleanup)
    return server.get_uri(), server


def with_database(url: str, dbname: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo(**params)


def ensure_database(url: str, dbname: str) -> str:
    """Create `dbname` on the server at `url` if missing; returns its URL."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", dbname):
        raise ValueError(f"bad database name {dbname!r}")
    with psycopg.connect(url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{dbname}"')
    return with_database(url, dbname)


def scratch_database(url: str, prefix: str = "chatkore_test") -> str:
    """A new, empty database on the server at `url`."""
    return ensure_database(url, f"{prefix}_{secrets.token_hex(4)}")


def drop_database(url: str, dbname: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
