"""The web pages: /chat, /console, /pricing, /ops and their static files, served by the edge itself.

The pages are plain HTML, CSS and JavaScript; the few libraries they load (Markdown,
sanitising, highlighting, charts) come from npm through `make web` into
edge/web/node_modules and are served from there, file by file, as /static/vendor/*.
"""
from __future__ import annotations

from pathlib import Path

from aiohttp import web

from edge import sessions
from edge.errors import OpenAIError

WEB = Path(__file__).resolve().parent / "web"
STATIC = WEB / "static"
MODULES = WEB / "node_modules"

# What the pages may load from the npm packages, and nothing else of node_modules.
VENDOR = {
    "marked.js": "marked/lib/marked.umd.js",
    "purify.js": "dompurify/dist/purify.min.js",
    "highlight.js": "@highlightjs/cdn-assets/highlight.min.js",
    "highlight.css": "@highlightjs/cdn-assets/styles/github.min.css",
    "highlight-dark.css": "@highlightjs/cdn-assets/styles/github-dark.min.css",
    "chart.js": "chart.js/dist/chart.umd.min.js",
}

# Scripts only from this origin, no inline script, no framing: an injected tag can do nothing.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
        " object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


def _page(name: str) -> web.FileResponse:
    return web.FileResponse(STATIC / name, headers=HEADERS)


async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/chat")


async def chat(request: web.Request) -> web.StreamResponse:
    return _page("chat.html")


async def console(request: web.Request) -> web.StreamResponse:
    return _page("console.html")


async def pricing(request: web.Request) -> web.StreamResponse:
    return _page("pricing.html")


async def ops(request: web.Request) -> web.StreamResponse:
    """Operators only: anyone else is sent to the console to sign in as one."""
    if not sessions.has_session(request):
        raise web.HTTPFound("/console?next=/ops")
    try:
        await sessions.operator(request)
    except OpenAIError:
        raise web.HTTPFound("/console?next=/ops") from None
    return _page("ops.html")


async def vendor(request: web.Request) -> web.StreamResponse:
    path = VENDOR.get(request.match_info["name"])
    if path is None or not (MODULES / path).is_file():
        raise OpenAIError(404, f"Invalid URL ({request.method} {request.path})", code="unknown_url")
    return web.FileResponse(MODULES / path, headers={"Cache-Control": "public, max-age=3600",
                                                     "X-Content-Type-Options": "nosniff"})


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/", home)
    r.add_get("/chat", chat)
    r.add_get("/console", console)
    r.add_get("/pricing", pricing)
    r.add_get("/ops", ops)
    r.add_get("/static/vendor/{name}", vendor)
    r.add_static("/static/", STATIC, append_version=False)
