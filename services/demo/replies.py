"""What the demo upstream answers: deterministic OpenAI-shaped replies, streams and vectors."""
from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
import time
import uuid
from collections.abc import Iterator
from typing import Any

from services.demo import tools as demo_tools
from services.inference import tokens

EMBEDDING_DIMENSIONS = 1536


# Notes a client tucks into the user's turn for the model (Claude Code's), not what the user said.
_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.DOTALL)


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                text = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            else:
                text = str(content or "")
            return _REMINDER.sub("", text).strip()
    return ""


def _limit(text: str, max_tokens: int | None, model: str) -> tuple[str, str]:
    """Cut text to max_tokens; returns (text, finish_reason)."""
    if not max_tokens:
        return text, "stop"
    enc = tokens.encoding_for(model)
    ids = enc.encode(text, disallowed_special=())
    if len(ids) <= max_tokens:
        return text, "stop"
    return enc.decode(ids[:max_tokens]), "length"


def _max_tokens(body: dict[str, Any]) -> int | None:
    value = body.get("max_completion_tokens") or body.get("max_tokens")
    return value if isinstance(value, int) and value > 0 else None


def chat_answer(body: dict[str, Any]) -> dict[str, Any]:
    """The assistant message: a tool's result answered; a call when the prompt asks for what a
    tool offers (services/demo/tools.py); else the prompt said back."""
    messages = body.get("messages") or []
    last_role = messages[-1].get("role") if messages and isinstance(messages[-1], dict) else "user"
    if last_role == "tool":
        return {"role": "assistant", "content": f"The tool said: {messages[-1].get('content', '')}"}
    said = _last_user_text(messages)
    fn = demo_tools.choose(body.get("tools"), body.get("tool_choice"), said)
    if fn is not None:
        return {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_" + hashlib.sha1(json.dumps(messages).encode()).hexdigest()[:24],
            "type": "function",
            "function": {"name": fn["name"], "arguments": json.dumps(demo_tools.arguments(fn.get("parameters"), said))},
        }]}
    return {"role": "assistant", "content": f"This is a test! You said: {said}" if said else "This is a test!"}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _completion_tokens(message: dict[str, Any], model: str) -> int:
    enc = tokens.encoding_for(model)
    text = message.get("content") or ""
    for call in message.get("tool_calls") or ():
        text += call["function"]["name"] + call["function"]["arguments"]
    return tokens.count_text(text, enc)


def chat(body: dict[str, Any]) -> dict[str, Any]:
    model = str(body.get("model", "demo"))
    n = body.get("n") if isinstance(body.get("n"), int) else 1
    message = chat_answer(body)
    finish = "tool_calls" if message.get("tool_calls") else "stop"
    if message.get("content"):
        message["content"], finish = _limit(message["content"], _max_tokens(body), model)
    completion = _completion_tokens(message, model) * n
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": model, "system_fingerprint": "fp_demo",
        "choices": [{"index": i, "message": dict(message), "logprobs": None, "finish_reason": finish}
                    for i in range(n)],
        "usage": _usage(tokens.count_chat_prompt(body, model), completion),
    }


def _words(text: str, pieces: int) -> list[str]:
    """Split text into about `pieces` parts that join back to it exactly."""
    if not text:
        return []
    size = max(1, math.ceil(len(text) / pieces))
    return [text[i:i + size] for i in range(0, len(text), size)]


