"""`anthropic` channels: the Messages API, spoken to an OpenAI client.

The request is translated by anthropic_request. Back the other way:

    content text / thinking / tool_use   -> message.content / reasoning_content / tool_calls
    stop_reason end_turn, stop_sequence  -> "stop";  max_tokens -> "length";
                tool_use -> "tool_calls" ("function_call" for legacy functions); refusal -> "content_filter"
    usage input_tokens (+ cache reads and writes), output_tokens -> prompt_tokens, completion_tokens

A stream's events become chunks as they arrive: message_start gives the role chunk,
content_block_start of a tool_use gives the call's id and name, each input_json_delta
an arguments delta for the same call index, message_delta the finish_reason and usage.
The base_url includes the version path (https://api.anthropic.com/v1); Anthropic's
max_tokens is required, and is the completion budget the hold pays for.
"""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from services.inference.adapters import anthropic_request as translate
from services.inference.adapters.base import Exchange, Outgoing
from services.inference.errors import InvalidRequest
from services.inference.failures import Failure, UpstreamError
from services.inference.payloads import Endpoint, dumps

if TYPE_CHECKING:
    from services.inference.channel import Channel

DEFAULT_VERSION = "2023-06-01"
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
          "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter"}


def _usage(usage: Any) -> tuple[int, int, int, int]:
    """(prompt, completion, cache reads, cache writes): Anthropic reports cache reads and
    writes apart from input_tokens; OpenAI's prompt_tokens counts them in."""
    if not isinstance(usage, dict):
        return 0, 0, 0, 0

    def count(name: str) -> int:
        value = usage.get(name)
        return value if isinstance(value, int) and value > 0 else 0

    read, written = count("cache_read_input_tokens"), count("cache_creation_input_tokens")
    return count("input_tokens") + read + written, count("output_tokens"), read, written


def _usage_object(prompt: int, completion: int, read: int = 0, written: int = 0) -> dict[str, Any]:
    """OpenAI's usage; cache writes, which OpenAI has no field for, as LiteLLM names them."""
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                             "total_tokens": prompt + completion}
    if read or written:
        usage["prompt_tokens_details"] = {"cached_tokens": read}
    if written:
        usage["cache_creation_input_tokens"] = written
    return usage


