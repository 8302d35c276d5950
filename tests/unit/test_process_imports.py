"""Each process loads only what it uses (issue 16): the edge no database driver, auth and billing
no HTTP framework, and inference no tiktoken until a count needs it — and then only the
encoding that count uses. Each process's modules are read in a fresh interpreter."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

ENTRIES = {
    "edge": ("edge.__main__", "edge.app"),
    "auth": ("services.auth.__main__", "services.auth.server"),
    "billing": ("services.billing.__main__", "services.billing.server"),
    "inference": ("services.inference.__main__", "services.inference.server"),
}


def _modules_after(code: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "gen"), str(ROOT)])}
    out = subprocess.run([sys.executable, "-c", code + "\nimport json, sys\nprint(json.dumps(RESULT))"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _top_level_modules(process: str) -> set[str]:
    imports = "; ".join(f"import {m}" for m in ENTRIES[process])
    result = _modules_after(f"{imports}\nimport sys\nRESULT = sorted({{m.split('.')[0] for m in sys.modules}})")
    return set(result)


@pytest.mark.parametrize(("process", "absent"), [
    ("edge", {"psycopg", "psycopg_pool", "tiktoken"}),
    ("auth", {"aiohttp", "tiktoken", "stripe"}),
    ("billing", {"aiohttp", "tiktoken", "stripe"}),
    ("inference", {"tiktoken", "tiktoken_ext"}),
])
def test_a_process_does_not_load_what_it_does_not_use(process: str, absent: set[str]) -> None:
    loaded = _top_level_modules(process)
    assert "grpc" in loaded  # the entry point was really imported
    assert not absent & loaded, sorted(absent & loaded)


def test_the_services_still_load_their_own_drivers() -> None:
    # The split moves imports, it does not lose them: the database driver where SQL runs, the
    # HTTP client where upstreams are called.
    assert {"psycopg", "psycopg_pool"} <= _top_level_modules("billing")
    assert {"psycopg", "aiohttp"} <= _top_level_modules("inference")


def test_tiktoken_loads_only_the_encoding_a_count_needs_when_it_needs_it() -> None:
    result = _modules_after(
        "import sys\n"
        "from services.inference import tokens\n"
        "before = ('tiktoken' in sys.modules, tokens.loaded())\n"
        "n = tokens.count_text('Say this is a test!', tokens.encoding_for('gpt-3.5-turbo'))\n"
        "after_count = tokens.loaded()\n"
        "warmed = tokens.warm(['gpt-4o-mini', 'gpt-4o'])\n"
        "RESULT = [before, n, after_count, warmed, tokens.loaded()]\n")
    before, n, after_count, warmed, finally_loaded = result
    assert before == [False, []]
    assert n == 6 and after_count == ["cl100k_base"]
    assert warmed == ["o200k_base"] and finally_loaded == ["cl100k_base", "o200k_base"]
