"""A scripted Anthropic Messages API (POST {tag}/v1/messages) for tests, in its own wire format.

It checks requests the way Anthropic does where a translation could go wrong (headers,
unknown fields, max_tokens, roles, tool_use/tool_result pairing, temperature range) and
answers deterministically: a tool_use when tools are offered, "The tool said: ..." after
a tool_result, else "This is a test! You said: ...". Streams are Anthropic's events:
message_start, content_block_start/delta/stop (text_delta, input_json_delta), ping,
message_delta (stop_reason, usage), message_stop.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from aiohttp import web

from tests import openai_tokens

ALLOWED = {"model", "messages", "max_tokens", "system", "stop_sequences", "stream", "temperature", "top_p", "top_k",
           "tools", "tool_choice", "metadata", "thinking", "service_tier"}
BLOCKS = {"text", "image", "tool_use", "tool_result", "document", "thinking", "redacted_thinking"}


def error_response(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"type": "error", "error": {"type": kind, "message": message}}, status=status)


def _blocks(content: Any) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def problem(headers: Any, body: dict[str, Any]) -> web.Response | None:
    """Anthropic's answer to a request it would refuse, or None."""
    if not headers.get("x-api-key"):
        return error_response(401, "authentication_error", "x-api-key header is required")
    if not headers.get("anthropic-version"):
        return error_response(400, "invalid_request_error", "anthropic-version: header is required")
    for key in body:
        if key not in ALLOWED:
            return error_response(400, "invalid_request_error", f"{key}: Extra inputs are not permitted")
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        return error_response(400, "invalid_request_error", "max_tokens: Field required")
    if not isinstance(body.get("model"), str):
        return error_response(400, "invalid_request_error", "model: Field required")
    temperature = body.get("temperature")
    if temperature is not None and not 0 <= temperature <= 1:
        return error_response(400, "invalid_request_error", "temperature: Input should be less than or equal to 1")
    system = body.get("system")
    if system is not None and not isinstance(system, (str, list)):
        return error_response(400, "invalid_request_error", "system: Input should be a valid string")
    for i, tool in enumerate(body.get("tools") or ()):
        if not isinstance(tool.get("name"), str) or not isinstance(tool.get("input_schema"), dict) \
                or tool["input_schema"].get("type") != "object":
            return error_response(400, "invalid_request_error", f"tools.{i}.input_schema: Field required")
    choice = body.get("tool_choice")
    if choice is not None and (choice.get("type") not in ("auto", "any", "tool", "none")
                               or (choice["type"] == "tool" and not choice.get("name"))):
        return error_response(400, "invalid_request_error", "tool_choice: Input tag does not match")
    return _turns_problem(body.get("messages"))


