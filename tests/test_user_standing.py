"""Auth knows billing's users only through billing's views (issue 16, migration 0016b): whether a
user is disabled, and when that changed. A user disabled through billing stops its keys — cached
ones too — on the edge within a second or two, and enabling it again brings them back."""
from __future__ import annotations

import re
from pathlib import Path

import psycopg
import requests

from tests.world import World
from tools.stack import wait_until

ROOT = Path(__file__).resolve().parents[1]


def _status(world: World, key: str) -> int:
    return requests.get(world.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code


def test_a_cached_key_stops_when_its_user_is_disabled_and_works_again_when_enabled(world: World) -> None:
    t = world.tenant()
    assert _status(world, t.key) == 200  # now in the edge's key cache (CHATKORE_KEY_CACHE_S: minutes)
    world.admin("PATCH", f"/admin/v1/users/{t.user_id}", {"disabled": True}, expect=200)
    wait_until(lambda: _status(world, t.key) == 401, 5, "the disabled user's cached key to stop working")
    world.admin("PATCH", f"/admin/v1/users/{t.user_id}", {"disabled": False}, expect=200)
    wait_until(lambda: _status(world, t.key) == 200, 5, "the key to work again once its user is enabled")

    def feed() -> tuple[list, list]:
        with psycopg.connect(world.stack.database_url) as conn:
            logged = conn.execute("SELECT id FROM user_standing_changes WHERE user_id = %s ORDER BY id",
                                  (t.user_id,)).fetchall()
            copied = conn.execute("SELECT standing_change FROM key_changes WHERE user_id = %s"
                                  " AND standing_change IS NOT NULL ORDER BY standing_change",
                                  (t.user_id,)).fetchall()
        return logged, copied

    def copied_once() -> list | None:
        logged, copied = feed()
        return logged if logged == copied else None

    # Both changes reach auth's feed (the edge polls it several times a second), each once.
    assert len(wait_until(copied_once, 5, "both changes in the key-change feed")) == 2


def test_auth_names_no_table_of_billing() -> None:
    """The contract has one owner: auth's SQL reads billing's views, never `users` itself."""
    for path in sorted((ROOT / "services" / "auth").glob("*.py")):
        source = path.read_text()
        assert not re.findall(r"\b(?:FROM|JOIN|UPDATE|INTO)\s+users\b", source, re.IGNORECASE), path.name
