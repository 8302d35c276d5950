"""Azure and Anthropic channels answer the official openai SDK as OpenAI would: streamed and
not, tools round trips included; each mock speaks its provider's own wire format."""
from __future__ import annotations

import json
from typing import Any

import openai
import pydantic
import pytest
import requests

from tests import mock_anthropic, mock_azure, openai_tokens
from tests.world import Tenant, World

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
]
PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAAB"
       "JRU5ErkJggg==")


@pytest.fixture
def tenant(world: World) -> Tenant:
    return world.tenant(credits=100)


def _served(world: World, kind: str, **settings: Any) -> tuple[str, str, int]:
    model = world.model(prefix=kind)
    channel_id, tag = world.channel([model], type=kind, **settings)
    return model, tag, channel_id


def _streamed(chunks: list) -> tuple[str, dict[int, dict[str, str]], str | None]:
    """(text, tool calls by index, finish_reason) put back together from stream chunks, in order."""
    text, calls, finish = "", {}, None
    for c in chunks:
        for choice in c.choices:
            text += choice.delta.content or ""
            for d in choice.delta.tool_calls or ():
                call = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += d.id or ""
                call["name"] += (d.function.name or "") if d.function else ""
                call["arguments"] += (d.function.arguments or "") if d.function else ""
            finish = choice.finish_reason or finish
    return text, calls, finish


# --- Anthropic ---------------------------------------------------------------------------


def test_anthropic_unary_translates_both_ways(world: World, tenant: Tenant) -> None:
    model, tag, channel_id = _served(world, "anthropic", model_map={})
    reply = tenant.client.chat.completions.create(
        model=model, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}],
        temperature=1.6, stop="zzz", user="end-user-7", max_tokens=50, seed=4, presence_penalty=0.5)
    assert reply.object == "chat.completion" and reply.model == model and reply.id.startswith("chatcmpl-")
    assert reply.choices[0].message.content == "This is a test! You said: hello"
    assert reply.choices[0].finish_reason == "stop"
    sent = world.mock.received(tag)[-1]
    assert sent.path == "messages"
    assert sent.headers["x-api-key"] == f"sk-upstream-{tag}-secret" and "Authorization" not in sent.headers
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.body == {"model": model, "max_tokens": 50, "system": "Be brief.",
                         "messages": [{"role": "user", "content": "hello"}], "temperature": 1.0,
                         "stop_sequences": ["zzz"], "metadata": {"user_id": "end-user-7"}}
    # Billed on Anthropic's own counts.
    expected = mock_anthropic.answer(sent.body)["usage"]
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (expected["input_tokens"],
                                                                           expected["output_tokens"])
    row = world.usage(tenant.user_id)[0]
    assert row["usage_source"] == "upstream" and row["prompt_tokens"] == expected["input_tokens"]
    assert row["channel_id"] == channel_id