def _turns_problem(messages: Any) -> web.Response | None:
    if not isinstance(messages, list) or not messages:
        return error_response(400, "invalid_request_error", "messages: at least one message is required")
    previous_uses: set[str] = set()
    for i, message in enumerate(messages):
        if message.get("role") not in ("user", "assistant"):
            return error_response(400, "invalid_request_error",
                                  f"messages.{i}.role: Input should be 'user' or 'assistant'")
        content = message.get("content")
        if content == "" or content == []:
            return error_response(400, "invalid_request_error", f"messages.{i}: content must be non-empty")
        blocks = _blocks(content)
        results_done = False
        for j, block in enumerate(blocks):
            if block.get("type") not in BLOCKS:
                return error_response(400, "invalid_request_error", f"messages.{i}.content.{j}.type: invalid")
            if block["type"] == "text" and not block.get("text"):
                return error_response(400, "invalid_request_error", "messages: text content blocks must be non-empty")
            if block["type"] == "tool_result":
                if results_done or message["role"] != "user":
                    return error_response(400, "invalid_request_error",
                                          f"messages.{i}: `tool_result` blocks must come first in a user message")
                if block.get("tool_use_id") not in previous_uses:
                    return error_response(
                        400, "invalid_request_error",
                        f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                        f"{block.get('tool_use_id')}. Each `tool_result` block must have a corresponding `tool_use`"
                        " block in the previous message.")
            else:
                results_done = True
        answered = {b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"}
        if previous_uses - answered:
            return error_response(
                400, "invalid_request_error",
                f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after:"
                f" {', '.join(sorted(previous_uses - answered))}.")
        previous_uses = {b["id"] for b in blocks if b.get("type") == "tool_use"}
    return None


def _said(message: dict[str, Any]) -> tuple[str, int]:
    blocks = _blocks(message["content"])
    text = " ".join(b["text"] for b in blocks if b.get("type") == "text")
    return text, sum(1 for b in blocks if b.get("type") == "image")


def answer(body: dict[str, Any]) -> dict[str, Any]:
    """The whole Message Anthropic would return."""
    enc = openai_tokens.named_encoding("cl100k_base")
    last = body["messages"][-1]
    results = [b for b in _blocks(last["content"]) if b.get("type") == "tool_result"]
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {"type": "auto"}
    content: list[dict[str, Any]] = []
    stop_reason, stop_sequence = "end_turn", None
    if results:
        said = "; ".join(r["content"] if isinstance(r.get("content"), str)
                         else " ".join(b.get("text", "") for b in r.get("content") or ()) for r in results)
        text = f"The tool said: {said}"
    else:
        said, images = _said(last)
        text = f"This is a test! You said: {said}" + (f" (and {images} image)" if images else "")
    if tools and not results and choice["type"] != "none":
        names = [choice["name"]] if choice["type"] == "tool" else [t["name"] for t in tools]
        names = names[:1] if choice.get("disable_parallel_tool_use") else names[:2]
        seed = json.dumps(body["messages"]).encode()
        if choice["type"] == "auto":  # a forced tool is called at once, with no words first
            content.append({"type": "text", "text": "Let me check."})
        for k, name in enumerate(names):
            content.append({"type": "tool_use", "id": "toolu_" + hashlib.sha1(seed + bytes([k])).hexdigest()[:24],
                            "name": name, "input": {"query": said, "n": k}})
        stop_reason = "tool_use"
    else:
        for stop in body.get("stop_sequences") or ():
            if stop in text:
                text, stop_reason, stop_sequence = text[:text.index(stop)], "stop_sequence", stop
                break
        ids = enc.encode(text)
        if len(ids) > body["max_tokens"]:
            text, stop_reason = enc.decode(ids[:body["max_tokens"]]), "max_tokens"
        content.append({"type": "text", "text": text})
    prompt = len(enc.encode(json.dumps([body.get("system"), body["messages"], tools])))
    output = sum(len(enc.encode(b.get("text") or json.dumps(b.get("input")))) for b in content)
    return {"id": "msg_" + hashlib.sha1(json.dumps(body).encode()).hexdigest()[:24], "type": "message",
            "role": "assistant", "model": body["model"], "content": content, "stop_reason": stop_reason,
            "stop_sequence": stop_sequence, "usage": {"input_tokens": prompt, "output_tokens": output}}


def _pieces(text: str, n: int) -> list[str]:
    size = max(1, -(-len(text) // n))
    return [text[i:i + size] for i in range(0, len(text), size)]


def events(message: dict[str, Any], pieces: int = 6) -> list[dict[str, Any]]:
    """The stream Anthropic sends for `message`."""
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {"input_tokens": message["usage"]["input_tokens"], "output_tokens": 1}}
    out: list[dict[str, Any]] = [{"type": "message_start", "message": start}, {"type": "ping"}]
    for i, block in enumerate(message["content"]):
        if block["type"] == "text":
            out.append({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}})
            out += [{"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": p}}
                    for p in _pieces(block["text"], pieces)]
        else:
            out.append({"type": "content_block_start", "index": i,
                        "content_block": {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}})
            out += [{"type": "content_block_delta", "index": i,
                     "delta": {"type": "input_json_delta", "partial_json": p}}
                    for p in ["", *_pieces(json.dumps(block["input"]), 4)]]
        out.append({"type": "content_block_stop", "index": i})
    out.append({"type": "message_delta", "delta": {"stop_reason": message["stop_reason"],
                                                    "stop_sequence": message["stop_sequence"]},
                "usage": {"output_tokens": message["usage"]["output_tokens"]}})
    out.append({"type": "message_stop"})
    return out


def frame(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def ok(*, pieces: int = 6, delay_s: float = 0.0, cut_after: int | None = None):  # noqa: ANN201 - a mock Behavior
    """Anthropic's answer; `cut_after` sends that many events then an overloaded_error event."""

    async def behave(request: web.Request, body: dict[str, Any], path: str) -> web.StreamResponse:
        refused = problem(request.headers, body)
        if refused is not None:
            return refused
        message = answer(body)
        if not body.get("stream"):
            return web.json_response(message)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for k, event in enumerate(events(message, pieces)):
            if cut_after is not None and k == cut_after:
                await response.write(frame({"type": "error", "error": {"type": "overloaded_error",
                                                                        "message": "Overloaded"}}))
                return response
            if delay_s:
                await asyncio.sleep(delay_s)
            await response.write(frame(event))
        return response

    return behave


def fail(status: int, kind: str, message: str = "scripted failure"):  # noqa: ANN201 - a mock Behavior
    async def behave(request: web.Request, body: dict[str, Any], path: str) -> web.StreamResponse:
        return error_response(status, kind, message)

    return behave
