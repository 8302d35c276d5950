"""The pages' defences in depth: every HTML and static response carries the Content Security
Policy (scripts from this origin only, no inline script, no framing) and `nosniff`, however it
is reached — as /chat or as /static/chat.html."""
from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import requests

from tests.world import World

STATIC = Path(__file__).resolve().parents[2] / "edge" / "web" / "static"
PAGES = sorted(p.name for p in STATIC.glob("*.html"))


def _policy(header: str) -> dict[str, list[str]]:
    directives = (d.strip().split() for d in header.split(";") if d.strip())
    return {d[0]: d[1:] for d in directives}


@pytest.mark.parametrize("path", ["/", "/chat", "/console", "/pricing", "/docs", "/i18n/en.js", "/i18n/zh-CN.js",
                                  *(f"/static/{name}" for name in PAGES), "/static/chat.js",
                                  "/static/common.js", "/static/app.css", "/static/vendor/purify.js",
                                  "/static/vendor/highlight.css"])
def test_every_page_and_static_file_carries_the_policy(world: World, path: str) -> None:
    resp = requests.get(world.url + path, timeout=30, allow_redirects=False)
    assert resp.status_code == 200, resp.text
    policy = _policy(resp.headers.get("Content-Security-Policy", ""))
    assert policy.get("default-src") == ["'self'"], policy
    assert policy.get("frame-ancestors") == ["'none'"], policy
    assert "'unsafe-inline'" not in policy.get("script-src", policy["default-src"]), policy
    assert resp.headers.get("X-Content-Type-Options") == "nosniff"
    assert resp.headers.get("X-Frame-Options") == "DENY"


@pytest.mark.parametrize("path", ["/static/.hidden", "/static/..%2Fpages.py", "/static/nothing.html",
                                  "/static/vendor/../../pages.py"])
def test_nothing_else_is_served_from_static(world: World, path: str) -> None:
    resp = requests.get(world.url + path, timeout=30, allow_redirects=False)
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "unknown_url"


class _Scripts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inline: list[str] = []
        self._open_without_src = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        self.inline += [f"<{tag} {name}=…>" for name in names if re.fullmatch(r"on\w+", name)]
        self._open_without_src = tag == "script" and "src" not in names
        if self._open_without_src:
            self.inline.append("<script> without src")

    def handle_data(self, data: str) -> None:
        if self._open_without_src and data.strip():
            self.inline.append(data.strip()[:40])


@pytest.mark.parametrize("name", PAGES)
def test_pages_have_no_inline_script(name: str) -> None:
    """What the policy would block anyway: kept out so the pages work under it."""
    parser = _Scripts()
    parser.feed((STATIC / name).read_text())
    assert parser.inline == []