def chat_stream(body: dict[str, Any], pieces: int = 20) -> Iterator[dict[str, Any]]:
    """The chunks of a streamed chat reply (the caller frames them as SSE)."""
    reply = chat(body)
    base = {"id": reply["id"], "object": "chat.completion.chunk", "created": reply["created"],
            "model": reply["model"], "system_fingerprint": "fp_demo"}
    message = reply["choices"][0]["message"]
    for choice in reply["choices"]:
        i = choice["index"]
        yield {**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        for call_index, call in enumerate(message.get("tool_calls") or ()):
            yield {**base, "choices": [{"index": i, "delta": {"tool_calls": [{
                "index": call_index, "id": call["id"], "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""}}]}, "finish_reason": None}]}
            for part in _words(call["function"]["arguments"], 4):
                yield {**base, "choices": [{"index": i, "delta": {"tool_calls": [{
                    "index": call_index, "function": {"arguments": part}}]}, "finish_reason": None}]}
        for part in _words(message.get("content") or "", pieces):
            yield {**base, "choices": [{"index": i, "delta": {"content": part}, "finish_reason": None}]}
        yield {**base, "choices": [{"index": i, "delta": {}, "finish_reason": choice["finish_reason"]}]}
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        yield {**base, "choices": [], "usage": reply["usage"]}


def _decode(token_ids: Any, enc: Any) -> str:
    """A token list as text; ids the encoding does not have (a client's garbage) are left out."""
    pieces = []
    for t in token_ids or []:
        if isinstance(t, int) and 0 <= t <= enc.max_token_value:
            try:
                pieces.append(enc.decode_single_token_bytes(t))
            except KeyError:  # an id inside the range that names no token
                continue
    return b"".join(pieces).decode("utf-8", "replace")


def completion(body: dict[str, Any]) -> dict[str, Any]:
    model = str(body.get("model", "demo"))
    enc = tokens.encoding_for(model)
    prompt = body.get("prompt")
    prompts = prompt if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else [prompt]
    n = body.get("n") if isinstance(body.get("n"), int) else 1
    max_tokens = body.get("max_tokens") if isinstance(body.get("max_tokens"), int) else 16
    choices = []
    completion_tokens = 0
    for p_index, p in enumerate(prompts):
        said = p if isinstance(p, str) else _decode(p, enc)
        text, finish = _limit(f" This is a test! You wrote: {said}", max_tokens, model)
        for k in range(n):
            choices.append({"index": p_index * n + k, "text": text, "logprobs": None, "finish_reason": finish})
            completion_tokens += tokens.count_text(text, enc)
    return {
        "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": choices, "usage": _usage(tokens.count_input(prompt, enc), completion_tokens),
    }


def completion_stream(body: dict[str, Any], pieces: int = 20) -> Iterator[dict[str, Any]]:
    reply = completion(body)
    base = {"id": reply["id"], "object": "text_completion", "created": reply["created"], "model": reply["model"]}
    for choice in reply["choices"]:
        for part in _words(choice["text"], pieces):
            yield {**base, "choices": [{"index": choice["index"], "text": part, "logprobs": None,
                                        "finish_reason": None}]}
        yield {**base, "choices": [{"index": choice["index"], "text": "", "logprobs": None,
                                    "finish_reason": choice["finish_reason"]}]}
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        yield {**base, "choices": [], "usage": reply["usage"]}


def _vector(text: str, dimensions: int) -> list[float]:
    """A unit vector derived from the text's hash: the same input, the same embedding."""
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        values.extend((b - 127.5) / 127.5 for b in digest)
        counter += 1
    values = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def embeddings(body: dict[str, Any]) -> dict[str, Any]:
    model = str(body.get("model", "demo"))
    enc = tokens.encoding_for(model)
    value = body.get("input")
    inputs = value if isinstance(value, list) and value and not isinstance(value[0], int) else [value]
    dimensions = body.get("dimensions") if isinstance(body.get("dimensions"), int) else EMBEDDING_DIMENSIONS
    data = []
    for i, item in enumerate(inputs):
        vector = _vector(json.dumps(item), dimensions)
        if body.get("encoding_format") == "base64":
            encoded: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        else:
            encoded = vector
        data.append({"object": "embedding", "index": i, "embedding": encoded})
    prompt = tokens.count_input(value, enc)
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}


def models(names: list[str]) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": n, "object": "model", "created": 1700000000, "owned_by": "demo"}
                                       for n in names]}
