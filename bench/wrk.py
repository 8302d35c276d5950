"""Closed-loop HTTP load with wrk: installed if missing, a Lua script for the POST body and key, JSON out."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.procs import pin_prefix

_SCRIPT = """
wrk.method = "POST"
wrk.body = [==[%(body)s]==]
wrk.headers["Content-Type"] = "application/json"
%(auth)s

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\\"requests\\":%%d,\\"duration_us\\":%%d,\\"bytes\\":%%d,\\"connect\\":%%d,\\"read\\":%%d," ..
    "\\"write\\":%%d,\\"status\\":%%d,\\"timeout\\":%%d,\\"p50_us\\":%%d,\\"p90_us\\":%%d,\\"p99_us\\":%%d," ..
    "\\"max_us\\":%%d,\\"mean_us\\":%%.1f}\\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    errors: int          # connect, read, write, timeout, and any non-2xx/3xx status
    status_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


def ensure_installed() -> str:
    """The wrk binary; installs the Debian package when it is missing and we may."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("bench: wrk is missing; installing the Debian package (apt-get install -y wrk)", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "wrk"]
        if subprocess.run(install, env=env, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, check=False)
            subprocess.run(install, env=env, check=False)
        found = shutil.which("wrk")
        if found:
            return found
    raise SystemExit("bench: wrk is needed and could not be installed here; install it (Debian/Ubuntu: "
                     "`sudo apt-get install wrk`, macOS: `brew install wrk`) and run `make bench` again")


_ROTATE = """
local keys = {%s}
local turn = 0
request = function()
  turn = turn %% #keys + 1
  wrk.headers["Authorization"] = "Bearer " .. keys[turn]
  return wrk.format()
end
"""


def script(body: bytes, key: str | list[str] | None, directory: Path) -> Path:
    """The Lua script: one key on every request, or several taken in turn (one per tenant)."""
    if b"]==]" in body:
        raise ValueError("the body cannot be quoted for Lua")
    keys = [key] if isinstance(key, str) else list(key or [])
    if len(keys) > 1:
        auth = _ROTATE % ", ".join(f'"{k}"' for k in keys)
    else:
        auth = f'wrk.headers["Authorization"] = "Bearer {keys[0]}"' if keys else ""
    fd, name = tempfile.mkstemp(prefix="wrk-", suffix=".lua", dir=directory)
    with os.fdopen(fd, "w") as f:
        f.write(_SCRIPT % {"body": body.decode(), "auth": auth})
    os.chmod(name, 0o600)  # it holds the benchmark key
    return Path(name)


def parse(output: str) -> WrkResult:
    for line in output.splitlines():
        if line.startswith("WRKJSON "):
            d = json.loads(line[len("WRKJSON "):])
            errors = d["connect"] + d["read"] + d["write"] + d["status"] + d["timeout"]
            return WrkResult(
                requests=d["requests"], duration_s=d["duration_us"] / 1e6, errors=errors, status_errors=d["status"],
                p50_ms=d["p50_us"] / 1000, p90_ms=d["p90_us"] / 1000, p99_ms=d["p99_us"] / 1000,
                max_ms=d["max_us"] / 1000, mean_ms=d["mean_us"] / 1000,
            )
    raise RuntimeError(f"wrk printed no summary:\n{output[-2000:]}")


def start(url: str, lua: Path, *, connections: int, duration_s: float, core: int | None) -> subprocess.Popen[str]:
    """Start wrk (one thread: it shares its core with the mock); `finish()` collects the result."""
    command = [*pin_prefix(core), shutil.which("wrk") or "wrk", "-t1", f"-c{connections}",
               f"-d{max(1, round(duration_s))}s", "--timeout", "60s", "-s", str(lua), url]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen[str], timeout_s: float) -> WrkResult:
    out, _ = proc.communicate(timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{out[-2000:]}")
    return parse(out)
