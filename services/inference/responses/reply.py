"""Response objects: the envelope our client sees, and a chat completion's message as output items.

    message.content              -> a message item with one output_text part
    message.reasoning_content    -> a reasoning item with one summary_text (first, as OpenAI orders them)
    message.tool_calls           -> function_call items (custom_tool_call for a custom tool)
    finish_reason length / content_filter -> status "incomplete" with its reason
    usage prompt/completion (+ cached, reasoning details) -> input/output tokens (+ details)
"""
from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from services.inference.responses.request import CUSTOM_INPUT

_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def response_id(request_id: str) -> str:
    return "resp_" + request_id.removeprefix("req_")


def status_of(finish: Any) -> tuple[str, dict[str, str] | None]:
    reason = _INCOMPLETE.get(finish) if isinstance(finish, str) else None
    return ("incomplete", {"reason": reason}) if reason else ("completed", None)


def usage_object(prompt: int, completion: int, cached: int = 0, reasoning: int = 0) -> dict[str, Any]:
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + completion}


def usage_details(usage: Any) -> tuple[int, int]:
    """(cached input, reasoning output) tokens from a Responses or a chat usage object."""
    if not isinstance(usage, dict):
        return 0, 0

    def detail(names: tuple[str, str], key: str) -> int:
        for name in names:
            value = usage.get(name)
            if isinstance(value, dict) and isinstance(value.get(key), int) and value[key] > 0:
                return value[key]
        return 0

    return (detail(("input_tokens_details", "prompt_tokens_details"), "cached_tokens"),
            detail(("output_tokens_details", "completion_tokens_details"), "reasoning_tokens"))


@dataclass
class Envelope:
    """What every response object of one call shares: our id, the model asked for, the request's settings."""

    id: str
    model: str
    body: dict[str, Any]
    created_at: int = field(default_factory=lambda: int(time.time()))
    background: bool = False  # run server-side, answered queued (responses/background.py)

    def response(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None = None,
                 incomplete: dict[str, str] | None = None) -> dict[str, Any]:
        body = self.body
        text = body.get("text") if isinstance(body.get("text"), dict) else {}
        reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "background": self.background, "error": None, "incomplete_details": incomplete,
            "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": body.get("max_tool_calls"), "model": self.model, "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls") is not False,  # a boolean, even if sent null
            "previous_response_id": body.get("previous_response_id"),
            "prompt_cache_key": body.get("prompt_cache_key"),
            "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
            "safety_identifier": body.get("safety_identifier"), "service_tier": "default",
            "store": body.get("store", True) is not False, "temperature": body.get("temperature", 1.0),
            "text": {"format": text.get("format") or {"type": "text"}, "verbosity": text.get("verbosity", "medium")},
            "tool_choice": body.get("tool_choice") or "auto", "tools": body.get("tools") or [],
            "top_logprobs": body.get("top_logprobs", 0), "top_p": body.get("top_p", 1.0), "truncation": "disabled",
            "usage": usage, "user": body.get("user"), "metadata": body.get("metadata") or {},
        }

    def adopt(self, obj: dict[str, Any]) -> dict[str, Any]:
        """An upstream's own response object (native relay) as ours: our id, the client's model and chain."""
        obj["id"] = self.id
        obj["model"] = self.model
        obj["previous_response_id"] = self.body.get("previous_response_id")
        obj["store"] = self.body.get("store", True) is not False
        obj["background"] = self.background
        if not isinstance(obj.get("output"), list):
            obj["output"] = []
        return obj


def message_item(text: str, status: str = "completed", id: str | None = None) -> dict[str, Any]:
    return {"id": id or item_id("msg"), "type": "message", "status": status, "role": "assistant",
            "content": [text_part(text)]}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def reasoning_item(text: str, id: str | None = None) -> dict[str, Any]:
    return {"id": id or item_id("rs"), "type": "reasoning", "summary": [{"type": "summary_text", "text": text}]}


def call_item(call_id: str, name: str, arguments: str, custom: frozenset[str], status: str = "completed",
              id: str | None = None) -> dict[str, Any]:
    if name in custom:
        try:
            parsed = json.loads(arguments)
            value = parsed.get(CUSTOM_INPUT) if isinstance(parsed, dict) else None
        except ValueError:
            value = None
        return {"id": id or item_id("ctc"), "type": "custom_tool_call", "status": status, "call_id": call_id,
                "name": name, "input": value if isinstance(value, str) else arguments}
    return {"id": id or item_id("fc"), "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": arguments}


def output_of(message: dict[str, Any], custom: frozenset[str]) -> list[dict[str, Any]]:
    output: list[dict[str, Any]] = []
    if isinstance(message.get("reasoning_content"), str) and message["reasoning_content"]:
        output.append(reasoning_item(message["reasoning_content"]))
    content = message.get("content")
    if isinstance(content, str) and content:
        output.append(message_item(content))
    elif isinstance(message.get("refusal"), str) and message["refusal"]:
        output.append({"id": item_id("msg"), "type": "message", "status": "completed", "role": "assistant",
                       "content": [{"type": "refusal", "refusal": message["refusal"]}]})
    for call in message.get("tool_calls") or ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            output.append(call_item(str(call.get("id") or item_id("call")), str(fn.get("name") or ""),
                                    str(fn.get("arguments") or ""), custom))
    return output


def from_chat(obj: dict[str, Any], envelope: Envelope, custom: frozenset[str]) -> dict[str, Any]:
    """A chat.completion (from any chat adapter) as a response object."""
    choices = obj.get("choices") if isinstance(obj.get("choices"), list) else []
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    status, incomplete = status_of(choice.get("finish_reason"))
    usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else {}
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    reported = None
    if isinstance(prompt, int) and isinstance(completion, int):
        reported = usage_object(prompt, completion, *usage_details(usage))
    return envelope.response(status, output_of(message, custom), reported, incomplete)


def output_texts(response: dict[str, Any]) -> list[str]:
    """Everything in a response's output that is billed as output tokens."""
    texts: list[str] = []
    for item in response.get("output") or ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "message":
            for part in item.get("content") or ():
                if isinstance(part, dict):
                    texts.append(str(part.get("text") or part.get("refusal") or ""))
        elif kind == "reasoning":
            texts.extend(str(p.get("text") or "") for p in item.get("summary") or () if isinstance(p, dict))
        elif kind == "function_call":
            texts.append(str(item.get("name") or "") + str(item.get("arguments") or ""))
        elif kind == "custom_tool_call":
            texts.append(str(item.get("name") or "") + str(item.get("input") or ""))
    return ["".join(texts)]
