"""What every kind of upstream does for a call: build the request, and speak OpenAI back.

An adapter turns one OpenAI call into one upstream request (an Exchange) and the
upstream's answer into OpenAI's shapes: a unary reply becomes a chat.completion
object, each stream event becomes zero or more chunk objects, a non-200 answer
becomes an UpstreamError of the right kind. Relay only ever sees OpenAI's shapes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from services.inference.errors import InvalidRequest
from services.inference.failures import UpstreamError, classify
from services.inference.payloads import Endpoint

if TYPE_CHECKING:
    from services.inference.channel import Channel


@dataclass(frozen=True)
class Outgoing:
    """One OpenAI call as it goes to one channel."""

    endpoint: Endpoint
    body: dict[str, Any]  # the client's JSON object; adapters copy, never mutate it
    model: str            # the upstream's name for the model (after model_map)
    public_model: str     # the name our client asked for
    stream: bool
    budget: int           # completion tokens per choice the hold pays for
    capped: bool          # the budget is below what the client asked for, so it must be sent
    headers: dict[str, str] = field(default_factory=dict)  # client headers for an upstream of its dialect


class Exchange:
    """One request to one upstream, and the translation of its answer. The base speaks OpenAI."""

    def __init__(self, channel: Channel, url: str, headers: dict[str, str], body: bytes) -> None:
        self.channel = channel
        self.url = url
        self.headers = headers
        self.body = body

    def reply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A unary answer in OpenAI's shape."""
        return obj

    def chunks(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """One stream event as OpenAI chunk objects (none, one or several)."""
        return [event]

    def flush(self) -> list[dict[str, Any]]:
        """What is still to come once the upstream's stream has ended (none, for most)."""
        return []

    def held_back(self) -> str:
        """Output read from the upstream that the client has not been sent yet (none, for most):
        if the stream breaks now, it never will be."""
        return ""

    def failure(self, status: int, payload: bytes, headers: Any) -> UpstreamError:
        return classify(status, payload, headers, self.channel)


class Adapter(Protocol):
    endpoints: frozenset[Endpoint]

    def refusal(self, endpoint: Endpoint, body: dict[str, Any]) -> InvalidRequest | None:
        """Why this kind of upstream cannot carry the call, if it cannot (checked before any hold)."""
        ...

    def exchange(self, channel: Channel, out: Outgoing) -> Exchange:
        ...

    def validate_settings(self, settings: dict[str, Any]) -> str | None:
        """What is wrong with a channel's type-specific settings, if anything."""
        ...
