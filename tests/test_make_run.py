"""`make run` as a developer meets it: one command, a printed URL and key, the seed's examples work,
Ctrl-C stops everything."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tools.stack import ROOT, free_port, wait_until


def test_make_run_serves_the_seed_examples(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("http", "auth", "billing", "inference", "demo")}
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "OPENAI_API_KEY", "CHATKORE_ADMIN_KEY")}
    env.update({
        "PYTHONPATH": f"{ROOT / 'gen'}{os.pathsep}{ROOT}",
        "CHATKORE_DATA_DIR": str(tmp_path / "data"),
        "CHATKORE_HTTP_PORT": str(ports["http"]),
        "CHATKORE_AUTH_ADDR": f"127.0.0.1:{ports['auth']}",
        "CHATKORE_BILLING_ADDR": f"127.0.0.1:{ports['billing']}",
        "CHATKORE_INFERENCE_ADDR": f"127.0.0.1:{ports['inference']}",
        "CHATKORE_DEMO_PORT": str(ports["demo"]),
    })
    out_path = tmp_path / "run.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tools.run"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        banner = wait_until(lambda: "Ctrl-C stops everything" in (text := out_path.read_text()) and text, 90,
                            "make run to print its banner")
        base = re.search(r"base URL\s+(\S+)", banner).group(1)
        key = re.search(r"demo key\s+(sk-\S+)", banner).group(1)
        assert re.search(r"admin key\s+ck-admin-\S+", banner)
        assert base == f"http://127.0.0.1:{ports['http']}/v1"

        # The seed's curl example, header spacing and all.
        body = json.dumps({"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "Say this is a test!"}],
                           "temperature": 0.7})
        curl = subprocess.run(["curl", "-s", f"{base}/chat/completions", "-H", "Content-Type: application/json",
                               "-H", f"Authorization:  Bearer {key}", "-d", body],
                              capture_output=True, check=True, timeout=60)
        reply = json.loads(curl.stdout)
        assert reply["usage"]["prompt_tokens"] == 13 and reply["choices"][0]["message"]["content"]

        # The seed's Python example.
        resp = requests.post(f"{base}/chat/completions", json={
            "model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "回复这是一个测试"}], "temperature": 0,
        }, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        assert resp.status_code == 200 and "回复这是一个测试" in resp.json()["choices"][0]["message"]["content"]
        # A user with the sign-up bonus paid for both, at gpt-3.5-turbo's seeded price (1.5 and 2
        # credits per 1,000 prompt and completion tokens, rounded up to the micro-credit).
        paid = 0
        for usage in (reply["usage"], resp.json()["usage"]):
            paid += -(-(usage["prompt_tokens"] * 1_500_000 + usage["completion_tokens"] * 2_000_000) // 1000)
        headers = {"Authorization": f"Bearer {key}"}
        sub = requests.get(f"{base}/dashboard/billing/subscription", headers=headers, timeout=10).json()
        assert sub["hard_limit_usd"] == 100  # the balance plus this month's spend
        spent = requests.get(f"{base}/dashboard/billing/usage", headers=headers, timeout=10).json()["total_usage"]
        assert paid > 0 and spent == round(paid / 10_000, 4)  # hundredths of a credit
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
    assert code == 0, out_path.read_text()
    assert "chatkore: stopped." in out_path.read_text()
    # Nothing is left listening.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{ports['http']}/healthz", timeout=1)
        except requests.ConnectionError:
            break
    else:
        raise AssertionError("the edge still answers after Ctrl-C")
