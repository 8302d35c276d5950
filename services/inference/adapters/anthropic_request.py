"""An OpenAI chat request as an Anthropic Messages request.

    system / developer messages      -> `system`
    user content parts               -> text and image blocks (data: URLs as base64, http(s) as url)
    assistant tool_calls             -> tool_use blocks (arguments parsed back into `input`)
    tool messages                    -> tool_result blocks in the next user turn
    legacy functions / function_call -> tools / tool_choice, function messages -> tool_result
    tool_choice none|auto|required|{function}, parallel_tool_calls=false
                                     -> {"type": none|auto|any|tool}, disable_parallel_tool_use
    stop, temperature (capped at 1), top_p, top_k, user -> stop_sequences, ..., metadata.user_id
    response_format json_schema / json_object
                                     -> one tool whose input_schema is the schema, forced with
                                        tool_choice; its input comes back as the message content

Consecutive turns of one role are merged, as the Messages API wants alternating turns.
OpenAI fields with no Anthropic counterpart that change nothing a client relies on
(seed, penalties, logit_bias) are left out; the ones whose absence would silently change
the answer (n > 1, logprobs, a response_format it cannot carry) are refused before any hold.
"""
from __future__ import annotations

import json
import re
from typing import Any

RESPONSE_TOOL = "json_response"  # the forced tool that carries a response_format's JSON answer
LEGACY_ID = "toolu_fn_{}"  # ids for legacy function_call turns, which carry none of their own
_DATA_URL = re.compile(r"^data:(image/(?:jpeg|png|gif|webp));base64,(.+)$", re.DOTALL)


class Untranslatable(Exception):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def _text(content: Any, where: str) -> str:
    """The text of a system or tool message (a string, or text parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.get("type", "text") != "text":
            raise Untranslatable(f"Only text parts are supported in {where}.", f"{where}.content[{j}].type")
        texts.append(str(part.get("text") or ""))
    return "\n".join(texts)


def _image(part: dict[str, Any], param: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise Untranslatable("An image part needs image_url.url.", param)
    found = _DATA_URL.match(url)
    if found:
        return {"type": "image", "source": {"type": "base64", "media_type": found[1], "data": found[2]}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise Untranslatable("Images must be https URLs or data: URLs of JPEG, PNG, GIF or WebP.", param)


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind == "text":
            if part.get("text"):
                blocks.append({"type": "text", "text": str(part["text"])})
        elif kind == "image_url":
            blocks.append(_image(part, f"{where}.content[{j}].image_url"))
        else:
            raise Untranslatable(f"Content parts of type '{str(kind)[:40]}' are not supported by this model.",
                                 f"{where}.content[{j}].type")
    return blocks


def _arguments(raw: Any) -> dict[str, Any]:
    """A tool call's arguments as the object Anthropic wants; anything else is wrapped, not lost."""
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw) if isinstance(raw, str) and raw.strip() else {}
    except ValueError:
        return {"arguments": raw}
    return value if isinstance(value, dict) else {"value": value}


def _assistant_blocks(message: dict[str, Any], index: int, where: str) -> list[dict[str, Any]]:
    content = message.get("content")
    blocks: list[dict[str, Any]] = []
    if isinstance(content, str):
        if content:
            blocks.append({"type": "text", "text": content})
    elif isinstance(content, list):
        for part in content:
            text = part.get("text") or part.get("refusal")
            if text:
                blocks.append({"type": "text", "text": str(text)})
    calls = message.get("tool_calls")
    for k, call in enumerate(calls if isinstance(calls, list) else ()):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise Untranslatable("A tool call needs function.name.", f"{where}.tool_calls[{k}].function")
        blocks.append({"type": "tool_use", "id": str(call.get("id") or f"toolu_{index}_{k}"), "name": fn["name"],
                       "input": _arguments(fn.get("arguments"))})
    fn = message.get("function_call")
    if isinstance(fn, dict) and isinstance(fn.get("name"), str):
        blocks.append({"type": "tool_use", "id": LEGACY_ID.format(index), "name": fn["name"],
                       "input": _arguments(fn.get("arguments"))})
    return blocks


def _tool_result(tool_use_id: str, content: Any, where: str) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id}
    text = _text(content, where)
    if text:
        block["content"] = text
    return block


