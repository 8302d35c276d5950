"""The adapters' pure translations, table by table, and the weighted shuffle of the routing order."""
from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest

from services.common.config import Secret
from services.inference.adapters import ADAPTERS, Outgoing
from services.inference.adapters import anthropic_request as tr
from services.inference.adapters.anthropic import AnthropicExchange
from services.inference.channel import Channel
from services.inference.failures import Failure, UpstreamError
from services.inference.payloads import Endpoint
from services.inference.routing import Turns, weighted_key


def _channel(kind: str, base_url: str = "https://up.example/v1", **settings) -> Channel:
    return Channel(id=1, name="c", type=kind, base_url=base_url, api_key=Secret("sk-secret"), key_hint="",
                   models=frozenset({"m"}), model_map={}, priority=0, weight=1, enabled=True, settings=settings,
                   created=0)


@pytest.mark.parametrize("messages, system, turns", [
    ([{"role": "system", "content": "a"}, {"role": "developer", "content": [{"type": "text", "text": "b"}]},
      {"role": "user", "content": "hi"}],
     "a\n\nb", [{"role": "user", "content": "hi"}]),
    ([{"role": "user", "content": "one"}, {"role": "user", "content": "two"}, {"role": "assistant", "content": ""},
      {"role": "assistant", "content": "ok"}],
     "", [{"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
          {"role": "assistant", "content": "ok"}]),
    ([{"role": "user", "content": "q"},
      {"role": "assistant", "content": None, "tool_calls": [
          {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
          {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "not json"}}]},
      {"role": "tool", "tool_call_id": "c1", "content": "r1"}, {"role": "tool", "tool_call_id": "c2", "content": ""},
      {"role": "user", "content": "and?"}],
     "", [{"role": "user", "content": "q"},
          {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "f", "input": {"x": 1}},
                                            {"type": "tool_use", "id": "c2", "name": "g",
                                             "input": {"arguments": "not json"}}]},
          {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "r1"},
                                       {"type": "tool_result", "tool_use_id": "c2"},
                                       {"type": "text", "text": "and?"}]}]),
    ([{"role": "user", "content": "q"},
      {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}},
      {"role": "function", "name": "f", "content": "done"}],
     "", [{"role": "user", "content": "q"},
          {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_fn_1", "name": "f", "input": {}}]},
          {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_fn_1", "content": "done"}]}]),
])
def test_messages_to_anthropic(messages, system, turns) -> None:
    assert tr.convert_messages(messages) == (system, turns)


@pytest.mark.parametrize("messages, param", [
    ([{"role": "system", "content": "only"}], "messages"),
    ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}], "messages[0].content[0].type"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}],
     "messages[0].content[0].image_url"),
    ([{"role": "tool", "content": "r"}], "messages[0].tool_call_id"),
    ([{"role": "function", "name": "f", "content": "r"}], "messages[0].name"),
])
def test_untranslatable_messages(messages, param) -> None:
    with pytest.raises(tr.Untranslatable) as err:
        tr.convert_messages(messages)
    assert err.value.param == param


def test_anthropic_request_fields() -> None:
    body = {"messages": [{"role": "user", "content": "x"}], "temperature": 0.3, "top_p": 0.9, "stop": ["a", " "],
            "functions": [{"name": "f"}], "function_call": "auto", "seed": 1, "response_format": {"type": "text"}}
    out = tr.messages_request(body, "claude-x", 0, stream=True)
    assert out == {"model": "claude-x", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
                   "stream": True, "temperature": 0.3, "top_p": 0.9, "stop_sequences": ["a"],
                   "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {}}}],
                   "tool_choice": {"type": "auto", "disable_parallel_tool_use": True}}


def _exchange(legacy: bool = False) -> AnthropicExchange:
    return AnthropicExchange(_channel("anthropic"), "u", {}, b"", legacy=legacy)


