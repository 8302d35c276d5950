"""OpenAI JSON in and out: the upstream request, and replies rewritten for our client."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple

from services.common import jsoncodec
from services.inference import messages, tokens


class Endpoint(Enum):
    CHAT = "/chat/completions"
    COMPLETIONS = "/completions"
    EMBEDDINGS = "/embeddings"
    RESPONSES = "/responses"
    MESSAGES = "/messages"  # Anthropic's Messages API (services/inference/messages.py)
    # Images, audio and moderations (services/inference/media.py): OpenAI-compatible channels only.
    IMAGES_GENERATIONS = "/images/generations"
    IMAGES_EDITS = "/images/edits"
    IMAGES_VARIATIONS = "/images/variations"
    AUDIO_SPEECH = "/audio/speech"
    AUDIO_TRANSCRIPTIONS = "/audio/transcriptions"
    AUDIO_TRANSLATIONS = "/audio/translations"
    MODERATIONS = "/moderations"


MEDIA = frozenset({Endpoint.IMAGES_GENERATIONS, Endpoint.IMAGES_EDITS, Endpoint.IMAGES_VARIATIONS,
                   Endpoint.AUDIO_SPEECH, Endpoint.AUDIO_TRANSCRIPTIONS, Endpoint.AUDIO_TRANSLATIONS,
                   Endpoint.MODERATIONS})


_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")


def dumps(obj: Any) -> bytes:
    return jsoncodec.dumps(obj)


def count_prompt(endpoint: Endpoint, body: dict[str, Any], model: str) -> int:
    if endpoint is Endpoint.CHAT:
        return tokens.count_chat_prompt(body, model)
    if endpoint is Endpoint.MESSAGES:
        return messages.count_prompt(body, model)
    enc = tokens.encoding_for(model)
    if endpoint is Endpoint.COMPLETIONS:
        return tokens.count_input(body.get("prompt"), enc) + tokens.count_text(str(body.get("suffix") or ""), enc)
    return tokens.count_input(body.get("input"), enc)


def price_options(body: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """What in a request makes the upstream charge more than its base price: the service_tier
    asked for, and the costly features used (audio output, web search, predicted outputs).
    Billing prices each by the model's row or refuses the call (billing.proto ReserveRequest)."""
    tier = body.get("service_tier")
    features = []
    modalities = body.get("modalities")
    if (isinstance(modalities, list) and "audio" in modalities) or body.get("audio") is not None \
            or _sends_audio(body.get("messages")):
        features.append("audio")
    # Chat's web_search_options only: a Responses `web_search` tool (Codex sends one with every
    # request) is left to the upstream, as refusing it would refuse every Codex call.
    if body.get("web_search_options") is not None:
        features.append("web_search")
    if body.get("prediction") is not None:
        features.append("prediction")
    return (tier if isinstance(tier, str) else ""), tuple(features)


def _sends_audio(messages: Any) -> bool:
    """Whether chat messages carry audio input (input_audio parts), billed at audio prices."""
    if not isinstance(messages, list):
        return False
    return any(isinstance(m, dict) and isinstance(m.get("content"), list)
               and any(isinstance(p, dict) and p.get("type") == "input_audio" for p in m["content"])
               for m in messages)


def upstream_body(endpoint: Endpoint, body: dict[str, Any], upstream_model: str, *, stream: bool,
                  budget: int | None) -> bytes:
    return dumps(upstream_object(endpoint, body, upstream_model, stream=stream, budget=budget))


