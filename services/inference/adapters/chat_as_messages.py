"""An Anthropic Messages call carried by an OpenAI-compatible upstream's chat completions.

The request is translated by services.inference.messages.to_chat. Back the other way:

    message.content / reasoning_content / tool_calls -> text / thinking / tool_use blocks
    finish_reason stop, length, tool_calls, content_filter -> stop_reason end_turn, max_tokens, tool_use, refusal
    usage prompt_tokens (cached_tokens apart), completion_tokens -> input_tokens (cache_read_input_tokens),
                                                                    output_tokens

A stream's chunks become Anthropic's events as they arrive: the first gives message_start,
each kind of delta opens its content block (closing the one before), each tool call's
first delta opens a tool_use block; the end of the upstream's stream closes the last
block and gives message_delta (stop_reason, usage) and message_stop.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from services.inference import messages
from services.inference.adapters.base import Exchange, Outgoing
from services.inference.failures import Failure, UpstreamError
from services.inference.payloads import Endpoint, upstream_object

if TYPE_CHECKING:
    from services.inference.channel import Channel


def chat_request(out: Outgoing) -> dict[str, Any]:
    """The OpenAI chat request for a Messages call, with the budget the hold pays for."""
    chat = messages.to_chat(out.body)
    chat["max_tokens"] = out.budget  # Messages calls always name max_tokens: the budget always goes up
    if out.stream:
        chat["stream"] = True
    return upstream_object(Endpoint.CHAT, chat, out.model, stream=out.stream, budget=out.budget)


def _arguments(raw: Any) -> Any:
    if not isinstance(raw, str) or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {"arguments": raw}
    return value if isinstance(value, dict) else {"value": value}


def _usage(usage: Any) -> dict[str, int] | None:
    if not isinstance(usage, dict) or not isinstance(usage.get("prompt_tokens"), int):
        return None
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    cached = cached if isinstance(cached, int) and 0 < cached <= usage["prompt_tokens"] else 0
    completion = usage.get("completion_tokens")
    out = {"input_tokens": usage["prompt_tokens"] - cached,
           "output_tokens": completion if isinstance(completion, int) else 0}
    if cached:
        out["cache_read_input_tokens"] = cached
    return out


def _stop_reason(finish: Any) -> str:
    return messages.STOP_REASONS.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"


class ChatAsMessagesExchange(Exchange):
    def __init__(self, channel: Channel, url: str, headers: dict[str, str], body: bytes, model: str) -> None:
        super().__init__(channel, url, headers, body)
        self._model = model
        self._started = False
        self._block = -1            # index of the open content block, -1 for none
        self._block_kind = ""       # text, thinking, or tool:<call index>
        self._finish: Any = None
        self._usage: dict[str, int] | None = None

    # --- unary ------------------------------------------------------------------------

    def reply(self, obj: dict[str, Any]) -> dict[str, Any]:
        choices = obj.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
        if choice is None:
            raise UpstreamError(Failure.SERVER, "upstream sent a reply without choices")
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        content: list[dict[str, Any]] = []
        if isinstance(message.get("reasoning_content"), str) and message["reasoning_content"]:
            content.append({"type": "thinking", "thinking": message["reasoning_content"], "signature": ""})
        if isinstance(message.get("content"), str) and message["content"]:
            content.append({"type": "text", "text": message["content"]})
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                content.append({"type": "tool_use", "id": str(call.get("id") or ""), "name": str(fn.get("name") or ""),
                                "input": _arguments(fn.get("arguments"))})
        reply = messages.new_message(self._model)
        reply.update(content=content, stop_reason=_stop_reason(choice.get("finish_reason")))
        usage = _usage(obj.get("usage"))
        if usage is not None:
            reply["usage"] = usage
        else:
            reply.pop("usage")  # counted by the relay
        return reply

    # --- streaming ----------------------------------------------------------------------

    def _open(self, kind: str, block: dict[str, Any]) -> list[dict[str, Any]]:
        events = self._close_block()
        self._block += 1
        self._block_kind = kind
        events.append({"type": "content_block_start", "index": self._block, "content_block": block})
        return events

    def _close_block(self) -> list[dict[str, Any]]:
        if not self._block_kind:
            return []
        self._block_kind = ""
        return [{"type": "content_block_stop", "index": self._block}]

    def _delta(self, delta: dict[str, Any]) -> dict[str, Any]:
        return {"type": "content_block_delta", "index": self._block, "delta": delta}

    def chunks(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not self._started:
            self._started = True
            out.append({"type": "message_start", "message": messages.new_message(self._model)})
        usage = _usage(event.get("usage"))
        if usage is not None:
            self._usage = usage
        choices = event.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # a Messages reply has one choice
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            thought = delta.get("reasoning_content")
            if isinstance(thought, str) and thought:
                if self._block_kind != "thinking":
                    out += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
                out.append(self._delta({"type": "thinking_delta", "thinking": thought}))
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self._block_kind != "text":
                    out += self._open("text", {"type": "text", "text": ""})
                out.append(self._delta({"type": "text_delta", "text": text}))
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                if not isinstance(call, dict):
                    continue
                fn = call.get("function") if isinstance(call.get("function"), dict) else {}
                kind = f"tool:{call.get('index', 0)}"
                if self._block_kind != kind:
                    out += self._open(kind, {"type": "tool_use", "id": str(call.get("id") or ""),
                                             "name": str(fn.get("name") or ""), "input": {}})
                arguments = fn.get("arguments")
                if isinstance(arguments, str) and arguments:
                    out.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return out

    def flush(self) -> list[dict[str, Any]]:
        if not self._started:
            return []
        out = self._close_block()
        delta: dict[str, Any] = {"type": "message_delta",
                                 "delta": {"stop_reason": _stop_reason(self._finish), "stop_sequence": None}}
        if self._usage is not None:
            delta["usage"] = dict(self._usage)
        out.append(delta)
        out.append({"type": "message_stop"})
        return out