@pytest.mark.parametrize("stop_reason, legacy, finish", [
    ("end_turn", False, "stop"), ("stop_sequence", False, "stop"), ("max_tokens", False, "length"),
    ("tool_use", False, "tool_calls"), ("tool_use", True, "function_call"), ("refusal", False, "content_filter"),
    ("something_new", False, "stop"),
])
def test_anthropic_reply(stop_reason, legacy, finish) -> None:
    reply = _exchange(legacy).reply({
        "id": "msg_1", "type": "message", "model": "claude-x", "stop_reason": stop_reason,
        "content": [{"type": "thinking", "thinking": "hmm"}, {"type": "text", "text": "Hi"},
                    {"type": "tool_use", "id": "tu1", "name": "f", "input": {"a": "é"}}],
        "usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 3}})
    choice = reply["choices"][0]
    assert choice["finish_reason"] == finish
    assert choice["message"]["content"] == "Hi" and choice["message"]["reasoning_content"] == "hmm"
    call = choice["message"]["function_call"] if legacy else choice["message"]["tool_calls"][0]["function"]
    assert call["name"] == "f" and json.loads(call["arguments"]) == {"a": "é"}
    # Cache reads count in prompt_tokens, as OpenAI counts them, and are named so billing prices them apart.
    assert reply["usage"] == {"prompt_tokens": 15, "completion_tokens": 3, "total_tokens": 18,
                              "prompt_tokens_details": {"cached_tokens": 5}}


def test_anthropic_stream_events_in_order() -> None:
    ex = _exchange()
    events = [
        {"type": "message_start",
         "message": {"id": "m", "model": "c", "usage": {"input_tokens": 7, "output_tokens": 1}}},
        {"type": "ping"},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hm"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "s"}},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "a", "name": "f",
                                                                      "input": {}}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": '{"x"'}},
        {"type": "content_block_start", "index": 3, "content_block": {"type": "tool_use", "id": "b", "name": "g",
                                                                      "input": {}}},
        {"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": "{}"}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ": 1}"}},
        {"type": "content_block_stop", "index": 2},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 12}},
        {"type": "message_stop"},
    ]
    deltas = [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) if c["choices"] else c["usage"]
              for e in events for c in ex.chunks(e)]
    assert deltas == [
        ({"role": "assistant", "content": ""}, None),
        ({"reasoning_content": "hm"}, None),
        ({"content": "Hi"}, None),
        ({"tool_calls": [{"index": 0, "id": "a", "type": "function", "function": {"name": "f", "arguments": ""}}]},
         None),
        ({"tool_calls": [{"index": 0, "function": {"arguments": '{"x"'}}]}, None),
        ({"tool_calls": [{"index": 1, "id": "b", "type": "function", "function": {"name": "g", "arguments": ""}}]},
         None),
        ({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}, None),
        ({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}, None),
        ({}, "tool_calls"),
        {"prompt_tokens": 7, "completion_tokens": 12, "total_tokens": 19},
    ]
    with pytest.raises(UpstreamError) as err:
        ex.chunks({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert err.value.kind is Failure.SERVER


def test_exchanges_build_each_providers_request() -> None:
    body = {"model": "gpt", "messages": [{"role": "user", "content": "x"}], "stream": True}
    out = Outgoing(Endpoint.CHAT, body, "up-model", "gpt", True, 100, False)
    openai = ADAPTERS["openai"].exchange(_channel("openai"), out)
    assert openai.url == "https://up.example/v1/chat/completions"
    assert openai.headers == {"Authorization": "Bearer sk-secret"}
    assert json.loads(openai.body)["stream_options"] == {"include_usage": True}
    azure = ADAPTERS["azure"].exchange(_channel("azure", "https://r.openai.azure.com/openai", api_version="2024-06-01",
                                                deployments={"gpt": "dep 1"}), out)
    assert azure.url == "https://r.openai.azure.com/openai/deployments/dep%201/chat/completions?api-version=2024-06-01"
    assert azure.headers == {"api-key": "sk-secret"} and "stream_options" not in json.loads(azure.body)
    assert azure.chunks({"choices": [{"index": 0, "delta": None}]})[0]["choices"][0]["delta"] == {}
    anthropic = ADAPTERS["anthropic"].exchange(_channel("anthropic", anthropic_version="2024-01-01"), out)
    assert anthropic.url == "https://up.example/v1/messages"
    assert anthropic.headers == {"x-api-key": "sk-secret", "anthropic-version": "2024-01-01"}
    assert json.loads(anthropic.body)["max_tokens"] == 100  # always sent: Anthropic requires it
    assert body == {"model": "gpt", "messages": [{"role": "user", "content": "x"}], "stream": True}  # untouched


def test_weighted_shuffle_puts_heavier_first_in_proportion() -> None:
    firsts = Counter(max((weighted_key(3), "heavy"), (weighted_key(1), "light"))[1] for _ in range(100_000))
    assert abs(firsts["heavy"] / 100_000 - 0.75) < 0.01
    assert weighted_key(0) < 0 <= weighted_key(1)  # weight 0: only when nothing else is left


def test_turns_deal_calls_out_by_weight_interleaved() -> None:
    heavy, light, idle = (dataclasses.replace(_channel("openai"), id=i, weight=w) for i, w in ((1, 3), (2, 1), (3, 0)))
    turns = Turns()
    picks = [turns.next([heavy, light, idle]).id for _ in range(400)]
    assert Counter(picks) == {1: 300, 2: 100}  # weight 0 is never a first choice
    assert picks[:4].count(2) == 1 and "1111" not in "".join(map(str, picks))  # interleaved, not in runs
    # Another set of channels (one went cooling) has its own rotation; the first resumes after.
    assert [turns.next([heavy]).id for _ in range(3)] == [1, 1, 1]
    assert Counter(turns.next([heavy, light]).id for _ in range(400)) == {1: 300, 2: 100}
    assert turns.next([idle]) is None
