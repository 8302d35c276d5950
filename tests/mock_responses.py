"""A scripted OpenAI Responses API (POST {tag}/v1/responses) for tests, in its own wire format.

It answers like OpenAI's: a function_call when function tools are offered and the input does
not end with a function_call_output (arguments filled to fit the tool's schema: every string
property gets the last user text), "The tool said: ..." after one, else "This is a test! You
said: ...". Streams carry OpenAI's event sequence with `event:` lines and sequence numbers;
usage counts the input and output text with tiktoken.
"""
from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests import openai_tokens


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(str(p.get("text") or "") for p in content or () if isinstance(p, dict))


def _items(body: dict[str, Any]) -> list[dict[str, Any]]:
    raw = body.get("input")
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": raw}]
    return [i for i in raw or () if isinstance(i, dict)]


def _arguments(tool: dict[str, Any], said: str) -> str:
    schema = tool.get("parameters") if isinstance(tool.get("parameters"), dict) else {}
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    args: dict[str, Any] = {}
    for name, prop in properties.items():
        kind = prop.get("type") if isinstance(prop, dict) else None
        args[name] = said if kind == "string" else 1 if kind in ("integer", "number") else None
    return json.dumps(args)


def answer(body: dict[str, Any], content: str | None = None) -> dict[str, Any]:
    """The whole response object OpenAI would return."""
    items = _items(body)
    users = [i for i in items if i.get("type", "message") == "message" and i.get("role") == "user"]
    said = _text(users[-1].get("content")) if users else ""
    last = items[-1] if items else {}
    functions = [t for t in body.get("tools") or () if isinstance(t, dict) and t.get("type") == "function"]
    output: list[dict[str, Any]]
    if last.get("type") == "function_call_output":
        text = content if content is not None else f"The tool said: {last.get('output')}"
        output = [_message(text)]
    elif functions and body.get("tool_choice") != "none" and content is None:
        tool = functions[0]
        output = [{"id": "fc_" + uuid.uuid4().hex, "type": "function_call", "status": "completed",
                   "call_id": "call_" + uuid.uuid4().hex[:24], "name": tool["name"],
                   "arguments": _arguments(tool, said)}]
    else:
        output = [_message(content if content is not None else f"This is a test! You said: {said}")]
    enc = openai_tokens.named_encoding("o200k_base")
    prompt = len(enc.encode(json.dumps([body.get("instructions"), items, body.get("tools")])))
    completion = sum(len(enc.encode(o["content"][0]["text"] if o["type"] == "message"
                                    else o["name"] + o["arguments"])) for o in output)
    return {"id": "resp_upstream_" + uuid.uuid4().hex, "object": "response", "created_at": 1700000000,
            "status": "completed", "error": None, "incomplete_details": None,
            "instructions": body.get("instructions"), "model": body.get("model"), "output": output,
            "parallel_tool_calls": True, "previous_response_id": body.get("previous_response_id"),
            "store": body.get("store", True), "text": body.get("text") or {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
            "usage": {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": prompt + completion}}


def _message(text: str) -> dict[str, Any]:
    return {"id": "msg_" + uuid.uuid4().hex, "type": "message", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def _pieces(text: str, n: int) -> list[str]:
    size = max(1, -(-len(text) // n))
    return [text[i:i + size] for i in range(0, len(text), size)]


def events(response: dict[str, Any], pieces: int = 6) -> list[dict[str, Any]]:
    """The events OpenAI streams for `response`."""
    start = {**response, "status": "in_progress", "output": [], "usage": None}
    out: list[dict[str, Any]] = [{"type": "response.created", "response": start},
                                 {"type": "response.in_progress", "response": start}]
    for i, item in enumerate(response["output"]):
        if item["type"] == "message":
            text = item["content"][0]["text"]
            out.append({"type": "response.output_item.added", "output_index": i,
                        "item": {**item, "status": "in_progress", "content": []}})
            out.append({"type": "response.content_part.added", "item_id": item["id"], "output_index": i,
                        "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}})
            out += [{"type": "response.output_text.delta", "item_id": item["id"], "output_index": i,
                     "content_index": 0, "delta": p, "logprobs": []} for p in _pieces(text, pieces)]
            out.append({"type": "response.output_text.done", "item_id": item["id"], "output_index": i,
                        "content_index": 0, "text": text, "logprobs": []})
            out.append({"type": "response.content_part.done", "item_id": item["id"], "output_index": i,
                        "content_index": 0, "part": item["content"][0]})
        else:
            out.append({"type": "response.output_item.added", "output_index": i,
                        "item": {**item, "status": "in_progress", "arguments": ""}})
            out += [{"type": "response.function_call_arguments.delta", "item_id": item["id"], "output_index": i,
                     "delta": p} for p in _pieces(item["arguments"], 3)]
            out.append({"type": "response.function_call_arguments.done", "item_id": item["id"], "output_index": i,
                        "name": item["name"], "arguments": item["arguments"]})
        out.append({"type": "response.output_item.done", "output_index": i, "item": item})
    out.append({"type": "response.completed", "response": response})
    return [{**e, "sequence_number": n} for n, e in enumerate(out)]


def ok(*, content: str | None = None, pieces: int = 6, delay_s: float = 0.0,  # noqa: ANN201 - a mock Behavior
       usage: dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]] | None = None):
    """OpenAI's answer; `content` sets the text it answers, `usage` the usage it reports
    (a dict, or a function of the request body)."""

    async def behave(request: web.Request, body: dict[str, Any], path: str) -> web.StreamResponse:
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return web.json_response({"error": {"message": "no key", "type": "invalid_request_error"}}, status=401)
        if body.get("previous_response_id"):  # chatkore keeps the chain itself
            return web.json_response({"error": {"message": "Previous response not found.",
                                                "type": "invalid_request_error", "param": "previous_response_id",
                                                "code": "previous_response_not_found"}}, status=400)
        try:
            response = answer(body, content)
        except (TypeError, AttributeError, KeyError, ValueError):  # OpenAI validates what this cannot read
            return web.json_response({"error": {"message": "Invalid input.", "type": "invalid_request_error",
                                                "param": "input", "code": "invalid_value"}}, status=400)
        if usage is not None:
            response["usage"] = usage(body) if callable(usage) else usage
        if not body.get("stream"):
            return web.json_response(response)
        stream = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await stream.prepare(request)
        for event in events(response, pieces):
            if delay_s:
                await asyncio.sleep(delay_s)
            await stream.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
        return stream

    return behave
