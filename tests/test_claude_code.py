"""Anthropic's Claude Code, pointed at chatkore with ANTHROPIC_BASE_URL and a chatkore key, gets its
answer over /v1/messages: natively from an Anthropic channel, and translated from the demo-like
OpenAI mock (which must answer in text, not call one of the tools Claude Code always offers).

Claude Code (a native binary, pinned by tests/claude_code/package-lock.json and installed by
`make test`) sends what it sends to Anthropic: a large first request with system blocks carrying
cache_control, a dozen tools, thinking and metadata, anthropic-beta lists, `?beta=true`, and reads
the SSE stream with its own parser. One-shot (`claude -p`), offline, on a temp HOME.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests import mock_anthropic
from tests.world import World

# The platform's own package carries the binary (bin/claude.exe is a stub its install script replaces).
CLAUDE = next((Path(__file__).resolve().parent / "claude_code" / "node_modules" / "@anthropic-ai").glob(
    "claude-code-*/claude"), Path("claude-code-is-not-installed"))


def _text(answer: str):  # noqa: ANN202 - a mock Behavior
    """An Anthropic upstream that answers `answer`, whatever it is offered."""

    async def behave(request: web.Request, body: dict[str, Any], path: str) -> web.StreamResponse:
        if not request.headers.get("x-api-key") or not request.headers.get("anthropic-version"):
            return mock_anthropic.error_response(401, "authentication_error", "headers missing")
        message = {"id": "msg_cc", "type": "message", "role": "assistant", "model": body.get("model"),
                   "content": [{"type": "text", "text": answer}], "stop_reason": "end_turn", "stop_sequence": None,
                   "usage": {"input_tokens": 12000, "output_tokens": 7}}
        if not body.get("stream"):
            return web.json_response(message)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in mock_anthropic.events(message):
            await response.write(mock_anthropic.frame(event))
        return response

    return behave


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_claude_code_one_shot_through_chatkore(world: World, kind: str, tmp_path: Path) -> None:
    assert CLAUDE.exists(), "make test installs Claude Code into tests/claude_code (npm ci)"
    model, tag = world.served_model(type=kind)
    answer = "Hello from chatkore"
    if kind == "anthropic":
        world.mock.always(tag, _text(answer))
    t = world.tenant(credits=100)
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "ANTHROPIC_BASE_URL": world.url,
           "ANTHROPIC_API_KEY": t.key, "DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
           "DISABLE_AUTOUPDATER": "1", "ANTHROPIC_SMALL_FAST_MODEL": model, "ANTHROPIC_DEFAULT_HAIKU_MODEL": model,
           "CI": "1", "NO_COLOR": "1"}
    done = subprocess.run([str(CLAUDE), "-p", "Say hello", "--output-format", "json", "--model", model,
                           "--max-turns", "3"],
                          env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["is_error"] is False, result
    sent = world.mock.received(tag)
    assert sent, "nothing reached the upstream"
    big = max(sent, key=lambda r: len(json.dumps(r.body)))
    if kind == "anthropic":
        assert result["result"] == answer
        assert big.path == "messages" and big.body["stream"] is True and big.body["tools"]
        assert big.headers["anthropic-version"] and big.headers.get("anthropic-beta")
    else:
        assert "Say hello" in result["result"]  # the demo-like mock says the prompt back, in text
        assert big.path == "chat/completions" and big.body["tools"]
    assert len(json.dumps(big.body)) > 20_000
    rows = world.usage(t.user_id)
    assert rows and all(r["status"] == "complete" for r in rows)
    assert world.held(t.user_id) == 0 and world.balance(t.user_id) < 100
