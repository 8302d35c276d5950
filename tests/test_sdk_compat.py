"""The official openai SDK against chatkore: every endpoint, streamed and not, unchanged."""
from __future__ import annotations

import base64
import struct

import openai
import pytest

from tests import openai_tokens
from tests.world import World


@pytest.fixture
def tenant(world: World):
    return world.tenant(credits=100)


def test_chat_completion(world: World, tenant) -> None:
    model, tag = world.served_model()
    reply = tenant.client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say this is a test!"}], temperature=0.7)
    assert reply.object == "chat.completion"
    assert reply.model == model
    assert reply.id.startswith("chatcmpl-")
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == "This is a test! You said: Say this is a test!"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens == 13  # the same as OpenAI for this prompt
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    sent = world.mock.received(tag)[-1].body
    assert sent["temperature"] == 0.7 and sent["messages"][0]["content"] == "Say this is a test!"


def test_chat_stream(world: World, tenant) -> None:
    model, _ = world.served_model()
    stream = tenant.client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "stream me"}], stream=True)
    chunks = list(stream)
    assert len(chunks) > 3
    assert {c.id for c in chunks} == {chunks[0].id}
    assert all(c.object == "chat.completion.chunk" and c.model == model for c in chunks)
    assert all(c.usage is None for c in chunks)  # not asked for, so not sent
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "This is a test! You said: stream me"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_chat_stream_include_usage(world: World, tenant) -> None:
    model, _ = world.served_model()
    chunks = list(tenant.client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "count me"}], stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 9
    assert all(c.usage is None for c in chunks[:-1])


def test_each_reply_has_its_own_id(world: World, tenant) -> None:
    model, _ = world.served_model()
    ids = {tenant.client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}]).id
           for _ in range(3)}
    assert len(ids) == 3


@pytest.mark.parametrize("prompt", ["Once upon a time", ["first prompt", "second prompt"], [1212, 318, 257],
                                    [[1212, 318], [257, 1332]]])
def test_completions_prompt_forms(world: World, tenant, prompt) -> None:
    model, _ = world.served_model()
    reply = tenant.client.completions.create(model=model, prompt=prompt, max_tokens=5)
    assert reply.object == "text_completion" and reply.model == model
    expected = len(prompt) if isinstance(prompt, list) and not isinstance(prompt[0], int) else 1
    assert len(reply.choices) == expected
    # Every answer (" This is a test! You wrote: ...") is longer than 5 tokens: each is cut at max_tokens.
    assert [openai_tokens.text_tokens(c.text, model) for c in reply.choices] == [5] * expected
    assert reply.usage.completion_tokens == 5 * expected
    prompts = prompt if isinstance(prompt, list) and not isinstance(prompt[0], int) else [prompt]
    assert reply.usage.prompt_tokens == sum(openai_tokens.text_tokens(p, model) if isinstance(p, str) else len(p)
                                            for p in prompts)


def test_completions_stream_with_suffix(world: World, tenant) -> None:
    model, tag = world.served_model()
    chunks = list(tenant.client.completions.create(model=model, prompt="Hi", suffix="!", max_tokens=8, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices).startswith(" This is a test")
    assert world.mock.received(tag)[-1].body["suffix"] == "!"


def test_embeddings_default_base64(world: World, tenant) -> None:
    model, tag = world.served_model(prefix="text-embedding")
    reply = tenant.client.embeddings.create(model=model, input="哈哈哈哈哈")
    assert world.mock.received(tag)[-1].body["encoding_format"] == "base64"  # the SDK's default
    assert len(reply.data) == 1 and len(reply.data[0].embedding) == 1536
    assert abs(sum(v * v for v in reply.data[0].embedding) - 1.0) < 1e-3
    # The upstream's usage, relayed: OpenAI counts an embedding's input as its text's tokens.
    assert reply.usage.prompt_tokens == openai_tokens.text_tokens("哈哈哈哈哈", model) and reply.model == model
    assert reply.usage.total_tokens == reply.usage.prompt_tokens


def test_embeddings_float_list_and_dimensions(world: World, tenant) -> None:
    model, _ = world.served_model(prefix="text-embedding")
    reply = tenant.client.embeddings.create(model=model, input=["a", "b", "c"], encoding_format="float",
                                            dimensions=64)
    assert [d.index for d in reply.data] == [0, 1, 2]
    assert all(len(d.embedding) == 64 for d in reply.data)


def test_embeddings_raw_base64_reaches_client(world: World, tenant) -> None:
    model, _ = world.served_model(prefix="text-embedding")
    raw = tenant.client.embeddings.with_raw_response.create(model=model, input=[1, 2, 3],
                                                            encoding_format="base64")
    data = raw.http_response.json()["data"][0]["embedding"]
    assert isinstance(data, str) and len(struct.unpack("<1536f", base64.b64decode(data))) == 1536


def test_models_list_and_get(world: World, tenant) -> None:
    model, _ = world.served_model()
    ids = [m.id for m in tenant.client.models.list()]
    assert model in ids
    got = tenant.client.models.retrieve(model)
    assert got.id == model and got.object == "model"
    with pytest.raises(openai.NotFoundError):
        tenant.client.models.retrieve("no-such-model")


def test_key_limited_to_models_sees_only_them(world: World) -> None:
    allowed, _ = world.served_model()
    other, _ = world.served_model()
    t = world.tenant(models=[allowed])
    assert [m.id for m in t.client.models.list()] == [allowed]
    with pytest.raises(openai.NotFoundError) as err:
        t.client.chat.completions.create(model=other, messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "model_not_found"


async def test_async_client_stream(world: World) -> None:
    t = world.tenant()
    model, _ = world.served_model()
    client = world.async_client(t.key)
    stream = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "async"}],
                                                  stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text.endswith("async")
    await client.close()


def test_tools_round_trip(world: World, tenant) -> None:
    model, tag = world.served_model()
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    first = tenant.client.chat.completions.create(model=model, messages=messages, tools=tools, tool_choice="auto")
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and first.choices[0].finish_reason == "tool_calls"
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    second = tenant.client.chat.completions.create(model=model, messages=messages, tools=tools)
    assert second.choices[0].message.content == "The tool said: sunny"
    assert world.mock.received(tag)[-1].body["tools"] == tools


def test_streamed_tool_call_deltas_in_order(world: World, tenant) -> None:
    model, _ = world.served_model()
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}]
    chunks = list(tenant.client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "lookup: find it"}], tools=tools, stream=True))
    args = "".join(c.choices[0].delta.tool_calls[0].function.arguments or ""
                   for c in chunks if c.choices and c.choices[0].delta.tool_calls)
    assert args == '{"query": "lookup: find it"}'