def test_anthropic_stream_with_usage(world: World, tenant: Tenant) -> None:
    model, tag, _ = _served(world, "anthropic")
    chunks = list(tenant.client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "stream me please"}], stream=True,
        stream_options={"include_usage": True}))
    text, calls, finish = _streamed(chunks)
    assert text == "This is a test! You said: stream me please" and not calls and finish == "stop"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.id for c in chunks} == {chunks[0].id} and all(c.model == model for c in chunks)
    usage = mock_anthropic.answer(world.mock.received(tag)[-1].body)["usage"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == usage["output_tokens"]
    assert chunks[-1].usage.prompt_tokens == usage["input_tokens"]
    assert world.mock.received(tag)[-1].body["stream"] is True


def test_anthropic_limits_and_stops(world: World, tenant: Tenant) -> None:
    model, _, _ = _served(world, "anthropic")
    cut = tenant.client.chat.completions.create(model=model, messages=[{"role": "user", "content": "a long one"}],
                                                max_tokens=3)
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 3
    stopped = tenant.client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}],
                                                    stop=["test"])
    assert stopped.choices[0].message.content == "This is a " and stopped.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_parallel_tool_calls_round_trip(world: World, tenant: Tenant, stream: bool) -> None:
    model, tag, _ = _served(world, "anthropic")
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather and time in Paris?"}]
    first = tenant.client.chat.completions.create(model=model, messages=messages, tools=TOOLS, tool_choice="auto",
                                                  stream=stream)
    if stream:
        text, by_index, finish = _streamed(list(first))
        calls = [by_index[i] for i in sorted(by_index)]
        assert sorted(by_index) == [0, 1]
    else:
        message = first.choices[0].message
        text, finish = message.content, first.choices[0].finish_reason
        calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments} for c in message.tool_calls]
    assert text == "Let me check." and finish == "tool_calls"
    assert [c["name"] for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c["arguments"]) for c in calls] == [{"query": "Weather and time in Paris?", "n": 0},
                                                           {"query": "Weather and time in Paris?", "n": 1}]
    sent = world.mock.received(tag)[-1].body
    assert sent["tools"][0] == {"name": "get_weather", "description": "Weather in a city.",
                                "input_schema": TOOLS[0]["function"]["parameters"]}
    assert sent["tools"][1]["input_schema"] == {"type": "object", "properties": {}}
    assert sent["tool_choice"] == {"type": "auto"}
    # The round trip: the assistant turn and both results go back; the mock refuses any
    # tool_result that does not answer a tool_use of the turn before, as Anthropic does.
    messages += [{"role": "assistant", "content": text, "tool_calls": [
                     {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                     for c in calls]},
                 {"role": "tool", "tool_call_id": calls[0]["id"], "content": "sunny"},
                 {"role": "tool", "tool_call_id": calls[1]["id"], "content": [{"type": "text", "text": "noon"}]}]
    second = tenant.client.chat.completions.create(model=model, messages=messages, tools=TOOLS, stream=stream)
    answer = _streamed(list(second))[0] if stream else second.choices[0].message.content
    assert answer == "The tool said: sunny; noon"
    sent = world.mock.received(tag)[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"][0] == {"type": "text", "text": "Let me check."}
    assert [b["type"] for b in sent[1]["content"]] == ["text", "tool_use", "tool_use"]
    assert sent[1]["content"][1]["input"] == {"query": "Weather and time in Paris?", "n": 0}
    assert sent[2]["content"] == [{"type": "tool_result", "tool_use_id": calls[0]["id"], "content": "sunny"},
                                  {"type": "tool_result", "tool_use_id": calls[1]["id"], "content": "noon"}]


@pytest.mark.parametrize("choice, parallel, expected", [
    ("required", None, {"type": "any"}),
    ("none", None, {"type": "none"}),
    ({"type": "function", "function": {"name": "get_time"}}, None, {"type": "tool", "name": "get_time"}),
    ("auto", False, {"type": "auto", "disable_parallel_tool_use": True}),
])
def test_anthropic_tool_choice(world: World, tenant: Tenant, choice, parallel, expected) -> None:
    model, tag, _ = _served(world, "anthropic")
    extra = {} if parallel is None else {"parallel_tool_calls": parallel}
    reply = tenant.client.chat.completions.create(model=model, messages=[{"role": "user", "content": "go"}],
                                                  tools=TOOLS, tool_choice=choice, **extra)
    assert world.mock.received(tag)[-1].body["tool_choice"] == expected
    names = [c.function.name for c in reply.choices[0].message.tool_calls or ()]
    assert names == {"any": ["get_weather", "get_time"], "none": [], "tool": ["get_time"],
                     "auto": ["get_weather"]}[expected["type"]]


class Lookup(pydantic.BaseModel):
    query: str
    n: int


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_structured_output(world: World, tenant: Tenant, stream: bool) -> None:
    """response_format json_schema: the schema becomes a forced tool, and its input comes
    back as the message's JSON content — what the SDK's parse() reads."""
    model, tag, _ = _served(world, "anthropic")
    schema = {"type": "object", "properties": {"query": {"type": "string"}, "n": {"type": "integer"}},
              "required": ["query", "n"], "additionalProperties": False}
    messages = [{"role": "user", "content": "Look it up"}]
    fmt = {"type": "json_schema", "json_schema": {"name": "lookup", "schema": schema, "strict": True}}
    if stream:
        text, calls, finish = _streamed(list(tenant.client.chat.completions.create(
            model=model, messages=messages, response_format=fmt, stream=True)))
    else:
        reply = tenant.client.chat.completions.create(model=model, messages=messages, response_format=fmt)
        text, finish = reply.choices[0].message.content, reply.choices[0].finish_reason
        calls = reply.choices[0].message.tool_calls or {}
    assert json.loads(text) == {"query": "Look it up", "n": 0}
    assert finish == "stop" and not calls
    sent = world.mock.received(tag)[-1].body
    assert sent["tools"] == [{"name": "json_response", "description": "Give your answer as this tool's input.",
                              "input_schema": schema}]
    assert sent["tool_choice"] == {"type": "tool", "name": "json_response"}
    assert "response_format" not in sent

    parsed = tenant.client.chat.completions.parse(model=model, messages=messages, response_format=Lookup)
    assert parsed.choices[0].message.parsed == Lookup(query="Look it up", n=0)
    json_object = tenant.client.chat.completions.create(model=model, messages=messages,
                                                        response_format={"type": "json_object"})
    assert json.loads(json_object.choices[0].message.content) == {"query": "Look it up", "n": 0}
    assert world.mock.received(tag)[-1].body["tools"][0]["input_schema"] == {"type": "object"}


def test_anthropic_legacy_functions_round_trip(world: World, tenant: Tenant) -> None:
    model, tag, _ = _served(world, "anthropic")
    functions = [TOOLS[0]["function"]]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather?"}]
    first = tenant.client.chat.completions.create(model=model, messages=messages, functions=functions,
                                                  function_call={"name": "get_weather"})
    call = first.choices[0].message.function_call
    assert call.name == "get_weather" and first.choices[0].finish_reason == "function_call"
    assert first.choices[0].message.tool_calls is None
    assert world.mock.received(tag)[-1].body["tool_choice"] == {"type": "tool", "name": "get_weather",
                                                                "disable_parallel_tool_use": True}
    messages += [{"role": "assistant", "content": None, "function_call": {"name": call.name,
                                                                          "arguments": call.arguments}},
                 {"role": "function", "name": "get_weather", "content": "cloudy"}]
    second = tenant.client.chat.completions.create(model=model, messages=messages, functions=functions)
    assert second.choices[0].message.content == "The tool said: cloudy"


def test_anthropic_image_part(world: World, tenant: Tenant) -> None:
    model, tag, _ = _served(world, "anthropic")
    reply = tenant.client.chat.completions.create(model=model, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": PNG}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}])
    assert reply.choices[0].message.content == "This is a test! You said: What is this? (and 2 image)"
    blocks = world.mock.received(tag)[-1].body["messages"][0]["content"]
    assert blocks[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                     "data": PNG.split(",", 1)[1]}}
    assert blocks[2] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}


@pytest.mark.parametrize("path, extra, param", [
    ("/v1/chat/completions", {"n": 2}, "n"),
    ("/v1/chat/completions", {"logprobs": True}, "logprobs"),
    ("/v1/chat/completions", {"response_format": {"type": "json_object"}, "tools": TOOLS}, "response_format"),
    ("/v1/chat/completions", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "list", "schema": {"type": "array"}}}}, "response_format.json_schema.schema"),
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": "only this"}]}, "messages"),
    ("/v1/completions", {"prompt": "hi"}, "model"),
])
def test_anthropic_cannot_carry_is_400_before_any_hold(world: World, tenant: Tenant, path, extra, param) -> None:
    model, tag, _ = _served(world, "anthropic")
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    if path == "/v1/completions":
        body.pop("messages")
    resp = requests.post(world.url + path, json=body, headers={"Authorization": f"Bearer {tenant.key}"}, timeout=30)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == param, resp.text
    assert world.mock.received(tag) == [] and world.usage(tenant.user_id) == []
    assert world.balance(tenant.user_id) == 100


