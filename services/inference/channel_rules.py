"""The rules an operator's channel must follow: the fields of a create or an update checked
and turned into a row's values (the key sealed), and upstream addresses the destination
policy refuses turned away at once."""
from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import SplitResult, urlsplit

from services.inference.adapters import ADAPTERS
from services.inference.destinations import DestinationPolicy
from services.inference.errors import InvalidRequest
from services.inference.secretbox import SecretBox, mask

CHANNEL_TYPES = tuple(ADAPTERS)


class ChannelRules:
    def __init__(self, box: SecretBox, destinations: DestinationPolicy) -> None:
        self._box = box
        self._destinations = destinations

    def row_values(self, values: dict[str, Any], partial: bool) -> dict[str, Any]:
        """The columns to write for `values` (all of them unless `partial`), or InvalidRequest
        naming the first field that breaks a rule."""
        out: dict[str, Any] = {}
        if "name" in values or not partial:
            name = str(values.get("name") or "").strip()
            if not name or len(name) > 200:
                raise InvalidRequest("'name' must be a non-empty string of at most 200 characters", param="name")
            out["name"] = name
        if "type" in values or not partial:
            kind = values.get("type") or "openai"
            if kind not in CHANNEL_TYPES:
                raise InvalidRequest(f"'type' must be one of {', '.join(CHANNEL_TYPES)}", param="type")
            out["type"] = kind
        if "base_url" in values or not partial:
            # Azure's is the resource endpoint; every other kind's includes the version path.
            url = str(values.get("base_url") or "").strip().rstrip("/")
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc or len(url) > 2000:
                raise InvalidRequest("'base_url' must be an http(s) URL such as https://api.openai.com/v1",
                                     param="base_url")
            refusal = self._refusal(parts)
            if refusal:
                raise InvalidRequest(f"'base_url' is not allowed: {refusal}", param="base_url")
            out["base_url"] = url
        if "api_key" in values or not partial:
            key = str(values.get("api_key") or "")
            if len(key) > 8192 or any(ch in key for ch in "\r\n"):
                raise InvalidRequest("'api_key' is not a valid key", param="api_key")
            out["api_key_enc"] = self._box.seal(key)
            out["key_hint"] = mask(key) if key else ""
        if "models" in values or not partial:
            models = values.get("models")
            if (not isinstance(models, list) or not models or len(models) > 1000
                    or not all(isinstance(m, str) and 0 < len(m) <= 200 for m in models)):
                raise InvalidRequest("'models' must be a non-empty list of model names", param="models")
            out["models"] = sorted(set(models))
        if "model_map" in values or not partial:
            mapping = values.get("model_map") or {}
            if not isinstance(mapping, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and v for k, v in mapping.items()
            ):
                raise InvalidRequest("'model_map' must map public model names to upstream names",
                                     param="model_map")
            out["model_map"] = mapping
        for name, default, low in (("priority", 0, -(10**6)), ("weight", 1, 0)):
            if name in values or not partial:
                value = values.get(name, default)
                if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= 10**6:
                    raise InvalidRequest(f"'{name}' must be an integer", param=name)
                out[name] = value
        if "enabled" in values or not partial:
            enabled = values.get("enabled", True)
            if not isinstance(enabled, bool):
                raise InvalidRequest("'enabled' must be true or false", param="enabled")
            out["enabled"] = enabled
        if "settings" in values or not partial:
            settings = values.get("settings") or {}
            if not isinstance(settings, dict):
                raise InvalidRequest("'settings' must be an object", param="settings")
            problem = settings_problem(settings, str(out.get("type") or values.get("_current_type") or "openai"))
            if problem:
                raise InvalidRequest(problem, param="settings")
            out["settings"] = settings
        return out

    def _refusal(self, parts: SplitResult) -> str | None:
        """A base_url naming an address the policy refuses is refused at once; a host name is
        checked on every connection, on what it resolves to then."""
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return "its port is not a number from 1 to 65535"
        host = parts.hostname or ""
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return None if host else "it names no host"
        return self._destinations.refusal(host, port)

    def empty_key(self) -> bytes:
        """The sealed empty key, for an update that clears a channel's key."""
        return self._box.seal("")


def settings_problem(settings: dict[str, Any], kind: str) -> str | None:
    timeout = settings.get("timeout_s")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not 0 < timeout <= 3600):
        return "'settings.timeout_s' must be a number of seconds between 0 and 3600"
    concurrency = settings.get("max_concurrency")
    if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, (int, float))
                                    or concurrency < 0 or concurrency != int(concurrency)):
        return "'settings.max_concurrency' must be a whole number (0 = unlimited)"
    return ADAPTERS[kind].validate_settings(settings) if kind in ADAPTERS else None
