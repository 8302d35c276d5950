"""`make run`: the whole stack on a laptop, with PostgreSQL, a demo key and (offline) a demo upstream."""
from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from services.common.config import data_dir
from services.common.migrations import apply_all
from tools.pg import embedded
from tools.stack import Stack, wait_until

DEMO_CHANNEL = "chatkore-demo"
OPENAI_MODELS = ["gpt-3.5-turbo", "gpt-3.5-turbo-0613", "gpt-3.5-turbo-16k", "gpt-3.5-turbo-16k-0613",
                 "gpt-3.5-turbo-instruct", "gpt-4", "gpt-4-0613", "gpt-4o", "gpt-4o-mini", "text-embedding-ada-002"]
# Names OpenAI has retired that the seed's users still send: on a first-start OpenAI channel they
# are aliases of current models (PUT /admin/v1/aliases/{name} changes them).
RETIRED = {"gpt-3.5-turbo-0301": "gpt-3.5-turbo", "gpt-3.5-turbo-0613": "gpt-3.5-turbo",
           "gpt-3.5-turbo-16k": "gpt-3.5-turbo", "gpt-3.5-turbo-16k-0613": "gpt-3.5-turbo",
           "gpt-4-0314": "gpt-4o", "gpt-4-0613": "gpt-4o", "gpt-4-32k": "gpt-4o", "gpt-4-32k-0613": "gpt-4o",
           "text-davinci-003": "gpt-3.5-turbo-instruct"}


def _secret(path: Path, env_name: str, prefix: str) -> str:
    """The value of `env_name`, else the one kept in the data dir, else a new one kept there."""
    if os.environ.get(env_name):
        return os.environ[env_name]
    if path.exists():
        return path.read_text().strip()
    value = prefix + secrets.token_urlsafe(32)
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


def _key_works(stack: Stack, key: str) -> bool:
    request = urllib.request.Request(stack.url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status == 200
    except urllib.error.HTTPError:
        return False


def _demo_key(stack: Stack, path: Path) -> str:
    if path.exists():
        saved = json.loads(path.read_text())
        if _key_works(stack, saved["key"]):
            return saved["key"]
    user = stack.admin("POST", "/admin/v1/users", {"name": "demo"})
    key = stack.admin("POST", f"/admin/v1/users/{user['id']}/keys", {"name": "demo"})
    path.write_text(json.dumps({"user_id": user["id"], "key": key["key"]}) + "\n")
    path.chmod(0o600)
    return key["key"]


def _channels(stack: Stack, demo_port: int) -> str:
    """Make sure something serves requests; returns a line describing what does."""
    channels = stack.admin("GET", "/admin/v1/channels")["data"]
    demo_url = f"http://127.0.0.1:{demo_port}/v1"
    if not channels:
        if os.environ.get("OPENAI_API_KEY"):
            base = os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
            stack.admin("POST", "/admin/v1/channels", {"name": "openai", "base_url": base,
                                                       "api_key": os.environ["OPENAI_API_KEY"],
                                                       "models": [m for m in OPENAI_MODELS if m not in RETIRED]})
            for name, target in RETIRED.items():
                stack.admin("PUT", f"/admin/v1/aliases/{name}", {"target": target})
            return f"channel: OpenAI at {base}"
        stack.admin("POST", "/admin/v1/channels", {"name": DEMO_CHANNEL, "base_url": demo_url, "api_key": "",
                                                   "models": OPENAI_MODELS})
        channels = stack.admin("GET", "/admin/v1/channels")["data"]
    demo = [c for c in channels if c["name"] == DEMO_CHANNEL]
    for c in demo:
        if c["base_url"] != demo_url:
            stack.admin("PATCH", f"/admin/v1/channels/{c['id']}", {"base_url": demo_url})
    if demo:
        stack.start_process("demo-upstream", "services.demo", ("--port", str(demo_port)))
        return f"channel: the bundled demo upstream at {demo_url} (deterministic answers, offline)"
    return f"channels: {', '.join(c['name'] for c in channels)}"


def main() -> int:
    data = data_dir()
    data.mkdir(parents=True, exist_ok=True)
    server = None
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        database_url, server = embedded(data / "pg")
    admin_key = _secret(data / "admin_key", "CHATKORE_ADMIN_KEY", "ck-admin-")
    secret_key = _secret(data / "secret_key", "CHATKORE_SECRET_KEY", "")
    apply_all(database_url)

    # The bundled demo upstream listens on loopback: inference may reach it, and what else the
    # operator lists (an upstream on the LAN, a local model server).
    demo_port = int(os.environ.get("CHATKORE_DEMO_PORT", "8090"))
    allow = ", ".join(filter(None, [os.environ.get("CHATKORE_UPSTREAM_ALLOW", "").strip(), f"127.0.0.1:{demo_port}"]))
    stack = Stack(database_url=database_url, admin_key=admin_key, secret_key=secret_key, log_dir=data / "logs",
                  env_extra={"CHATKORE_UPSTREAM_ALLOW": allow},
                  pki_dir=data / "pki",
                  http_port=int(os.environ.get("CHATKORE_HTTP_PORT", "8080")),
                  ports={"auth": 50051, "billing": 50052, "inference": 50053})
    for name, port in (("auth", 50051), ("billing", 50052), ("inference", 50053)):
        addr = os.environ.get(f"CHATKORE_{name.upper()}_ADDR", f"127.0.0.1:{port}")
        stack.ports[name] = int(addr.rsplit(":", 1)[1])
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stack.start()
        serving = _channels(stack, demo_port)
        demo_key = _demo_key(stack, data / "demo_key.json")
        if "demo-upstream" in stack.procs:
            demo_models = f"http://127.0.0.1:{os.environ.get('CHATKORE_DEMO_PORT', '8090')}/v1/models"
            wait_until(lambda: urllib.request.urlopen(demo_models, timeout=2).status == 200, 30, "the demo upstream")
        base = f"{stack.url}/v1"
        print(f"""
chatkore is running.
  base URL   {base}
  web        {stack.url}/chat   {stack.url}/console
  admin key  {admin_key}
  demo key   {demo_key}   (a user with 100 credits)
  {serving}
  logs       {stack.log_dir}/

Try it:
  curl {base}/chat/completions -H "Authorization: Bearer {demo_key}" \\
    -H "Content-Type: application/json" \\
    -d '{{"model": "gpt-3.5-turbo", "messages": [{{"role": "user", "content": "Say this is a test!"}}]}}'

Ctrl-C stops everything.
""", flush=True)
        while not stop.is_set():
            dead = [n for n, p in stack.procs.items() if p.poll() is not None]
            if dead:
                print(f"chatkore: {', '.join(dead)} stopped unexpectedly; see {stack.log_dir}/", file=sys.stderr)
                return 1
            stop.wait(0.5)
        return 0
    finally:
        print("chatkore: stopping...", flush=True)
        stack.stop()
        if server is not None:
            server.cleanup()
        print("chatkore: stopped.", flush=True)


if __name__ == "__main__":
    time.tzset()
    sys.exit(main())
