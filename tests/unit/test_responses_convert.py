"""The Responses API's translation to chat completions and back, table by table."""
from __future__ import annotations

import json
from typing import Any

import pytest

from services.inference.responses.events import ChatEvents, ResponsesTally
from services.inference.responses.reply import Envelope, from_chat, output_texts
from services.inference.responses.request import chat_request, input_items, replayable

CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("text input and instructions", {"model": "m", "input": "hi", "instructions": "Be brief."},
     {"model": "m", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]}),
    ("developer and parts", {"model": "m", "input": [
        {"role": "developer", "content": "rules"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "look"},
                                                        {"type": "input_image", "image_url": "https://x/y.png"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "seen"}]}]},
     {"model": "m", "messages": [
         {"role": "system", "content": "rules"},
         {"role": "user", "content": [
             {"type": "text", "text": "look"},
             {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "auto"}}]},
         {"role": "assistant", "content": "seen"}]}),
    ("calls join the assistant turn; outputs become tool messages", {"model": "m", "input": [
        {"role": "user", "content": "go"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"a\":1}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]}]},
     {"model": "m", "messages": [
         {"role": "user", "content": "go"},
         {"role": "assistant", "content": "Checking.", "tool_calls": [
             {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
             {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
         {"role": "tool", "tool_call_id": "c1", "content": "one"},
         {"role": "tool", "tool_call_id": "c2", "content": "two"}]}),
    ("unknown items and hosted tools are left out; the rest of the tools map", {
        "model": "m", "input": [{"type": "reasoning", "id": "rs", "summary": []}, {"type": "item_reference", "id": "x"},
                                {"role": "user", "content": "q"}, {"type": "new_kind"}],
        "tools": [{"type": "web_search"}, {"type": "function", "name": "f", "parameters": {"type": "object"},
                                           "strict": True},
                  {"type": "custom", "name": "patch"}],
        "tool_choice": {"type": "function", "name": "f"}, "parallel_tool_calls": False,
        "text": {"format": {"type": "json_schema", "name": "S", "schema": {"type": "object"}, "strict": True}},
        "max_output_tokens": 99, "temperature": 0.5, "store": False, "include": ["x"], "prompt_cache_key": "k"},
     {"model": "m", "messages": [{"role": "user", "content": "q"}],
      "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": True}},
                {"type": "function", "function": {"name": "patch", "parameters": {
                    "type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]}}}],
      "tool_choice": {"type": "function", "function": {"name": "f"}}, "parallel_tool_calls": False,
      "response_format": {"type": "json_schema", "json_schema": {"name": "S", "schema": {"type": "object"},
                                                                 "strict": True}},
      "max_tokens": 99, "temperature": 0.5}),
    ("garbage inside items never raises", {"model": "m", "input": [
        {"role": "user", "content": 5}, {"type": "function_call", "arguments": 7}, {"role": "wizard", "content": "x"},
        {"type": "function_call_output", "output": {"k": "v"}}], "tools": "nope", "text": 3},
     {"model": "m", "messages": [
         {"role": "user", "content": ""},
         {"role": "assistant", "content": None, "tool_calls": [
             {"id": "", "type": "function", "function": {"name": "", "arguments": "{}"}}]},
         {"role": "tool", "tool_call_id": "", "content": "{\"k\": \"v\"}"}]}),
]


@pytest.mark.parametrize("body,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_chat_request(body: dict[str, Any], expected: dict[str, Any]) -> None:
    assert chat_request(body, input_items(body)) == expected


def test_replay_drops_reasoning_the_upstream_cannot_find() -> None:
    items = [{"type": "reasoning", "id": "rs_1", "summary": []},
             {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "opaque"},
             {"type": "message", "role": "assistant", "content": []}]
    assert replayable(items) == items[1:]


def _envelope(**body: Any) -> Envelope:
    return Envelope("resp_1", "public-model", {"model": "public-model", **body}, created_at=5)


def test_a_chat_reply_as_a_response() -> None:
    reply = from_chat({"choices": [{"index": 0, "finish_reason": "length", "message": {
        "role": "assistant", "content": "Hello", "reasoning_content": "thinking",
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "patch",
                                                                      "arguments": "{\"input\": \"diff\"}"}}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 3},
                  "completion_tokens_details": {"reasoning_tokens": 2}}},
        _envelope(store=False), frozenset({"patch"}))
    assert reply["id"] == "resp_1" and reply["model"] == "public-model" and reply["store"] is False
    assert reply["status"] == "incomplete" and reply["incomplete_details"] == {"reason": "max_output_tokens"}
    assert [o["type"] for o in reply["output"]] == ["reasoning", "message", "custom_tool_call"]
    assert reply["output"][2]["input"] == "diff" and reply["output"][2]["call_id"] == "c1"
    assert reply["usage"] == {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 3}, "output_tokens": 4,
                              "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 14}
    assert output_texts(reply) == ["thinkingHellopatchdiff"]


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_a_chat_stream_as_response_events() -> None:
    events = ChatEvents(_envelope(), frozenset())
    tally = ResponsesTally(events.envelope, "gpt-4o")
    out: list[bytes] = []
    for chunk in [_chunk({"role": "assistant", "content": ""}), _chunk({"reasoning_content": "hmm"}),
                  _chunk({"content": "Hel"}), _chunk({"content": "lo"}),
                  _chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                                          "function": {"name": "f", "arguments": ""}}]}),
                  _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
                  _chunk({}, "tool_calls"), {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}]:
        for event in events.take(chunk):
            out += tally.take_all(event)
    for event in events.flush():
        out += tally.take_all(event)
    out.append(tally.closing(7, 3))
    seen = [json.loads(b) for b in out]
    assert [e["sequence_number"] for e in seen] == list(range(len(seen)))
    assert [e["type"] for e in seen] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    final = seen[-1]["response"]
    assert final["id"] == "resp_1" and final["status"] == "completed"
    assert [o["type"] for o in final["output"]] == ["reasoning", "message", "function_call"]
    assert final["output"][1]["content"][0]["text"] == "Hello" and final["output"][2]["arguments"] == "{}"
    assert final["usage"]["input_tokens"] == 7 and final["usage"]["output_tokens"] == 3
    assert tally.usage == (7, 3) and tally.final == final


def test_native_events_get_our_id_and_the_billed_usage() -> None:
    tally = ResponsesTally(_envelope(previous_response_id="resp_0"), "gpt-4o")
    upstream = {"id": "resp_theirs", "model": "gpt-4o-2024", "output": [], "status": "in_progress"}
    out = tally.take_all({"type": "response.created", "response": dict(upstream), "sequence_number": 40})
    out += tally.take_all({"type": "response.output_text.delta", "delta": "Hi", "sequence_number": 41})
    assert tally.take_all({"type": "response.completed", "sequence_number": 42, "response": {
        **upstream, "status": "completed", "output": [{"type": "message"}],
        "usage": {"input_tokens": 9, "output_tokens": 1}}}) == []  # held back until settled
    out.append(tally.closing(9, 1))
    seen = [json.loads(b) for b in out]
    assert [e["sequence_number"] for e in seen] == [0, 1, 2]
    assert {e["response"]["id"] for e in seen if "response" in e} == {"resp_1"}
    assert seen[-1]["response"]["model"] == "public-model"
    assert seen[-1]["response"]["previous_response_id"] == "resp_0"
    assert seen[-1]["response"]["usage"]["total_tokens"] == 10
    assert tally.completion_tokens() == 1


@pytest.mark.parametrize("sent, parallel, choice", [
    ({}, True, "auto"),
    ({"parallel_tool_calls": None, "tool_choice": None}, True, "auto"),  # null echoes as OpenAI's defaults
    ({"parallel_tool_calls": False, "tool_choice": "required"}, False, "required"),
])
def test_a_response_names_its_tool_settings_as_openai_types_them(sent: dict[str, Any], parallel: bool,
                                                                 choice: str) -> None:
    response = _envelope(**sent).response("completed", [])
    assert response["parallel_tool_calls"] is parallel and response["tool_choice"] == choice
