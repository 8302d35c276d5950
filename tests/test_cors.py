"""CORS on /v1 only: a page on another origin calls the API with a key, plain and streamed, in
Chromium; /api and /admin (cookies, the admin key) never answer another origin."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from playwright.sync_api import sync_playwright

from tests.world import World

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update"]
PAGE = b"<!doctype html><title>front-end</title><p>another origin</p>"


@pytest.fixture(scope="module")
def frontend() -> Iterator[str]:
    """A page served from its own origin (another port, another host name)."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(PAGE)))
            self.end_headers()
            self.wfile.write(PAGE)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://localhost:{server.server_address[1]}"
    server.shutdown()


def test_preflight_on_v1(world: World) -> None:
    resp = requests.options(world.url + "/v1/chat/completions", timeout=10, headers={
        "Origin": "https://chat.example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os, openai-organization,"
                                          " anthropic-version, x-api-key, x-evil"})
    assert resp.status_code == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    allowed = {h.strip() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert allowed == {"authorization", "content-type", "x-stainless-os", "openai-organization",
                       "anthropic-version", "x-api-key"}
    assert "Access-Control-Allow-Credentials" not in resp.headers
    # An ordinary answer (an error too) names the origin, and lets the page read the request id.
    answer = requests.get(world.url + "/v1/models", headers={"Origin": "https://chat.example.com"}, timeout=10)
    assert answer.status_code == 401 and answer.headers["Access-Control-Allow-Origin"] == "*"
    assert "x-request-id" in answer.headers["Access-Control-Expose-Headers"]


@pytest.mark.parametrize("path", ["/api/me", "/api/login", "/admin/v1/users", "/healthz"])
def test_no_cors_outside_v1(world: World, path: str) -> None:
    origin = {"Origin": "https://evil.example.com"}
    pre = requests.options(world.url + path, timeout=10, headers={
        **origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    plain = requests.get(world.url + path, headers=origin, timeout=10)
    for resp in (pre, plain):
        assert not any(h.lower().startswith("access-control-") for h in resp.headers), resp.headers


def test_page_on_another_origin_calls_v1(world: World, frontend: str) -> None:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: `make test` installs it (make browser)"
    tenant = world.tenant()
    body = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "from the browser"}]}
    script = """async ([url, key, body]) => {
        const headers = {"Authorization": "Bearer " + key, "Content-Type": "application/json",
                         "x-stainless-lang": "js"};
        const plain = await fetch(url + "/v1/chat/completions", {method: "POST", headers, body: JSON.stringify(body)});
        const answer = await plain.json();
        const streamed = await fetch(url + "/v1/chat/completions",
                                     {method: "POST", headers, body: JSON.stringify({...body, stream: true})});
        const reader = streamed.body.getReader();
        const decoder = new TextDecoder();
        let text = "";
        for (;;) {
            const {done, value} = await reader.read();
            if (done) break;
            text += decoder.decode(value, {stream: true});
        }
        let api = "readable";
        try { await fetch(url + "/api/models"); } catch (e) { api = "blocked"; }
        return {status: plain.status, content: answer.choices[0].message.content,
                requestId: plain.headers.get("x-request-id"), streamStatus: streamed.status, stream: text, api};
    }"""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(frontend)
            result = page.evaluate(script, [world.url, tenant.key, body])
        finally:
            browser.close()
    assert result["status"] == 200 and result["content"] == "This is a test! You said: from the browser"
    assert result["requestId"].startswith("req_")  # exposed to the page
    assert result["streamStatus"] == 200 and result["stream"].rstrip().endswith("data: [DONE]")
    assert result["stream"].count("data: {") >= 3  # chunk by chunk
    assert result["api"] == "blocked"  # /api answers no other origin
    assert len(world.usage(tenant.user_id)) == 2