def test_anthropic_errors(world: World, tenant: Tenant) -> None:
    model = world.model(prefix="claude")
    _, first = world.channel([model], type="anthropic", priority=5)
    _, second = world.channel([model], type="anthropic", priority=1)
    # Overloaded (529) moves on to the next channel.
    world.mock.script(first, mock_anthropic.fail(529, "overloaded_error", "Overloaded"))
    assert tenant.client.chat.completions.create(model=model, messages=[{"role": "user", "content": "a"}])
    assert len(world.mock.received(first)) == 1 and len(world.mock.received(second)) == 1
    # Anthropic's own validation passes through, in OpenAI's shape.
    world.mock.script(first, mock_anthropic.fail(400, "invalid_request_error", "prompt is too long"))
    with pytest.raises(openai.BadRequestError) as err:
        tenant.client.chat.completions.create(model=model, messages=[{"role": "user", "content": "b"}])
    assert err.value.body["message"] == "prompt is too long" and err.value.body["type"] == "invalid_request_error"
    assert len(world.mock.received(second)) == 1
    # An error event after the stream began arrives in-band, and the stream still ends.
    world.mock.script(first, mock_anthropic.ok(cut_after=5))
    with pytest.raises(openai.APIError):
        list(tenant.client.chat.completions.create(model=model, messages=[{"role": "user", "content": "c"}],
                                                   stream=True))


