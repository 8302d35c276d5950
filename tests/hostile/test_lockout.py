"""Wrong console passwords lock out the (email, address) that sent them: never the owner signing in
from elsewhere, operators included; and an email with no account locks exactly alike."""
from __future__ import annotations

import json
import secrets

from services.auth.accounts import FAILED_LOGIN_LIMIT
from tests.hostile import rawhttp
from tests.world import World

RIGHT = "the right password"


def _console(world: World, path: str, email: str, password: str, source: str) -> rawhttp.RawReply:
    return rawhttp.call(world.url, "POST", path, body=json.dumps({"email": email, "password": password}).encode(),
                        source=source, headers={"Content-Type": "application/json", "Origin": world.url})


def _email() -> str:
    return f"lock-{secrets.token_hex(4)}@example.com"


def test_guesses_lock_out_the_guesser_not_the_owner(world: World) -> None:
    guesser, owner = "127.0.0.31", "127.0.0.32"
    email = _email()
    registered = _console(world, "/api/register", email, RIGHT, owner)
    assert registered.status == 201, registered.body
    user_id = registered.json()["account"]["user_id"]
    world.admin("PUT", f"/admin/v1/users/{user_id}/role", {"role": "operator"})
    for i in range(FAILED_LOGIN_LIMIT):
        assert _console(world, "/api/login", email, f"guess {i}", guesser).status == 401
    locked = _console(world, "/api/login", email, RIGHT, guesser)
    assert locked.status == 429 and int(locked.headers["retry-after"]) > 0, locked.body
    assert "set-cookie" not in locked.headers
    # The operator, from their own address, is not locked out of their own account.
    signed_in = _console(world, "/api/login", email, RIGHT, owner)
    assert signed_in.status == 200, signed_in.body
    assert signed_in.json()["account"]["role"] == "operator"


def test_unknown_and_locked_emails_answer_alike(world: World) -> None:
    prober = "127.0.0.33"
    known, unknown = _email(), _email()
    assert _console(world, "/api/register", known, RIGHT, "127.0.0.34").status == 201
    for i in range(FAILED_LOGIN_LIMIT):
        wrong = [_console(world, "/api/login", email, f"guess {i}", prober) for email in (known, unknown)]
        assert [r.status for r in wrong] == [401, 401]
        assert wrong[0].json() == wrong[1].json()
    answers = [_console(world, "/api/login", email, RIGHT, prober) for email in (known, unknown)]
    assert [a.status for a in answers] == [429, 429], [a.body for a in answers]
    assert answers[0].json() == answers[1].json()
    assert answers[0].headers["retry-after"] == answers[1].headers["retry-after"]
    # Someone else, elsewhere, still signs in to the known account.
    assert _console(world, "/api/login", known, RIGHT, "127.0.0.34").status == 200


def test_a_right_password_clears_the_count(world: World) -> None:
    source = "127.0.0.35"
    email = _email()
    assert _console(world, "/api/register", email, RIGHT, source).status == 201
    for _ in range(2):
        for i in range(FAILED_LOGIN_LIMIT - 1):
            assert _console(world, "/api/login", email, f"typo {i}", source).status == 401
        assert _console(world, "/api/login", email, RIGHT, source).status == 200
