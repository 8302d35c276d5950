"""Reading settings from the environment, once, at start-up."""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_AUTH_ADDR = "127.0.0.1:50051"
DEFAULT_BILLING_ADDR = "127.0.0.1:50052"
DEFAULT_INFERENCE_ADDR = "127.0.0.1:50053"


class ConfigError(SystemExit):
    """A setting is missing or malformed; the process stops naming the variable."""

    def __init__(self, message: str) -> None:
        super().__init__(f"chatkore: configuration error: {message}")


class Secret:
    """A string that never shows itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('****')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


def env_str(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, "").strip()
    if value:
        return value
    if default is None:
        raise ConfigError(f"{name} must be set")
    return default


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def env_secret(name: str, default: str | None = None) -> Secret:
    return Secret(env_str(name, default))


def env_optional(name: str) -> str | None:
    return os.environ.get(name, "").strip() or None


def data_dir() -> Path:
    return Path(env_str("CHATKORE_DATA_DIR", ".data"))


def listen_address(service: str, default_addr: str) -> str:
    """Where a service binds: CHATKORE_<SVC>_LISTEN, else the port of its peer address.

    In Kubernetes peers dial `dns:///auth:50051` while the pod binds `[::]:50051`.
    """
    explicit = env_optional(f"CHATKORE_{service.upper()}_LISTEN")
    if explicit:
        return explicit
    addr = env_str(f"CHATKORE_{service.upper()}_ADDR", default_addr)
    if addr.startswith("dns:"):
        return "[::]:" + addr.rsplit(":", 1)[1]
    return addr
