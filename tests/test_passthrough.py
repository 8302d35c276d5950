"""Everything a chat client sends reaches an OpenAI-compatible upstream intact, and everything
the upstream answers reaches the client intact, streamed tool-call deltas in their order."""
from __future__ import annotations

import json
from typing import Any

import requests
from aiohttp import web

from tests import mock_upstream as up
from tests.world import World

FULL = {
    "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi", "name": "ann"}],
    "tools": [{"type": "function", "function": {
        "name": "f", "description": "d", "strict": True,
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
                       "additionalProperties": False}}}],
    "tool_choice": {"type": "function", "function": {"name": "f"}},
    "parallel_tool_calls": False,
    "n": 2, "logprobs": True, "top_logprobs": 3, "seed": 42, "stop": ["\n\n", "END"], "user": "user-123",
    "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
    "temperature": 0.2, "top_p": 0.9, "presence_penalty": 0.1, "frequency_penalty": -0.1,
    "logit_bias": {"50256": -100}, "metadata": {"trace": "abc"}, "store": False, "service_tier": "default",
    "x_vendor_extension": {"nested": [1, {"deep": None}]},
}


def _post(world: World, key: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(world.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                         json=body, timeout=30)


def sse(chunks: list[dict[str, Any]]) -> up.Behavior:
    async def behave(request: web.Request, body: dict[str, Any], path: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunk in chunks:
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    return behave


def test_every_chat_field_reaches_the_upstream_intact(world: World) -> None:
    model, tag = world.served_model()
    t = world.tenant()
    body = {"model": model, **FULL}
    # Every call gains the completion budget its hold pays for (issue 11: the budget is always
    # sent; here the model's max_output, as the client set none).
    budget = {"max_tokens": 4096}
    assert _post(world, t.key, body).status_code == 200
    assert world.mock.received(tag)[-1].body == {**body, **budget}
    streamed = {**body, "stream": True}
    assert _post(world, t.key, streamed).status_code == 200
    # Streams also gain a request for usage, which chatkore needs to bill.
    assert world.mock.received(tag)[-1].body == {**streamed, **budget, "stream_options": {"include_usage": True}}
    legacy = {"model": model, "messages": FULL["messages"], "functions": [FULL["tools"][0]["function"]],
              "function_call": {"name": "f"}}
    assert _post(world, t.key, legacy).status_code == 200
    assert world.mock.received(tag)[-1].body == {**legacy, **budget}


def test_model_map_changes_only_the_model_name(world: World) -> None:
    model = world.model()
    _, tag = world.channel([model], model_map={model: "upstream-name-v2"})
    t = world.tenant()
    reply = t.client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], seed=7)
    assert reply.model == model
    assert world.mock.received(tag)[-1].body == {"model": "upstream-name-v2", "seed": 7, "max_tokens": 4096,
                                                 "messages": [{"role": "user", "content": "x"}]}


def test_reply_fields_reach_the_client_intact(world: World) -> None:
    model, tag = world.served_model()
    t = world.tenant()
    logprobs = {"content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105],
                             "top_logprobs": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105]}]}],
                "refusal": None}
    reply = {"id": "x", "object": "chat.completion", "created": 1, "model": "up", "system_fingerprint": "fp_up",
             "service_tier": "default",
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi", "refusal": None},
                          "logprobs": logprobs, "finish_reason": "stop"},
                         {"index": 1, "message": {"role": "assistant", "content": None,
                                                  "function_call": {"name": "f", "arguments": "{\"a\":1}"}},
                          "logprobs": None, "finish_reason": "function_call"}],
             "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13,
                       "completion_tokens_details": {"reasoning_tokens": 0}}}
    world.mock.script(tag, up.raw(200, json.dumps(reply).encode()))
    got = t.client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], n=2,
                                           logprobs=True, top_logprobs=1)
    assert got.choices[0].logprobs.model_dump() == logprobs
    assert got.choices[1].message.function_call.arguments == "{\"a\":1}"
    assert got.choices[1].finish_reason == "function_call"
    assert got.system_fingerprint == "fp_up" and got.service_tier == "default"
    assert got.usage.completion_tokens_details.reasoning_tokens == 0 and got.usage.total_tokens == 13


def test_streamed_parallel_tool_calls_and_choices_keep_their_order(world: World) -> None:
    model, tag = world.served_model()
    t = world.tenant()
    base = {"id": "up", "object": "chat.completion.chunk", "created": 1, "model": "up"}

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    def call(i: int, **fields: Any) -> dict[str, Any]:
        return {"tool_calls": [{"index": i, **fields}]}

    upstream = [
        chunk(0, {"role": "assistant", "content": None}), chunk(1, {"role": "assistant", "content": "B"}),
        chunk(0, call(0, id="call_a", type="function", function={"name": "fa", "arguments": ""})),
        chunk(0, call(1, id="call_b", type="function", function={"name": "fb", "arguments": ""})),
        chunk(0, call(0, function={"arguments": "{\"a\""})), chunk(1, {"content": "-two"}),
        chunk(0, call(1, function={"arguments": "{\"b\""})), chunk(0, call(0, function={"arguments": ":1}"})),
        chunk(0, call(1, function={"arguments": ":2}"})),
        chunk(0, {}, "tool_calls"), chunk(1, {}, "stop"),
        {**base, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 20, "total_tokens": 25}},
    ]
    world.mock.script(tag, sse(upstream))
    resp = requests.post(world.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {t.key}"},
                         json={"model": model, "messages": [{"role": "user", "content": "x"}], "n": 2,
                               "stream": True, "tools": [{"type": "function", "function": {"name": "fa"}}]},
                         timeout=30)
    events = [line[6:] for line in resp.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    got = [json.loads(e) for e in events[:-1]]
    assert [(c["choices"][0]["index"], c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in got] \
        == [(c["choices"][0]["index"], c["choices"][0]["delta"], c["choices"][0]["finish_reason"])
            for c in upstream[:-1]]
    assert all(c["model"] == model and c["id"] == got[0]["id"] for c in got)
    usage = world.usage(t.user_id)[0]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["usage_source"]) == (5, 20, "upstream")
