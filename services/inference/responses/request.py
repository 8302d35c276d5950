"""A Responses API request as items, and as the chat completions request that carries it.

    input "text"                          -> one user message
    message items (user/system/developer/assistant; input_text, output_text, input_image)
                                          -> chat messages (developer as system; images as image_url)
    instructions                          -> a leading system message
    function_call / custom_tool_call      -> the assistant's tool_calls (consecutive ones in one turn)
    function_call_output / custom_tool_call_output
                                          -> tool messages
    function tools, custom tools          -> function tools (a custom tool takes one string, `input`)
    tools in an `additional_tools` item   -> tools, like the request's own
    tool_choice, parallel_tool_calls, text.format, max_output_tokens, temperature, top_p, user
                                          -> tool_choice, ..., response_format, max_tokens, ...

Items and tools a chat upstream has no counterpart for (reasoning, item_reference, web_search,
hosted tools, types yet to come) are left out of the translation, never refused: clients such
as Codex send them as a matter of course.
"""
from __future__ import annotations

import json
from typing import Any

CUSTOM_INPUT = "input"  # the one string parameter a custom tool takes when carried as a function
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
_TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "refusal")


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def input_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's own input as a list of items (a string is one user message)."""
    raw = body.get("input")
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": raw}]}]
    return _dicts(raw)


def item_type(item: dict[str, Any]) -> str:
    kind = item.get("type")
    if isinstance(kind, str):
        return kind
    return "message" if "role" in item else ""


def replayable(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A stored conversation as input for the next turn: reasoning without its encrypted content
    cannot be replayed (the upstream kept no copy), and everything else can."""
    return [i for i in items if not (item_type(i) == "reasoning" and not i.get("encrypted_content"))]


def tools_of(body: dict[str, Any], items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every tool offered: the request's, and those sent as an `additional_tools` input item."""
    tools = _dicts(body.get("tools"))
    for item in items:
        if item_type(item) == "additional_tools":
            tools.extend(_dicts(item.get("tools")))
    return tools


def _flat_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tools with namespaces opened up (a namespace groups tools under one name)."""
    out: list[dict[str, Any]] = []
    for tool in tools:
        if tool.get("type") == "namespace":
            out.extend(_flat_tools(_dicts(tool.get("tools"))))
        else:
            out.append(tool)
    return out


def custom_tool_names(tools: list[dict[str, Any]]) -> frozenset[str]:
    return frozenset(str(t["name"]) for t in _flat_tools(tools) if t.get("type") == "custom" and t.get("name"))


def _chat_tool(tool: dict[str, Any]) -> dict[str, Any] | None:
    kind = tool.get("type")
    name = tool.get("name")
    if kind not in ("function", "custom") or not isinstance(name, str) or not name:
        return None
    fn: dict[str, Any] = {"name": name}
    if isinstance(tool.get("description"), str):
        fn["description"] = tool["description"]
    if kind == "custom":
        fn["parameters"] = {"type": "object", "properties": {CUSTOM_INPUT: {"type": "string"}},
                            "required": [CUSTOM_INPUT]}
    else:
        params = tool.get("parameters")
        fn["parameters"] = params if isinstance(params, dict) else {"type": "object", "properties": {}}
        if isinstance(tool.get("strict"), bool):
            fn["strict"] = tool["strict"]
    return {"type": "function", "function": fn}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(str(p.get("text") or p.get("refusal") or "") for p in _dicts(content)
                   if p.get("type", "input_text") in _TEXT_PARTS)


def _user_content(content: Any) -> Any:
    """A user message's content: a string, or parts when it carries images."""
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for part in _dicts(content):
        kind = part.get("type")
        if kind in _TEXT_PARTS:
            parts.append({"type": "text", "text": str(part.get("text") or part.get("refusal") or "")})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"],
                                                             "detail": str(part.get("detail") or "auto")}})
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def _output_text(output: Any) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return _text_of(output)
    return json.dumps(output, ensure_ascii=False)


def chat_messages(instructions: Any, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})

    def call(call_id: Any, name: Any, arguments: str) -> None:
        tool_call = {"id": str(call_id or ""), "type": "function",
                     "function": {"name": str(name or ""), "arguments": arguments}}
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(tool_call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [tool_call]})

    for item in items:
        kind = item_type(item)
        if kind == "message":
            role = _ROLES.get(str(item.get("role")))
            if role is None:
                continue
            content = item.get("content")
            if role == "user":
                messages.append({"role": "user", "content": _user_content(content)})
            else:
                messages.append({"role": role, "content": _text_of(content)})
        elif kind == "function_call":
            arguments = item.get("arguments")
            call(item.get("call_id"), item.get("name"), arguments if isinstance(arguments, str) else "{}")
        elif kind == "custom_tool_call":
            call(item.get("call_id"), item.get("name"),
                 json.dumps({CUSTOM_INPUT: str(item.get("input") or "")}, ensure_ascii=False))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            messages.append({"role": "tool", "tool_call_id": str(item.get("call_id") or ""),
                             "content": _output_text(item.get("output"))})
    return messages


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    named = isinstance(choice, dict) and isinstance(choice.get("name"), str)
    if named and choice.get("type") in ("function", "custom"):
        return {"type": "function", "function": {"name": choice["name"]}}
    return None  # hosted tools, allowed_tools, ...: the upstream's own choice


def _response_format(text: Any) -> dict[str, Any] | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "description", "schema", "strict") if fmt.get(k) is not None}
        schema.setdefault("name", "response")
        return {"type": "json_schema", "json_schema": schema}
    return None


def chat_request(body: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat completions request for a Responses request whose input (history included) is `items`."""
    out: dict[str, Any] = {"model": body.get("model"), "messages": chat_messages(body.get("instructions"), items)}
    tools = [t for t in map(_chat_tool, _flat_tools(tools_of(body, items))) if t is not None]
    if tools:
        out["tools"] = tools
        choice = _tool_choice(body.get("tool_choice"))
        if choice is not None:
            out["tool_choice"] = choice
        if isinstance(body.get("parallel_tool_calls"), bool):
            out["parallel_tool_calls"] = body["parallel_tool_calls"]
    fmt = _response_format(body.get("text"))
    if fmt is not None:
        out["response_format"] = fmt
    if isinstance(body.get("max_output_tokens"), int):
        out["max_tokens"] = body["max_output_tokens"]
    for name in ("temperature", "top_p", "user", "stream"):
        if body.get(name) is not None:
            out[name] = body[name]
    return out
