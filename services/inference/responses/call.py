"""One Responses call before it goes out: its history resolved, and its request for each kind of channel."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from services.inference.adapters import ADAPTERS, Exchange, Outgoing
from services.inference.errors import InvalidRequest
from services.inference.payloads import Endpoint
from services.inference.responses.book import ResponseBook
from services.inference.responses.events import ChatEvents
from services.inference.responses.reply import Envelope, from_chat, response_id
from services.inference.responses.request import (
    chat_request,
    custom_tool_names,
    input_items,
    replayable,
    tools_of,
)

if TYPE_CHECKING:
    from services.inference.channel import Channel

NATIVE_HOSTS = ("api.openai.com",)


@dataclass(frozen=True)
class ResponsesCall:
    envelope: Envelope
    items: list[dict[str, Any]]   # everything the model sees: the previous turns, then this input
    native_body: dict[str, Any]   # for an upstream that speaks the Responses API
    chat_body: dict[str, Any]     # for one that speaks chat completions
    custom: frozenset[str]        # custom tools, carried as functions over chat
    store: bool
    user_id: int
    background: bool = False  # answered queued, run server-side (responses/background.py)


async def prepare(book: ResponseBook, *, user_id: int, request_id: str, model: str,
                  body: dict[str, Any]) -> ResponsesCall:
    history: list[dict[str, Any]] = []
    previous = body.get("previous_response_id")
    if isinstance(previous, str) and previous:
        stored = await book.conversation(user_id, previous)
        if stored is None:
            raise InvalidRequest(f"Previous response with id '{previous[:100]}' not found.",
                                 param="previous_response_id", code="previous_response_not_found")
        history = replayable(stored)
    items = history + input_items(body)
    background = body.get("background") is True
    store = body.get("store", True) is not False
    if background and not store:
        raise InvalidRequest("A background response must be stored: 'background' needs 'store' to be true.",
                             param="background")
    # The chain and the background run are ours: the upstream answers one plain call.
    native = {k: v for k, v in body.items() if k not in ("previous_response_id", "background")}
    if history:
        native["input"] = items  # the chain is ours: the upstream gets the whole conversation
    return ResponsesCall(
        envelope=Envelope(response_id(request_id), model, body, background=background), items=items,
        native_body=native, chat_body=chat_request(body, items), custom=custom_tool_names(tools_of(body, items)),
        store=store, user_id=user_id, background=background,
    )


def native(channel: Channel) -> bool:
    """Whether this channel speaks the Responses API itself: `settings.responses_api` says
    `native` or `chat`; unset, OpenAI's own API does and other OpenAI-compatible hosts do not."""
    if channel.type != "openai":
        return False
    mode = channel.settings.get("responses_api")
    if mode in ("native", "chat"):
        return mode == "native"
    return urlsplit(channel.base_url).hostname in NATIVE_HOSTS


class TranslatedExchange(Exchange):
    """A chat exchange (any adapter's) whose answers come back as Responses objects and events."""

    def __init__(self, inner: Exchange, call: ResponsesCall) -> None:
        super().__init__(inner.channel, inner.url, inner.headers, inner.body)
        self.inner = inner
        self.call = call
        self.events = ChatEvents(call.envelope, call.custom)

    def reply(self, obj: dict[str, Any]) -> dict[str, Any]:
        return from_chat(self.inner.reply(obj), self.call.envelope, self.call.custom)

    def chunks(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        return [e for chunk in self.inner.chunks(event) for e in self.events.take(chunk)]

    def flush(self) -> list[dict[str, Any]]:
        return self.events.flush()

    def held_back(self) -> str:
        return self.events.held_back()

    def failure(self, status: int, payload: bytes, headers: Any) -> Any:
        return self.inner.failure(status, payload, headers)


def exchange(channel: Channel, call: ResponsesCall, *, upstream_model: str, stream: bool, budget: int,
             capped: bool) -> Exchange:
    adapter = ADAPTERS[channel.type]
    if native(channel):
        return adapter.exchange(channel, Outgoing(Endpoint.RESPONSES, call.native_body, upstream_model,
                                                  call.envelope.model, stream, budget, capped))
    inner = adapter.exchange(channel, Outgoing(Endpoint.CHAT, call.chat_body, upstream_model, call.envelope.model,
                                               stream, budget, capped))
    return TranslatedExchange(inner, call)
