"""Anthropic's Messages API as a dialect of the relay: its request as an OpenAI chat request,
its prompt count, its usage, and its replies and stream events rewritten for our client.

    system (string or text blocks, cache_control dropped) -> a system message
    user text / image (base64 or url) blocks              -> content parts (images as image_url)
    user tool_result blocks                                -> tool messages, before the turn's other content
    assistant text / tool_use blocks                       -> content / tool_calls
    thinking, redacted_thinking, documents of no text      -> left out (nothing an OpenAI upstream reads)
    tools {name, description, input_schema}                -> function tools; server tools are left out
    tool_choice auto|any|tool|none, disable_parallel_tool_use
                                                           -> auto|required|{function}|none, parallel_tool_calls
    max_tokens, stop_sequences, temperature, top_p, metadata.user_id
                                                           -> max_tokens, stop, temperature, top_p, user

The same translation serves the prompt count, so a Messages call is held like the chat call
it would be; the settlement uses the upstream's usage (Anthropic reports it exactly).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from services.common import jsoncodec
from services.inference import tokens

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}


def _text_of(content: Any) -> str:
    """The text in a string or a list of blocks."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = []
    for block in content:
        if isinstance(block, dict) and block.get("type", "text") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
    return "\n".join(texts)


def _image_part(block: dict[str, Any]) -> dict[str, Any] | None:
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        media = source.get("media_type") if isinstance(source.get("media_type"), str) else "image/png"
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{source['data']}"}}
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    return None


def _tool_result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    text = _text_of(content) if content is not None else ""
    if block.get("is_error") and text:
        text = "Error: " + text
    return text


