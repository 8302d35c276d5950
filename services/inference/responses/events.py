"""Responses API streams: chat chunks turned into Responses events, and every stream's events as our client gets them.

A translated stream (ChatEvents) opens with response.created and response.in_progress, then
for each output item: output_item.added, its parts and deltas (content_part.added +
output_text.delta, function_call_arguments.delta, reasoning_summary_text.delta), and once the
upstream is done, the matching *.done events and output_item.done; it closes with
response.completed (response.incomplete when the budget or a filter cut it short).

ResponsesTally sits after the adapter for native and translated streams alike: it gives
every response object our id and the client's model, numbers the events (sequence_number),
counts the output for billing when the upstream reports no usage, and holds the closing
event back until settlement, so that its usage is what was billed.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from services.inference import tokens
from services.inference.failures import Failure, UpstreamError
from services.inference.payloads import dumps
from services.inference.responses.reply import (
    Envelope,
    call_item,
    item_id,
    status_of,
    text_part,
    usage_details,
    usage_object,
)

LIFECYCLE = ("response.created", "response.in_progress", "response.queued")
TERMINAL = ("response.completed", "response.incomplete")
_BILLED_DELTAS = ("response.output_text.delta", "response.function_call_arguments.delta",
                  "response.reasoning_summary_text.delta", "response.reasoning_text.delta", "response.refusal.delta",
                  "response.custom_tool_call_input.delta")


@dataclass
class _Call:
    index: int
    item: dict[str, Any]
    arguments: list[str] = field(default_factory=list)
    custom: bool = False


class ChatEvents:
    """One translated stream: chat chunks in, Responses events out (stateful, one call)."""

    def __init__(self, envelope: Envelope, custom: frozenset[str]) -> None:
        self.envelope = envelope
        self.custom = custom
        self.output: list[dict[str, Any]] = []
        self.started = False
        self.finished = False
        self.finish: Any = None
        self.usage: dict[str, Any] | None = None
        self._reasoning: tuple[int, list[str]] | None = None
        self._message: tuple[int, list[str]] | None = None
        self._calls: dict[int, _Call] = {}

    def _added(self, item: dict[str, Any]) -> dict[str, Any]:
        self.output.append(item)
        return {"type": "response.output_item.added", "output_index": len(self.output) - 1, "item": copy.deepcopy(item)}

    def take(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if not self.started:
            self.started = True
            events += [{"type": kind, "response": self.envelope.response("in_progress", [])}
                       for kind in ("response.created", "response.in_progress")]
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        choices = chunk.get("choices") if isinstance(chunk.get("choices"), list) else []
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # the Responses API has one output; n is not a parameter of it
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            if isinstance(delta.get("reasoning_content"), str) and delta["reasoning_content"]:
                events += self._reasoning_delta(delta["reasoning_content"])
            for name in ("content", "refusal"):
                if isinstance(delta.get(name), str) and delta[name]:
                    events += self._text_delta(delta[name])
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    events += self._call_delta(call)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return events

    def _reasoning_delta(self, text: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if self._reasoning is None:
            item = {"id": item_id("rs"), "type": "reasoning", "summary": []}
            events.append(self._added(item))
            self._reasoning = (len(self.output) - 1, [])
            events.append({"type": "response.reasoning_summary_part.added", "item_id": item["id"],
                           "output_index": self._reasoning[0], "summary_index": 0,
                           "part": {"type": "summary_text", "text": ""}})
        index, texts = self._reasoning
        texts.append(text)
        events.append({"type": "response.reasoning_summary_text.delta", "item_id": self.output[index]["id"],
                       "output_index": index, "summary_index": 0, "delta": text})
        return events

    def _close_reasoning(self) -> list[dict[str, Any]]:
        if self._reasoning is None:
            return []
        index, texts = self._reasoning
        self._reasoning = None
        item = self.output[index]
        text = "".join(texts)
        part = {"type": "summary_text", "text": text}
        item["summary"] = [part]
        return [
            {"type": "response.reasoning_summary_text.done", "item_id": item["id"], "output_index": index,
             "summary_index": 0, "text": text},
            {"type": "response.reasoning_summary_part.done", "item_id": item["id"], "output_index": index,
             "summary_index": 0, "part": part},
            {"type": "response.output_item.done", "output_index": index, "item": copy.deepcopy(item)},
        ]

    def _text_delta(self, text: str) -> list[dict[str, Any]]:
        events = self._close_reasoning()
        if self._message is None:
            item = {"id": item_id("msg"), "type": "message", "status": "in_progress", "role": "assistant",
                    "content": []}
            events.append(self._added(item))
            self._message = (len(self.output) - 1, [])
            events.append({"type": "response.content_part.added", "item_id": item["id"],
                           "output_index": self._message[0], "content_index": 0, "part": text_part("")})
        index, texts = self._message
        texts.append(text)
        events.append({"type": "response.output_text.delta", "item_id": self.output[index]["id"],
                       "output_index": index, "content_index": 0, "delta": text, "logprobs": []})
        return events

    def _close_message(self) -> list[dict[str, Any]]:
        if self._message is None:
            return []
        index, texts = self._message
        self._message = None
        item = self.output[index]
        text = "".join(texts)
        part = text_part(text)
        item.update(status="completed", content=[part])
        return [
            {"type": "response.output_text.done", "item_id": item["id"], "output_index": index, "content_index": 0,
             "text": text, "logprobs": []},
            {"type": "response.content_part.done", "item_id": item["id"], "output_index": index, "content_index": 0,
             "part": copy.deepcopy(part)},
            {"type": "response.output_item.done", "output_index": index, "item": copy.deepcopy(item)},
        ]

    def _call_delta(self, delta: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        key = delta.get("index") if isinstance(delta.get("index"), int) else 0
        fn = delta.get("function") if isinstance(delta.get("function"), dict) else {}
        call = self._calls.get(key)
        if call is None:
            events += self._close_reasoning() + self._close_message()
            name = str(fn.get("name") or "")
            item = call_item(str(delta.get("id") or item_id("call")), name, "", self.custom, status="in_progress")
            call = _Call(len(self.output), item, custom=name in self.custom)
            self._calls[key] = call
            if call.custom:
                self.output.append(item)  # announced whole when done: its input is a string, not JSON
            else:
                events.append(self._added(item))
        piece = fn.get("arguments")
        if isinstance(piece, str) and piece:
            call.arguments.append(piece)
            if not call.custom:
                events.append({"type": "response.function_call_arguments.delta", "item_id": call.item["id"],
                               "output_index": call.index, "delta": piece})
        return events

    def _close_calls(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for call in self._calls.values():
            arguments = "".join(call.arguments)
            done = call_item(call.item["call_id"], call.item["name"], arguments, self.custom, id=call.item["id"])
            self.output[call.index] = done
            if call.custom:
                events.append({"type": "response.output_item.added", "output_index": call.index,
                               "item": {**copy.deepcopy(done), "status": "in_progress"}})
            else:
                events.append({"type": "response.function_call_arguments.done", "item_id": done["id"],
                               "output_index": call.index, "name": done["name"], "arguments": arguments})
            events.append({"type": "response.output_item.done", "output_index": call.index,
                           "item": copy.deepcopy(done)})
        self._calls = {}
        return events

    def held_back(self) -> str:
        """What the upstream has said that is not out yet: custom tool calls, announced whole at the end."""
        return "".join(call.item["name"] + "".join(call.arguments) for call in self._calls.values() if call.custom)

    def flush(self) -> list[dict[str, Any]]:
        """The upstream is done: close every open item, then the closing event."""
        if self.finished or not self.started:
            return []
        self.finished = True
        events = self._close_reasoning() + self._close_message() + self._close_calls()
        status, incomplete = status_of(self.finish)
        usage = None
        if self.usage is not None and isinstance(self.usage.get("prompt_tokens"), int):
            usage = usage_object(self.usage["prompt_tokens"], int(self.usage.get("completion_tokens") or 0),
                                 *usage_details(self.usage))
        kind = "response.completed" if status == "completed" else "response.incomplete"
        events.append({"type": kind, "response": self.envelope.response(status, copy.deepcopy(self.output), usage,
                                                                        incomplete)})
        return events


class ResponsesTally:
    """A Responses stream as our client gets it, and what it delivered (for billing and storage)."""

    def __init__(self, envelope: Envelope, model: str) -> None:
        self.envelope = envelope
        self.model = model
        self.chunks = 0
        self.usage: tuple[int, int] | None = None
        self.details = (0, 0)
        self.final: dict[str, Any] | None = None
        self._seq = 0
        self._started = False
        self._texts: list[str] = []
        self._items: dict[int, dict[str, Any]] = {}
        self._closing: dict[str, Any] | None = None

    def completion_tokens(self) -> int:
        return tokens.count_choices_text(["".join(self._texts)], self.model)

    def _emit(self, event: dict[str, Any]) -> bytes:
        event["sequence_number"] = self._seq
        self._seq += 1
        self.chunks += 1
        return dumps(event)

    def take_all(self, event: dict[str, Any]) -> list[bytes]:
        kind = event.get("type")
        if not isinstance(kind, str):
            return []
        if kind in ("error", "response.failed"):
            raise UpstreamError(Failure.SERVER, "upstream reported an error")
        out: list[bytes] = []
        if kind in LIFECYCLE or kind in TERMINAL:
            response = event.get("response")
            if not isinstance(response, dict) or (kind == "response.created" and self._started):
                return []
            self.envelope.adopt(response)
            if kind in TERMINAL:
                self._closing = event  # sent by closing(), with the usage billed
                usage = response.get("usage")
                if isinstance(usage, dict) and isinstance(usage.get("input_tokens"), int) \
                        and isinstance(usage.get("output_tokens"), int):
                    self.usage = (usage["input_tokens"], usage["output_tokens"])
                    self.details = usage_details(usage)
                return []
        elif not self._started:
            out.append(self._emit({"type": "response.created",
                                   "response": self.envelope.response("in_progress", [])}))
        self._started = True
        if kind in _BILLED_DELTAS and isinstance(event.get("delta"), str):
            self._texts.append(event["delta"])
        if kind == "response.output_item.done" and isinstance(event.get("item"), dict) \
                and isinstance(event.get("output_index"), int):
            self._items[event["output_index"]] = event["item"]
        out.append(self._emit(event))
        return out

    def closing(self, prompt: int, completion: int) -> bytes:
        """The closing event, carrying the usage billed; the response it carries is kept in `final`."""
        if self._closing is not None:
            kind, response = self._closing["type"], self._closing["response"]
        else:
            kind, response = "response.completed", self.envelope.response("completed", [])
        if not response.get("output") and self._items:
            response["output"] = [self._items[i] for i in sorted(self._items)]
        response["usage"] = usage_object(prompt, completion, *self.details)
        self.final = response
        return self._emit({"type": kind, "response": response})
