"""The web pages (/, /chat, /console, /pricing, /docs, /ops) and their static files, served by the edge.

The pages are plain HTML, CSS and JavaScript; the few libraries they load (Markdown,
sanitising, highlighting, charts) come from npm through `make web` into
edge/web/node_modules and are served from there, file by file, as /static/vendor/*.

A page's HTML is a small template in the visitor's language (edge/i18n.py): `{{lang}}`
becomes `zh-CN` or `en` (for `<html lang>` and the catalogue script `/i18n/{{lang}}.js`,
which every page loads before common.js), and `{{t:key}}` that key's text.
"""
from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

from edge import captcha, i18n, sessions
from edge.errors import OpenAIError
from edge.state import CONFIG

WEB = Path(__file__).resolve().parent / "web"
STATIC = WEB / "static"
MODULES = WEB / "node_modules"
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")

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
# On every page and every static file alike (a page opened as /static/chat.html too).
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


_TEMPLATE = re.compile(r"\{\{(lang|t:[\w.-]+)\}\}")


def render(template: str, lang: str, captcha_tags: str = "") -> str:
    """The page in `lang`; `{{captcha}}` becomes the captcha's head tags (edge/captcha.py), if any."""
    text = _TEMPLATE.sub(lambda m: lang if m.group(1) == "lang" else i18n.t(lang, m.group(1)[2:]), template)
    return text.replace("{{captcha}}", captcha_tags)


def _page(name: str, request: web.Request) -> web.Response:
    lang = i18n.language(request)
    # The sign-up captcha's widget, on the one page that signs up, and only when configured.
    widget = request.app[CONFIG].captcha if name == "console.html" else None
    html = render((STATIC / name).read_text(encoding="utf-8"), lang, captcha.head_tags(widget))
    headers = {**HEADERS, "Content-Language": lang, "Vary": "Accept-Language, Cookie"}
    headers["Content-Security-Policy"] = captcha.csp(HEADERS["Content-Security-Policy"], widget)
    # The same URL answers in two languages: caches must keep them apart.
    return web.Response(text=html, content_type="text/html", charset="utf-8", headers=headers)


async def catalogue(request: web.Request) -> web.StreamResponse:
    lang = request.match_info["lang"]
    if lang not in i18n.LANGUAGES:
        raise OpenAIError(404, f"Invalid URL ({request.method} {request.path})", code="unknown_url")
    return web.Response(body=i18n.script(lang), content_type="text/javascript", charset="utf-8", headers=HEADERS)


async def home(request: web.Request) -> web.StreamResponse:
    return _page("home.html", request)


async def docs(request: web.Request) -> web.StreamResponse:
    return _page("docs.html", request)


async def chat(request: web.Request) -> web.StreamResponse:
    return _page("chat.html", request)


async def console(request: web.Request) -> web.StreamResponse:
    return _page("console.html", request)


async def pricing(request: web.Request) -> web.StreamResponse:
    return _page("pricing.html", request)


async def demo_pay(request: web.Request) -> web.StreamResponse:
    """The demo provider's pay page (the order id is read from the path by its script)."""
    return _page("demo-pay.html", request)


async def ops(request: web.Request) -> web.StreamResponse:
    """Operators only: anyone else is sent to the console to sign in as one."""
    if not sessions.has_session(request):
        raise web.HTTPFound("/console?next=/ops")
    try:
        await sessions.operator(request)
    except OpenAIError:
        raise web.HTTPFound("/console?next=/ops") from None
    return _page("ops.html", request)


async def vendor(request: web.Request) -> web.StreamResponse:
    path = VENDOR.get(request.match_info["name"])
    if path is None or not (MODULES / path).is_file():
        raise OpenAIError(404, f"Invalid URL ({request.method} {request.path})", code="unknown_url")
    return web.FileResponse(MODULES / path, headers={**HEADERS, "Cache-Control": "public, max-age=3600"})


async def static(request: web.Request) -> web.StreamResponse:
    """A file of edge/web/static itself (no subfolders, no dot files), with the pages' headers."""
    name = request.match_info["name"]
    path = STATIC / name
    if not _PLAIN_NAME.fullmatch(name) or not path.is_file():
        raise OpenAIError(404, f"Invalid URL ({request.method} {request.path})", code="unknown_url")
    return web.FileResponse(path, headers=HEADERS)


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/", home)
    r.add_get("/chat", chat)
    r.add_get("/console", console)
    r.add_get("/pricing", pricing)
    r.add_get("/pay/demo/{id}", demo_pay)
    r.add_get("/docs", docs)
    r.add_get("/ops", ops)
    r.add_get("/i18n/{lang}.js", catalogue)
    r.add_get("/static/vendor/{name}", vendor)
    r.add_get("/static/{name}", static)