def _user_messages(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "tool_result":
            out.append({"role": "tool", "tool_call_id": str(block.get("tool_use_id") or ""),
                        "content": _tool_result_text(block)})
        elif kind == "text" and isinstance(block.get("text"), str) and block["text"]:
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            image = _image_part(block)
            if image:
                parts.append(image)
        elif kind == "document":
            source = block.get("source") if isinstance(block.get("source"), dict) else {}
            if source.get("type") == "text" and isinstance(source.get("data"), str):
                parts.append({"type": "text", "text": source["data"]})
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        out.append({"role": "user", "content": "\n".join(p["text"] for p in parts) if only_text else parts})
    return out


def _assistant_message(content: Any) -> dict[str, Any] | None:
    if isinstance(content, str):
        return {"role": "assistant", "content": content} if content else None
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") in ("tool_use", "server_tool_use"):
            calls.append({"id": str(block.get("id") or ""), "type": "function", "function": {
                "name": str(block.get("name") or ""),
                "arguments": json.dumps(block.get("input") if block.get("input") is not None else {},
                                        ensure_ascii=False)}})
    if not texts and not calls:
        return None
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _tools(tools: Any) -> list[dict[str, Any]]:
    out = []
    for tool in tools if isinstance(tools, list) else ():
        # Client tools carry an input_schema; server tools (web_search_..., bash_...) have a
        # type of their own that an OpenAI upstream cannot run.
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) \
                or not isinstance(tool.get("input_schema"), dict) or tool.get("type", "custom") != "custom":
            continue
        fn: dict[str, Any] = {"name": tool["name"], "parameters": tool["input_schema"]}
        if isinstance(tool.get("description"), str) and tool["description"]:
            fn["description"] = tool["description"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any) -> tuple[Any, bool | None]:
    """(OpenAI tool_choice or None, parallel_tool_calls or None)."""
    if not isinstance(choice, dict):
        return None, None
    kind = choice.get("type")
    parallel = False if choice.get("disable_parallel_tool_use") is True else None
    if kind == "any":
        return "required", parallel
    if kind == "none":
        return "none", None
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}, parallel
    return ("auto" if kind == "auto" else None), parallel


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI chat request a Messages request stands for (without model and budget)."""
    messages: list[dict[str, Any]] = []
    system = _text_of(body.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        if message.get("role") == "assistant":
            turn = _assistant_message(message.get("content"))
            if turn:
                messages.append(turn)
        else:
            messages.extend(_user_messages(message.get("content")))
    out: dict[str, Any] = {"messages": messages}
    tools = _tools(body.get("tools"))
    if tools:
        out["tools"] = tools
        choice, parallel = _tool_choice(body.get("tool_choice"))
        if choice is not None:
            out["tool_choice"] = choice
        if parallel is not None:
            out["parallel_tool_calls"] = parallel
    stops = [s for s in body.get("stop_sequences") or () if isinstance(s, str) and s]
    if stops:
        out["stop"] = stops[:4]  # OpenAI takes at most four
    for name in ("temperature", "top_p"):
        if isinstance(body.get(name), (int, float)) and not isinstance(body.get(name), bool):
            out[name] = body[name]
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str) and metadata["user_id"]:
        out["user"] = metadata["user_id"]
    return out


def count_prompt(body: dict[str, Any], model: str) -> int:
    return tokens.count_chat_prompt(to_chat(body), model)


def usage_of(usage: Any) -> tuple[int, int] | None:
    """(prompt, completion) from an Anthropic usage object: cache reads and writes are prompt too."""
    if not isinstance(usage, dict) or not isinstance(usage.get("input_tokens"), int):
        return None

    def count(name: str) -> int:
        value = usage.get(name)
        return value if isinstance(value, int) and value > 0 else 0

    prompt = count("input_tokens") + count("cache_creation_input_tokens") + count("cache_read_input_tokens")
    return prompt, count("output_tokens")


def block_text(block: Any) -> str:
    """What a content block (or a block delta) is billed for as output."""
    if not isinstance(block, dict):
        return ""
    for key in ("text", "thinking", "partial_json"):
        if isinstance(block.get(key), str):
            return block[key]
    if block.get("type") in ("tool_use", "server_tool_use") and block.get("input"):
        return json.dumps(block["input"], ensure_ascii=False) + str(block.get("name") or "")
    return ""


def completion_text(obj: dict[str, Any]) -> str:
    content = obj.get("content")
    return "".join(block_text(b) for b in content) if isinstance(content, list) else ""


def message_id(request_id: str) -> str:
    return "msg_" + request_id.removeprefix("req_")


def rewrite_reply(obj: dict[str, Any], *, model: str, request_id: str, usage: tuple[int, int],
                  counted: bool) -> bytes:
    """A unary Message as our client sees it: our id, the model it asked for; counted usage
    where the upstream gave none (the upstream's own, with its cache counts, stays as it is)."""
    obj["id"] = message_id(request_id)
    obj["type"] = "message"
    obj["model"] = model
    if counted or not isinstance(obj.get("usage"), dict):
        obj["usage"] = {"input_tokens": usage[0], "output_tokens": usage[1]}
    return jsoncodec.dumps(obj)


@dataclass
class MessagesTally:
    """What a Messages stream has delivered, for billing; rewrites its events for our client.

    message_delta is held back, and released through closing() once the relay knows the usage
    it bills, so the client's last usage is the billed one. message_stop is the edge's to send,
    after the settlement (edge.anthropic_api), so a client that has it sees its balance settled."""

    model: str
    request_id: str
    texts: list[str] = field(default_factory=list)
    chunks: int = 0
    _prompt: int = 0
    _completion: int = 0
    _reported: bool = False
    _delta: dict[str, Any] | None = None
    cache: tuple[int, int] = (0, 0)  # (read, written) prompt tokens, priced apart by billing

    def completion_tokens(self) -> int:
        return tokens.count_choices_text(["".join(self.texts)], self.model)

    @property
    def usage(self) -> tuple[int, int] | None:
        """The upstream's counts; before its closing usage, the output delivered so far is counted."""
        if not self._reported:
            return None
        if self._delta is not None:
            return self._prompt, self._completion
        return self._prompt, max(self._completion, self.completion_tokens())

    def _note_usage(self, usage: Any) -> None:
        found = usage_of(usage) if isinstance(usage, dict) and "input_tokens" in usage else None
        if found is not None and found[0] > 0:  # a translated stream's message_start knows no count yet
            self._prompt = max(self._prompt, found[0])
            self._reported = True
        if isinstance(usage, dict) and isinstance(usage.get("output_tokens"), int):
            self._completion = max(self._completion, usage["output_tokens"])
        if isinstance(usage, dict):
            read, written = usage.get("cache_read_input_tokens"), usage.get("cache_creation_input_tokens")
            self.cache = (max(self.cache[0], read if isinstance(read, int) and read > 0 else 0),
                          max(self.cache[1], written if isinstance(written, int) and written > 0 else 0))

    def take(self, event: dict[str, Any]) -> bytes | None:
        kind = event.get("type")
        if not isinstance(kind, str):
            return None
        if kind == "message_start":
            message = event.get("message") if isinstance(event.get("message"), dict) else {}
            message["id"] = message_id(self.request_id)
            message["model"] = self.model
            event["message"] = message
            self._note_usage(message.get("usage"))
        elif kind == "content_block_start":
            text = block_text(event.get("content_block"))
            if text:
                self.texts.append(text)
        elif kind == "content_block_delta":
            text = block_text(event.get("delta"))
            if text:
                self.texts.append(text)
            self.chunks += 1
        elif kind == "message_delta":
            self._note_usage(event.get("usage"))
            self._delta = event
            return None
        elif kind == "message_stop":
            return None
        return jsoncodec.dumps(event)

    def take_all(self, event: dict[str, Any]) -> list[bytes]:
        out = self.take(event)
        return [out] if out is not None else []

    def closing(self, prompt_tokens: int, completion_tokens: int) -> bytes | None:
        """message_delta with the billed usage."""
        delta = self._delta or {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}}
        usage = delta.get("usage") if isinstance(delta.get("usage"), dict) else {}
        if not self._reported:
            usage["input_tokens"] = prompt_tokens
        usage["output_tokens"] = completion_tokens
        delta["usage"] = usage
        return jsoncodec.dumps(delta)


def new_message(model: str) -> dict[str, Any]:
    """An empty assistant Message, as message_start carries it."""
    return {"id": "", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": None,
            "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