# --- Azure ---------------------------------------------------------------------------------


def test_azure_unary_uses_deployment_url_and_api_key(world: World, tenant: Tenant) -> None:
    model, tag, _ = _served(world, "azure", model_map={})
    reply = tenant.client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi azure"}])
    assert reply.choices[0].message.content == "This is a test! You said: hi azure" and reply.model == model
    sent = world.mock.received(tag)[-1]
    assert sent.path == f"deployments/{model}/chat/completions" and sent.query == {"api-version": "2024-10-21"}
    assert sent.headers["api-key"] == f"sk-upstream-{tag}-secret" and "Authorization" not in sent.headers


def test_azure_stream_quirks_become_proper_chunks(world: World, tenant: Tenant) -> None:
    model, _, _ = _served(world, "azure")
    resp = requests.post(world.url + "/v1/chat/completions", stream=True, timeout=30,
                         headers={"Authorization": f"Bearer {tenant.key}"},
                         json={"model": model, "messages": [{"role": "user", "content": "raw"}], "stream": True,
                               "stream_options": {"include_usage": True}})
    events = [line[6:] for line in resp.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["id"] == chunks[0]["id"] and c["object"] == "chat.completion.chunk" and c["model"] == model
               and c["created"] > 0 for c in chunks)
    assert all("delta" in choice for c in chunks for choice in c["choices"])
    assert [c for c in chunks if not c["choices"]] == [chunks[-1]]
    prompt = openai_tokens.chat_prompt_tokens([{"role": "user", "content": "raw"}], model)
    completion = openai_tokens.text_tokens("This is a test! You said: raw", model)
    assert chunks[-1]["usage"] == {"prompt_tokens": prompt, "completion_tokens": completion,
                                   "total_tokens": prompt + completion}
    # The content filter's own chunk (no delta upstream) still reaches the client, with one.
    assert any("content_filter_offsets" in c["choices"][0] and c["choices"][0]["delta"] == {} for c in chunks[:-1])
    sdk_chunks = list(tenant.client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "via sdk"}], stream=True))
    assert _streamed(sdk_chunks)[0] == "This is a test! You said: via sdk"


