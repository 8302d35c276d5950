"""`python -m services.migrate`: bring the database schema up to date, then exit."""
from __future__ import annotations

from services.common import logs
from services.common.config import env_str
from services.common.migrations import apply_all


def main() -> None:
    logs.setup("migrate")
    applied = apply_all(env_str("DATABASE_URL"))
    print(f"migrations applied: {', '.join(applied) or 'none (already current)'}")


if __name__ == "__main__":
    main()
