"""`openai` channels: any OpenAI-compatible base URL (OpenAI, DeepSeek, vLLM, Ollama, ...)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from services.inference.adapters.base import Exchange, Outgoing
from services.inference.adapters.chat_as_messages import ChatAsMessagesExchange, chat_request
from services.inference.errors import InvalidRequest
from services.inference.payloads import Endpoint, dumps, upstream_body

if TYPE_CHECKING:
    from services.inference.channel import Channel


def bearer_headers(channel: Channel) -> dict[str, str]:
    key = channel.api_key.reveal()
    return {"Authorization": f"Bearer {key}"} if key else {}


class OpenAIAdapter:
    endpoints = frozenset(Endpoint)

    def refusal(self, endpoint: Endpoint, body: dict[str, Any]) -> InvalidRequest | None:
        return None

    def exchange(self, channel: Channel, out: Outgoing) -> Exchange:
        if out.endpoint is Endpoint.MESSAGES:
            return ChatAsMessagesExchange(channel, channel.base_url + Endpoint.CHAT.value, bearer_headers(channel),
                                          dumps(chat_request(out)), out.model)
        body = upstream_body(out.endpoint, out.body, out.model, stream=out.stream,
                             budget=out.budget or None)
        return Exchange(channel, channel.base_url + out.endpoint.value, bearer_headers(channel), body)

    def validate_settings(self, settings: dict[str, Any]) -> str | None:
        if settings.get("responses_api") not in (None, "native", "chat"):
            return "'settings.responses_api' must be 'native' (the upstream serves /responses) or 'chat'"
        return None