@pytest.mark.parametrize("stream", [False, True])
def test_azure_tool_round_trip(world: World, tenant: Tenant, stream: bool) -> None:
    model, _, _ = _served(world, "azure")
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Oslo?"}]
    first = tenant.client.chat.completions.create(model=model, messages=messages, tools=TOOLS[:1], stream=stream)
    if stream:
        _, calls, finish = _streamed(list(first))
        call = calls[0]
    else:
        tc = first.choices[0].message.tool_calls[0]
        call, finish = {"id": tc.id, "name": tc.function.name, "arguments": tc.function.arguments}, \
            first.choices[0].finish_reason
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Oslo"}
    assert finish == "tool_calls"
    messages += [{"role": "assistant", "content": None, "tool_calls": [
                     {"id": call["id"], "type": "function", "function": {"name": call["name"],
                                                                         "arguments": call["arguments"]}}]},
                 {"role": "tool", "tool_call_id": call["id"], "content": "snow"}]
    second = tenant.client.chat.completions.create(model=model, messages=messages, tools=TOOLS[:1], stream=stream)
    answer = _streamed(list(second))[0] if stream else second.choices[0].message.content
    assert answer == "The tool said: snow"


def test_azure_settings_deployment_and_old_api_version(world: World, tenant: Tenant) -> None:
    model = world.model()
    channel_id, tag = world.channel([model], type="azure", settings={"api_version": "2024-02-01"})
    # A partial update of settings is checked against the channel's (azure) kind.
    world.admin("PATCH", f"/admin/v1/channels/{channel_id}",
                {"settings": {"api_version": "2024-02-01", "deployments": {model: "prod-gpt35"}}})
    world.mock.always(tag, mock_azure.ok(deployments={"prod-gpt35": "gpt-35-turbo"}))
    chunks = list(tenant.client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "old"}], stream=True,
        stream_options={"include_usage": True}))
    sent = world.mock.received(tag)[-1]
    assert sent.path == "deployments/prod-gpt35/chat/completions" and sent.query["api-version"] == "2024-02-01"
    assert "stream_options" not in sent.body  # that api-version refuses it
    # Counted by chatkore instead, as OpenAI counts.
    assert chunks[-1].usage.prompt_tokens == openai_tokens.chat_prompt_tokens([{"role": "user", "content": "old"}],
                                                                              model)
    assert chunks[-1].usage.completion_tokens == openai_tokens.text_tokens("This is a test! You said: old", model)
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens
    assert world.usage(tenant.user_id)[0]["usage_source"] == "counted"
    resp = world.http.patch(world.url + f"/admin/v1/channels/{channel_id}", json={"settings": {"api_version": "x"}},
                            timeout=30)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "settings"


def test_azure_missing_deployment_fails_over(world: World, tenant: Tenant) -> None:
    model = world.model()
    _, broken = world.channel([model], type="azure", priority=9)
    world.mock.always(broken, mock_azure.ok(deployments={"something-else": "gpt-4"}))
    _, fallback = world.channel([model], priority=1)
    reply = tenant.client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    assert reply.choices[0].message.content.endswith("x")
    assert len(world.mock.received(broken)) == 1 and len(world.mock.received(fallback)) == 1


def test_azure_embeddings(world: World, tenant: Tenant) -> None:
    model, tag, _ = _served(world, "azure")
    reply = tenant.client.embeddings.create(model=model, input=["a", "b"], encoding_format="float")
    assert [d.index for d in reply.data] == [0, 1] and reply.model == model
    assert world.mock.received(tag)[-1].path == f"deployments/{model}/embeddings"


def test_channel_kind_settings_are_checked(world: World) -> None:
    model = world.model()
    for body, param in [({"type": "bedrock"}, "type"),
                        ({"type": "azure", "settings": {"api_version": "latest"}}, "settings"),
                        ({"settings": {"timeout_s": -1}}, "settings"),
                        ({"settings": {"max_concurrency": 1.5}}, "settings")]:
        resp = world.http.post(world.url + "/admin/v1/channels", timeout=30, json={
            "name": "bad", "base_url": "http://127.0.0.1:9/v1", "api_key": "k", "models": [model], **body})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == param, (body, resp.text)