def convert_messages(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """(system prompt, Anthropic turns) for OpenAI's messages."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    legacy_ids: dict[str, str] = {}  # function name -> id of its latest legacy function_call

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role")
        if role in ("system", "developer"):
            text = _text(message.get("content"), where)
            if text:
                system.append(text)
        elif role == "user":
            add("user", _user_blocks(message.get("content"), where))
        elif role == "assistant":
            blocks = _assistant_blocks(message, i, where)
            fn = message.get("function_call")
            if isinstance(fn, dict) and isinstance(fn.get("name"), str):
                legacy_ids[fn["name"]] = LEGACY_ID.format(i)
            add("assistant", blocks)
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise Untranslatable("A tool message needs tool_call_id.", f"{where}.tool_call_id")
            add("user", [_tool_result(call_id, message.get("content"), where)])
        elif role == "function":
            name = str(message.get("name") or "")
            if name not in legacy_ids:
                raise Untranslatable("A function message must follow the assistant's function_call.", f"{where}.name")
            add("user", [_tool_result(legacy_ids[name], message.get("content"), where)])
    # A turn that is only text keeps the plain-string form, as most Anthropic examples show.
    for turn in turns:
        if len(turn["content"]) == 1 and turn["content"][0]["type"] == "text":
            turn["content"] = turn["content"][0]["text"]
    if not turns:
        raise Untranslatable("At least one user or assistant message with content is required.", "messages")
    return "\n\n".join(system), turns


def _tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(body.get("tools") or ()):
        if tool.get("type", "function") != "function":
            raise Untranslatable("Only function tools are supported by this model.", f"tools[{i}].type")
        out.append(_tool(tool["function"]))
    for fn in body.get("functions") or ():
        out.append(_tool(fn))
    return out


def _tool(fn: dict[str, Any]) -> dict[str, Any]:
    schema = fn.get("parameters")
    schema = dict(schema) if isinstance(schema, dict) else {}
    schema.setdefault("type", "object")
    if schema["type"] == "object":
        schema.setdefault("properties", {})
    tool: dict[str, Any] = {"name": fn["name"], "input_schema": schema}
    if fn.get("description"):
        tool["description"] = str(fn["description"])
    return tool


def _tool_choice(body: dict[str, Any]) -> dict[str, Any] | None:
    choice = body.get("tool_choice", body.get("function_call"))
    out: dict[str, Any] | None
    if choice is None:
        out = None
    elif choice == "none":
        out = {"type": "none"}
    elif choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict):
        fn = choice.get("function") if isinstance(choice.get("function"), dict) else choice
        name = fn.get("name")
        out = {"type": "tool", "name": name} if isinstance(name, str) else None
    else:
        out = None
    if body.get("parallel_tool_calls") is False or body.get("functions"):
        # Legacy functions never ran in parallel; an explicit false means the same.
        out = out or {"type": "auto"}
        if out["type"] != "none":
            out["disable_parallel_tool_use"] = True
    return out


def response_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The tool that makes the model answer in JSON, for response_format json_schema or
    json_object; None for text (or no response_format)."""
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind in (None, "text"):
        return None
    if kind not in ("json_schema", "json_object"):
        raise Untranslatable(f"This model does not support response_format type '{kind}'.", "response_format.type")
    if body.get("tools") or body.get("functions"):
        raise Untranslatable("This model cannot combine response_format with tools or functions.", "response_format")
    tool: dict[str, Any] = {"name": RESPONSE_TOOL, "description": "Give your answer as this tool's input."}
    if kind == "json_object":
        tool["input_schema"] = {"type": "object"}
        return tool
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise Untranslatable("This model needs a json_schema whose root is an object.",
                             "response_format.json_schema.schema")
    tool["input_schema"] = schema
    if isinstance(spec.get("description"), str) and spec["description"]:
        tool["description"] += " " + spec["description"]
    return tool


def check(body: dict[str, Any]) -> None:
    """Raise Untranslatable if the call cannot be carried faithfully."""
    n = body.get("n")
    if isinstance(n, int) and n > 1:
        raise Untranslatable("This model returns one choice per request; 'n' must be 1.", "n")
    if body.get("logprobs"):
        raise Untranslatable("This model does not return log probabilities.", "logprobs")
    convert_messages(body["messages"])
    _tools(body)
    response_tool(body)


def messages_request(body: dict[str, Any], model: str, max_tokens: int, *, stream: bool) -> dict[str, Any]:
    system, turns = convert_messages(body["messages"])
    out: dict[str, Any] = {"model": model, "max_tokens": max(1, max_tokens), "messages": turns}
    if system:
        out["system"] = system
    if stream:
        out["stream"] = True
    temperature = body.get("temperature")
    if isinstance(temperature, (int, float)):
        out["temperature"] = min(float(temperature), 1.0)  # Anthropic's range is 0..1
    for name in ("top_p", "top_k"):
        if isinstance(body.get(name), (int, float)):
            out[name] = body[name]
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    stops = [s for s in stops if isinstance(s, str) and s.strip()]
    if stops:
        out["stop_sequences"] = stops
    tools = _tools(body)
    answer_tool = response_tool(body)
    if answer_tool:
        out["tools"] = [answer_tool]
        out["tool_choice"] = {"type": "tool", "name": RESPONSE_TOOL}
    elif tools:
        out["tools"] = tools
        choice = _tool_choice(body)
        if choice:
            out["tool_choice"] = choice
    if isinstance(body.get("user"), str) and body["user"]:
        out["metadata"] = {"user_id": body["user"]}
    return out