def upstream_object(endpoint: Endpoint, body: dict[str, Any], upstream_model: str, *, stream: bool,
                    budget: int | None) -> dict[str, Any]:
    """The request for one OpenAI-compatible upstream: its model name, the completion budget
    the hold pays for, and a request for usage on streams. Everything else passes through untouched."""
    out = dict(body)
    out["model"] = upstream_model
    if endpoint is Endpoint.RESPONSES:
        # Responses streams always end with their usage; the budget has its own name.
        if budget is not None:
            out["max_output_tokens"] = budget
        return out
    if budget is not None and endpoint is not Endpoint.EMBEDDINGS:
        # Reasoning models take only max_completion_tokens (OpenAI refuses max_tokens for them),
        # whichever name the client, or a translation from the Responses API, used.
        if "max_completion_tokens" in body or (
            endpoint is Endpoint.CHAT and upstream_model.startswith(_REASONING_PREFIXES)
        ):
            out["max_completion_tokens"] = budget
            out.pop("max_tokens", None)
        else:
            out["max_tokens"] = budget
    if stream:
        options = body.get("stream_options")
        out["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return out


class Usage(NamedTuple):
    """Tokens a call used, as billing.proto's TokenUsage: prompt includes cache reads and
    writes, completion includes reasoning; the audio tokens among them are priced apart."""

    prompt: int
    completion: int
    cached_prompt: int = 0
    cache_write: int = 0
    reasoning: int = 0
    audio_prompt: int = 0
    audio_completion: int = 0


def _detail(usage: dict[str, Any], groups: tuple[str, ...], name: str) -> int:
    for group in groups:
        details = usage.get(group)
        if isinstance(details, dict):
            value = details.get(name)
            if isinstance(value, int) and value > 0:
                return value
    return 0


def _count(usage: dict[str, Any], name: str) -> int:
    value = usage.get(name)
    return value if isinstance(value, int) and value > 0 else 0


def anthropic_usage(usage: Any) -> Usage | None:
    """An Anthropic usage object as a Usage: its cache reads and writes are prompt tokens too."""
    counts = messages.usage_of(usage)
    if counts is None:
        return None
    return Usage(counts[0], counts[1], _count(usage, "cache_read_input_tokens"),
                 _count(usage, "cache_creation_input_tokens"))


def usage_of(obj: dict[str, Any], endpoint: Endpoint = Endpoint.CHAT) -> Usage | None:
    """The tokens an upstream reported, if it reported them sensibly: OpenAI's
    `prompt_tokens_details.cached_tokens` and `completion_tokens_details.reasoning_tokens`
    (or the Responses API's input/output names), cache writes as LiteLLM and our Anthropic
    adapter name them (`cache_creation_input_tokens`)."""
    if endpoint is Endpoint.MESSAGES:
        return anthropic_usage(obj.get("usage"))
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
    if not isinstance(prompt, int) or not isinstance(completion, int) or prompt < 0 or completion < 0:
        return None
    cached = _detail(usage, ("prompt_tokens_details", "input_tokens_details"), "cached_tokens")
    written = _count(usage, "cache_creation_input_tokens")
    reasoning = _detail(usage, ("completion_tokens_details", "output_tokens_details"), "reasoning_tokens")
    # OpenAI's audio models say which tokens were audio; they are priced at the model's audio prices.
    audio_in = _detail(usage, ("prompt_tokens_details", "input_tokens_details"), "audio_tokens")
    audio_out = _detail(usage, ("completion_tokens_details", "output_tokens_details"), "audio_tokens")
    cached, written = min(cached, prompt), min(written, prompt - min(cached, prompt))
    return Usage(prompt, completion, cached, written, min(reasoning, completion),
                 min(audio_in, prompt - cached - written), min(audio_out, completion))


def _message_text(message: Any) -> str:
    """Everything in a reply message (or delta) that is billed as completion tokens."""
    if not isinstance(message, dict):
        return ""
    parts: list[str] = []
    content = message.get("content")
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        parts.extend(str(p.get("text") or "") for p in content if isinstance(p, dict))
    for key in ("reasoning_content", "refusal"):
        if isinstance(message.get(key), str):
            parts.append(message[key])
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                parts.append(str(fn.get("name") or ""))
                parts.append(str(fn.get("arguments") or ""))
    fn = message.get("function_call")
    if isinstance(fn, dict):
        parts.append(str(fn.get("name") or ""))
        parts.append(str(fn.get("arguments") or ""))
    return "".join(parts)


def completion_texts(endpoint: Endpoint, obj: dict[str, Any]) -> list[str]:
    if endpoint is Endpoint.MESSAGES:
        return [messages.completion_text(obj)]
    choices = obj.get("choices")
    if not isinstance(choices, list):
        return []
    if endpoint is Endpoint.CHAT:
        return [_message_text(c.get("message") or c.get("delta")) for c in choices if isinstance(c, dict)]
    return [str(c.get("text") or "") for c in choices if isinstance(c, dict)]


def reply_id(endpoint: Endpoint, request_id: str) -> str:
    suffix = request_id.removeprefix("req_")
    return ("chatcmpl-" if endpoint is Endpoint.CHAT else "cmpl-") + suffix


def rewrite_reply(endpoint: Endpoint, obj: dict[str, Any], *, model: str, request_id: str,
                  usage: tuple[int, ...], counted: bool = False) -> bytes:
    """A unary reply as our client sees it: our id, the model it asked for, real usage."""
    if endpoint is Endpoint.MESSAGES:
        return messages.rewrite_reply(obj, model=model, request_id=request_id, usage=usage, counted=counted)
    if endpoint is not Endpoint.EMBEDDINGS:
        obj["id"] = reply_id(endpoint, request_id)
        obj["object"] = "chat.completion" if endpoint is Endpoint.CHAT else "text_completion"
        created = obj.get("created")
        if not isinstance(created, int) or created <= 0:
            obj["created"] = int(time.time())
        if not isinstance(obj.get("choices"), list):
            obj["choices"] = []
    else:
        obj["object"] = "list"
    obj["model"] = model
    prompt, completion = usage[0], usage[1]
    reported = obj.get("usage") if isinstance(obj.get("usage"), dict) else {}
    if endpoint is Endpoint.EMBEDDINGS:
        obj["usage"] = {**reported, "prompt_tokens": prompt, "total_tokens": prompt}
    else:
        obj["usage"] = {**reported, "prompt_tokens": prompt, "completion_tokens": completion,
                        "total_tokens": prompt + completion}
    return dumps(obj)


@dataclass
class StreamTally:
    """What a stream has delivered so far, for billing when the upstream does not say."""

    endpoint: Endpoint
    model: str
    request_id: str
    include_usage: bool
    created: int = field(default_factory=lambda: int(time.time()))
    texts: dict[int, list[str]] = field(default_factory=dict)
    usage: Usage | None = None
    chunks: int = 0

    def completion_tokens(self) -> int:
        return tokens.count_choices_text(("".join(parts) for parts in self.texts.values()), self.model)

    def take_all(self, obj: dict[str, Any]) -> list[bytes]:
        out = self.take(obj)
        return [out] if out is not None else []

    def closing(self, prompt_tokens: int, completion_tokens: int) -> bytes | None:
        """The last chunk: usage, for a client that asked for it."""
        return self.usage_chunk(prompt_tokens, completion_tokens) if self.include_usage else None

    def take(self, obj: dict[str, Any]) -> bytes | None:
        """Account for one upstream chunk; the bytes to send our client, or None to drop it."""
        reported = usage_of(obj)
        if reported is not None:
            self.usage = reported
        choices = obj.get("choices")
        if not isinstance(choices, list):
            choices = []
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index") if isinstance(choice.get("index"), int) else 0
            if self.endpoint is Endpoint.CHAT:
                delta = choice.get("delta")
                if not isinstance(delta, dict):
                    delta = choice.get("message") if isinstance(choice.get("message"), dict) else {}
                    choice.pop("message", None)
                    choice["delta"] = delta
                text = _message_text(delta)
            else:
                text = str(choice.get("text") or "")
            if text:
                self.texts.setdefault(index, []).append(text)
        if not choices:
            # Usage-only chunks, keep-alives, provider notes: the usage we bill is sent
            # once, last, by usage_chunk() when the client asked for it.
            return None
        obj["id"] = reply_id(self.endpoint, self.request_id)
        obj["object"] = "chat.completion.chunk" if self.endpoint is Endpoint.CHAT else "text_completion"
        obj["model"] = self.model
        obj["created"] = self.created  # one value for the whole stream, as OpenAI sends it
        obj["choices"] = choices
        if self.include_usage:
            obj["usage"] = None
        else:
            obj.pop("usage", None)
        self.chunks += 1
        return dumps(obj)

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The closing chunk for a client that asked for usage."""
        return dumps({
            "id": reply_id(self.endpoint, self.request_id),
            "object": "chat.completion.chunk" if self.endpoint is Endpoint.CHAT else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })

