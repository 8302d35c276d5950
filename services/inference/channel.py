"""What a channel is: one upstream account that serves a set of models (a row of `channels`,
its key decrypted). A value with no behaviour beyond reading its own settings, so adapters,
routing and health can all name it without importing each other."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.common.config import Secret


@dataclass(frozen=True)
class Channel:
    id: int
    name: str
    type: str
    base_url: str
    api_key: Secret
    key_hint: str
    models: frozenset[str]
    model_map: dict[str, str]
    priority: int
    weight: int
    enabled: bool
    settings: dict[str, Any]
    created: int
    broken: bool = False  # its key cannot be decrypted (another CHATKORE_SECRET_KEY): never routed to

    def upstream_model(self, model: str) -> str:
        return self.model_map.get(model, model)

    @property
    def timeout_s(self) -> float | None:
        value = self.settings.get("timeout_s")
        return float(value) if isinstance(value, (int, float)) and value > 0 else None

    @property
    def max_concurrency(self) -> int:
        value = self.settings.get("max_concurrency")  # a JSON number: 2 may arrive as 2.0
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 1 else 0