class AnthropicExchange(Exchange):
    def __init__(self, channel: Channel, url: str, headers: dict[str, str], body: bytes, *, legacy: bool,
                 structured: bool = False) -> None:
        super().__init__(channel, url, headers, body)
        self.legacy = legacy        # the client used `functions`, so it expects `function_call` back
        self.structured = structured  # response_format: the forced tool's input is the answer
        self._answer_blocks: set[int] = set()
        self._id = ""
        self._model = ""
        self._prompt = 0
        self._completion = 0
        self._read = 0     # cache-read prompt tokens
        self._written = 0  # cache-write prompt tokens
        self._calls: dict[int, int] = {}  # content block index -> tool call index

    def _finish(self, stop_reason: Any) -> str:
        finish = FINISH.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"
        if self.structured and finish == "tool_calls":
            return "stop"  # the forced tool was the answer, not a call for the client to make
        return "function_call" if finish == "tool_calls" and self.legacy else finish

    # --- unary ------------------------------------------------------------------------

    def reply(self, obj: dict[str, Any]) -> dict[str, Any]:
        content = obj.get("content")
        if obj.get("type") != "message" or not isinstance(content, list):
            raise UpstreamError(Failure.SERVER, "upstream sent a malformed message")
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list[dict[str, Any]] = []
        answers: list[str] = []
        for block in content:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                texts.append(str(block.get("text") or ""))
            elif kind == "thinking":
                thoughts.append(str(block.get("thinking") or ""))
            elif kind == "tool_use" and self.structured:
                if block.get("name") == translate.RESPONSE_TOOL:
                    answers.append(json.dumps(block.get("input") or {}, ensure_ascii=False))
            elif kind == "tool_use":
                calls.append({"id": str(block.get("id") or ""), "type": "function", "function": {
                    "name": str(block.get("name") or ""),
                    "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False)}})
        if answers:
            texts = answers  # asked for JSON: the JSON alone, without any words around it
        message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
        if thoughts:
            message["reasoning_content"] = "".join(thoughts)
        if calls and self.legacy:
            message["function_call"] = calls[0]["function"]
        elif calls:
            message["tool_calls"] = calls
        usage = _usage(obj.get("usage"))
        return {
            "id": str(obj.get("id") or ""), "object": "chat.completion", "created": int(time.time()),
            "model": str(obj.get("model") or ""),
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": self._finish(obj.get("stop_reason"))}],
            "usage": _usage_object(*usage),
        }

    # --- streaming ----------------------------------------------------------------------

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": self._id, "object": "chat.completion.chunk", "created": 0, "model": self._model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    def _call_delta(self, block_index: int, *, arguments: str, head: dict[str, Any] | None = None) -> dict[str, Any]:
        if self.legacy:
            fn = {"name": head["name"], "arguments": arguments} if head else {"arguments": arguments}
            return self._chunk({"function_call": fn})
        call: dict[str, Any] = {"index": self._calls[block_index]}
        if head:
            call.update(id=head["id"], type="function")
            call["function"] = {"name": head["name"], "arguments": arguments}
        else:
            call["function"] = {"arguments": arguments}
        return self._chunk({"tool_calls": [call]})

    def chunks(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") if isinstance(event.get("message"), dict) else {}
            self._id = str(message.get("id") or "")
            self._model = str(message.get("model") or "")
            self._prompt, self._completion, self._read, self._written = _usage(message.get("usage"))
            return [self._chunk({"role": "assistant", "content": ""})]
        index = event.get("index") if isinstance(event.get("index"), int) else 0
        if kind == "content_block_start":
            block = event.get("content_block") if isinstance(event.get("content_block"), dict) else {}
            if block.get("type") == "text" and block.get("text"):
                return [self._chunk({"content": str(block["text"])})]
            if block.get("type") == "tool_use" and self.structured:
                if block.get("name") != translate.RESPONSE_TOOL:
                    return []
                self._answer_blocks.add(index)
                early = block.get("input")
                return [self._chunk({"content": json.dumps(early, ensure_ascii=False)})] if early else []
            if block.get("type") == "tool_use":
                self._calls[index] = len(self._calls)
                early = block.get("input")
                head = {"id": str(block.get("id") or ""), "name": str(block.get("name") or "")}
                return [self._call_delta(index, arguments=json.dumps(early) if early else "", head=head)]
            return []
        if kind == "content_block_delta":
            delta = event.get("delta") if isinstance(event.get("delta"), dict) else {}
            dtype = delta.get("type")
            if dtype == "text_delta" and delta.get("text"):
                return [self._chunk({"content": str(delta["text"])})]
            if dtype == "input_json_delta" and delta.get("partial_json") and index in self._answer_blocks:
                return [self._chunk({"content": str(delta["partial_json"])})]
            if dtype == "input_json_delta" and delta.get("partial_json") and index in self._calls:
                return [self._call_delta(index, arguments=str(delta["partial_json"]))]
            if dtype == "thinking_delta" and delta.get("thinking"):
                return [self._chunk({"reasoning_content": str(delta["thinking"])})]
            return []
        if kind == "message_delta":
            prompt, completion, read, written = _usage(event.get("usage"))
            self._prompt = max(self._prompt, prompt)  # cumulative counts; input may be repeated or absent
            self._completion = max(self._completion, completion)
            self._read, self._written = max(self._read, read), max(self._written, written)
            delta = event.get("delta") if isinstance(event.get("delta"), dict) else {}
            return [self._chunk({}, self._finish(delta.get("stop_reason"))),
                    {"choices": [], "usage": _usage_object(self._prompt, self._completion, self._read,
                                                           self._written)}]
        if kind == "error":
            error = event.get("error") if isinstance(event.get("error"), dict) else {}
            raise UpstreamError(Failure.SERVER, f"upstream stream error: {str(error.get('type') or '')[:80]}")
        return []  # ping, content_block_stop, message_stop, and event types yet to come


def _native(channel: Channel, out: Outgoing) -> Exchange:
    """A Messages call relayed as it came: the upstream's model name, the budget the hold pays
    for, and the client's anthropic-version and anthropic-beta (the channel's when it sent none)."""
    body = dict(out.body)
    body["model"] = out.model
    body["max_tokens"] = max(1, out.budget)
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and isinstance(thinking.get("budget_tokens"), int) \
            and thinking["budget_tokens"] >= body["max_tokens"]:
        # Anthropic wants the thinking budget below max_tokens; a capped budget must not break that.
        body["thinking"] = {**thinking, "budget_tokens": max(1, body["max_tokens"] - 1)}
    if out.stream:
        body["stream"] = True
    else:
        body.pop("stream", None)
    version = out.headers.get("anthropic-version") or str(channel.settings.get("anthropic_version") or DEFAULT_VERSION)
    headers = {"x-api-key": channel.api_key.reveal(), "anthropic-version": version}
    betas = [b for b in (out.headers.get("anthropic-beta"), channel.settings.get("anthropic_beta"))
             if isinstance(b, str) and b]
    if betas:
        headers["anthropic-beta"] = ",".join(betas)
    return Exchange(channel, channel.base_url + "/messages", headers, dumps(body))


class AnthropicAdapter:
    endpoints = frozenset({Endpoint.CHAT, Endpoint.MESSAGES})

    def refusal(self, endpoint: Endpoint, body: dict[str, Any]) -> InvalidRequest | None:
        if endpoint is Endpoint.MESSAGES:
            return None
        if endpoint is not Endpoint.CHAT:
            return InvalidRequest(f"This model is only available through /v1/chat/completions, not {endpoint.value}.",
                                  param="model")
        try:
            translate.check(body)
        except translate.Untranslatable as exc:
            return InvalidRequest(exc.message, param=exc.param)
        return None

    def exchange(self, channel: Channel, out: Outgoing) -> Exchange:
        if out.endpoint is Endpoint.MESSAGES:
            return _native(channel, out)
        request = translate.messages_request(out.body, out.model, out.budget, stream=out.stream)
        headers = {"x-api-key": channel.api_key.reveal(),
                   "anthropic-version": str(channel.settings.get("anthropic_version") or DEFAULT_VERSION)}
        beta = channel.settings.get("anthropic_beta")
        if isinstance(beta, str) and beta:
            headers["anthropic-beta"] = beta
        legacy = bool(out.body.get("functions")) and not out.body.get("tools")
        structured = translate.response_tool(out.body) is not None
        return AnthropicExchange(channel, channel.base_url + "/messages", headers, dumps(request), legacy=legacy,
                                 structured=structured)

    def validate_settings(self, settings: dict[str, Any]) -> str | None:
        for name in ("anthropic_version", "anthropic_beta"):
            value = settings.get(name)
            if value is not None and not (isinstance(value, str) and value and "\n" not in value):
                return f"'settings.{name}' must be a string"
        return None
