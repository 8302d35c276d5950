"""GET /openapi.json: the OpenAPI document of the public and admin API (edge/openapi.json)."""
from __future__ import annotations

from pathlib import Path

from aiohttp import web

DOCUMENT = Path(__file__).resolve().parent / "openapi.json"


async def document(request: web.Request) -> web.Response:
    return web.Response(body=DOCUMENT.read_bytes(), content_type="application/json")
