"""A revoked key stops on every edge, not only the one that revoked it; a console session
ends when its time is up."""
from __future__ import annotations

import re

import requests

from tests.console import PASSWORD, ConsoleUser
from tests.world import World
from tools.stack import wait_until

MSG = [{"role": "user", "content": "hello"}]


def _chat(url: str, key: str, model: str) -> requests.Response:
    return requests.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                         json={"model": model, "messages": MSG})


def test_a_key_revoked_through_one_edge_stops_on_the_other(world: World, make_edge) -> None:
    other = make_edge(world.stack, name="second")
    model, _ = world.served_model()
    t = world.tenant()
    # Both edges have the key in their caches (a key in use is not asked of auth again for minutes).
    for url in (world.url, other.url) * 3:
        assert _chat(url, t.key, model).status_code == 200
    world.admin("DELETE", f"/admin/v1/keys/{t.key_id}", expect=204)  # through the first edge
    # Each edge follows auth's change feed on its own: both refuse it within a second or so
    # (one may still take a call the other already refuses, until its own poll comes).
    accepted = 6
    for url in (world.url, other.url):
        def refuses(u: str = url) -> bool:
            nonlocal accepted
            status = _chat(u, t.key, model).status_code
            assert status in (200, 401), status
            accepted += status == 200
            return status == 401

        wait_until(refuses, 5, f"{url} to refuse the revoked key")
    for url in (other.url, world.url) * 2:  # and both keep refusing it
        refused = _chat(url, t.key, model)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key", url
    # Every accepted call was paid for once; the refused ones were never served.
    assert len(world.usage(t.user_id)) == accepted and world.held(t.user_id) == 0


def test_a_console_session_ends_when_its_time_is_up(world: World) -> None:
    stack = world.stack
    # Auth restarted with sessions of 3 s (it alone decides when one ends), as before afterwards.
    with stack.process_with("auth", {"CHATKORE_SESSION_TTL_S": "3"}):
        user = ConsoleUser(world.url).register()
        signed_in = user.call("POST", "/api/login", {"email": user.email, "password": PASSWORD})
        assert signed_in.status_code == 200
        user.csrf = signed_in.json()["csrf_token"]
        max_age = re.search(r"Max-Age=(\d+)", signed_in.headers["Set-Cookie"])
        assert max_age and int(max_age.group(1)) in (2, 3)  # the session's 3 s, less the time the call took
        assert user.me()["balance"] == 100
        # The cookie is sent as the browser kept it, past its Max-Age too: the server must end
        # the session itself, not rely on the client dropping the cookie.
        token = user.http.cookies.get("ck_session")

        def me() -> requests.Response:
            return requests.get(world.url + "/api/me", headers={"Cookie": f"ck_session={token}"}, timeout=30)

        assert me().status_code == 200
        wait_until(lambda: me().status_code == 401, 15, "the session to end")
        assert me().json()["error"]["code"] == "session_required"
        # Nothing a page does works with it any more; signing in again starts a new one.
        made = requests.post(world.url + "/api/keys", json={"name": "late"}, timeout=30,
                             headers={"Cookie": f"ck_session={token}", "X-CSRF-Token": user.csrf})
        assert made.status_code == 401
        user.login()
        assert [k["name"] for k in user.ok("GET", "/api/keys")["data"]] == ["first key"]
