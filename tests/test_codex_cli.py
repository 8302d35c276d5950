"""OpenAI's Codex CLI, pointed at chatkore as a custom model provider, gets its answer over /v1/responses.

Codex (a native binary, pinned by tests/codex/package-lock.json and installed by `make test`)
sends what it sends to OpenAI: 40 KB of instructions, tools of several kinds (function,
namespace, web_search), reasoning, include, store: false, prompt_cache_key, client_metadata,
and reads the answer with its own Responses event parser. One-shot, offline, on a temp HOME.
"""
from __future__ import annotations

import json
import os
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests import mock_responses
from tests import mock_upstream as up
from tests.world import World

CODEX = Path(__file__).resolve().parent / "codex" / "node_modules" / ".bin" / "codex"


def _chat_text(text: str) -> up.Behavior:
    """A chat upstream that answers `text`, streamed, whatever tools it is offered."""

    async def behave(request: web.Request, body: dict[str, Any], path: str) -> web.StreamResponse:
        base = {"id": "chatcmpl-c", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
        deltas = [{"role": "assistant", "content": ""}, {"content": text[:6]}, {"content": text[6:]}]
        chunks = [{**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        chunks.append({**base, "choices": [], "usage": {"prompt_tokens": 9000, "completion_tokens": 4,
                                                        "total_tokens": 9004}})
        stream = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await stream.prepare(request)
        for chunk in chunks:
            await stream.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await stream.write(b"data: [DONE]\n\n")
        return stream

    return behave


@pytest.mark.parametrize("kind", ["native", "chat"])
def test_codex_exec_gets_its_answer_through_chatkore(world: World, kind: str, tmp_path: Path) -> None:
    assert CODEX.exists(), "make test installs Codex into tests/codex (npm ci)"
    settings: dict[str, Any] = {"settings": {"responses_api": "native"}} if kind == "native" else {}
    model, tag = world.served_model(**settings)
    answer = f"Hello from chatkore, {kind} path"
    world.mock.always(tag, mock_responses.ok(content=answer) if kind == "native" else _chat_text(answer))
    t = world.tenant(credits=100)
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(f"""
model = "{model}"
model_provider = "chatkore"

[model_providers.chatkore]
name = "chatkore"
base_url = "{world.url}/v1"
env_key = "CHATKORE_KEY"
wire_api = "responses"
""")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "CODEX_HOME": str(home),
           "CHATKORE_KEY": t.key, "NO_COLOR": "1", "RUST_LOG": "warn"}
    done = subprocess.run([str(CODEX), "exec", "--skip-git-repo-check", "--sandbox", "read-only", "Say hello"],
                          env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert answer in done.stdout, (done.stdout[-1000:], done.stderr[-2000:])
    sent = world.mock.received(tag)
    assert len(sent) == 1
    if kind == "native":
        body = sent[0].body
        assert sent[0].path == "responses" and body["store"] is False and body["stream"] is True
        assert {tool["type"] for tool in body["tools"]} >= {"function"}
    else:
        assert sent[0].path == "chat/completions"
        assert all(tool["type"] == "function" for tool in sent[0].body["tools"])
    rows = world.usage(t.user_id)
    assert len(rows) == 1 and rows[0]["status"] == "complete" and rows[0]["prompt_tokens"] > 1000
    assert world.balance(t.user_id) == 100 - Decimal(str(rows[0]["credits"]))
