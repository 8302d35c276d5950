"""The kinds of upstream a channel can be, each behind the same small interface (base.Adapter)."""
from __future__ import annotations

from services.inference.adapters.anthropic import AnthropicAdapter
from services.inference.adapters.azure import AzureAdapter
from services.inference.adapters.base import Adapter, Exchange, Outgoing
from services.inference.adapters.openai import OpenAIAdapter

ADAPTERS: dict[str, Adapter] = {
    "openai": OpenAIAdapter(),
    "azure": AzureAdapter(),
    "anthropic": AnthropicAdapter(),
}

__all__ = ["ADAPTERS", "Adapter", "Exchange", "Outgoing"]
