"""Anthropic's Messages API through chatkore, driven by the official `anthropic` SDK: relayed
natively to an Anthropic channel, translated for an OpenAI-compatible one; billed exactly,
errors in Anthropic's shape."""
from __future__ import annotations

from decimal import Decimal
from typing import Any

import anthropic
import pytest
import requests
from aiohttp import web

from services.inference import messages as dialect
from tests import mock_anthropic
from tests.world import Tenant, World

TOOLS = [{"name": "get_weather", "description": "Weather in a city.",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


def _charge(prompt_tokens: int, completion_tokens: int, prompt_price: str, completion_price: str) -> Decimal:
    micro = (prompt_tokens * Decimal(prompt_price) + completion_tokens * Decimal(completion_price)) * 1000
    return Decimal(int(-(-micro // 1))) / 1_000_000


def _client(world: World, key: str, **kwargs: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(**{"base_url": world.url, "api_key": key, "max_retries": 0, "timeout": 60, **kwargs})


@pytest.fixture
def tenant(world: World) -> Tenant:
    return world.tenant(credits=100)


@pytest.fixture(params=["anthropic", "openai"])
def served(request: pytest.FixtureRequest, world: World) -> tuple[str, str, str]:
    """(model, mock tag, channel kind): native on an Anthropic channel, translated on an OpenAI one."""
    model = world.model(prompt=1.5, completion=2, prefix="claude")
    _, tag = world.channel([model], type=request.param)
    return model, tag, request.param


def _upstream_usage(world: World, tag: str, kind: str) -> tuple[int, int]:
    """What the mock reported for its last call, as (prompt, completion)."""
    sent = world.mock.received(tag)[-1]
    if kind == "anthropic":
        usage = mock_anthropic.answer(sent.body)["usage"]
        return usage["input_tokens"], usage["output_tokens"]
    from services.demo import replies

    usage = replies.chat(sent.body)["usage"]
    return usage["prompt_tokens"], usage["completion_tokens"]


def test_create_native_and_translated(world: World, tenant: Tenant, served: tuple[str, str, str]) -> None:
    model, tag, kind = served
    client = _client(world, tenant.key)
    reply = client.messages.create(
        model=model, max_tokens=200, metadata={"user_id": "end-user-7"}, stop_sequences=["zzz"],
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "hello"}],
        extra_headers={"anthropic-beta": "prompt-caching-2024-07-31", "anthropic-version": "2023-06-01"})
    assert reply.type == "message" and reply.role == "assistant" and reply.model == model
    assert reply.id.startswith("msg_")
    assert reply.content[0].type == "text" and reply.content[0].text == "This is a test! You said: hello"
    assert reply.stop_reason == "end_turn"
    sent = world.mock.received(tag)[-1]
    if kind == "anthropic":  # native: the client's request as sent, its headers forwarded
        assert sent.path == "messages"
        assert sent.body["system"] == [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]
        assert sent.body["metadata"] == {"user_id": "end-user-7"} and sent.body["max_tokens"] == 200
        assert sent.headers["anthropic-version"] == "2023-06-01"
        assert sent.headers["anthropic-beta"] == "prompt-caching-2024-07-31"
        assert sent.headers["x-api-key"] == f"sk-upstream-{tag}-secret"
    else:  # translated to chat completions
        assert sent.path == "chat/completions"
        assert sent.body["messages"] == [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "hello"}]
        assert sent.body["max_tokens"] == 200 and sent.body["user"] == "end-user-7" and sent.body["stop"] == ["zzz"]
        assert "anthropic-beta" not in sent.headers
    prompt, completion = _upstream_usage(world, tag, kind)
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (prompt, completion)
    expected = _charge(prompt, completion, "1.5", "2")
    assert world.balance(tenant.user_id) == 100 - expected and world.held(tenant.user_id) == 0
    [row] = world.usage(tenant.user_id)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, completion)
    assert row["status"] == "complete" and row["usage_source"] == "upstream"
    assert Decimal(str(row["credits"])) == expected


def test_stream_native_and_translated(world: World, tenant: Tenant, served: tuple[str, str, str]) -> None:
    model, tag, kind = served
    client = _client(world, tenant.key)
    with client.messages.stream(model=model, max_tokens=200,
                                messages=[{"role": "user", "content": "tell me a story"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "This is a test! You said: tell me a story"
    assert final.content[0].text == text and final.model == model and final.stop_reason == "end_turn"
    prompt, completion = _upstream_usage(world, tag, kind)
    assert (final.usage.input_tokens, final.usage.output_tokens) == (prompt, completion)
    # message_stop comes after the settlement: the balance is final when the stream ends.
    assert world.balance(tenant.user_id) == 100 - _charge(prompt, completion, "1.5", "2")
    assert world.held(tenant.user_id) == 0


def test_stream_events_have_event_lines(world: World, tenant: Tenant) -> None:
    model, _ = world.served_model(type="anthropic")
    resp = requests.post(world.url + "/v1/messages?beta=true", stream=True, timeout=60,
                         headers={"x-api-key": tenant.key, "anthropic-version": "2026-10-21"},
                         json={"model": model, "max_tokens": 50, "stream": True,
                               "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events = [e for e in resp.text.split("\n\n") if e]
    names = [e.split("\n")[0] for e in events]
    assert all(n.startswith("event: ") for n in names)
    kinds = [n.removeprefix("event: ") for n in names]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert {"content_block_start", "content_block_delta", "content_block_stop", "ping"} <= set(kinds)


@pytest.mark.parametrize("stream", [False, True])
def test_tool_use_round_trip(world: World, tenant: Tenant, served: tuple[str, str, str], stream: bool) -> None:
    model, tag, kind = served
    client = _client(world, tenant.key)
    asked = [{"role": "user", "content": "What is the weather in Paris?"}]
    if stream:
        with client.messages.stream(model=model, max_tokens=300, tools=TOOLS, messages=asked) as s:
            first = s.get_final_message()
    else:
        first = client.messages.create(model=model, max_tokens=300, tools=TOOLS, messages=asked)
    assert first.stop_reason == "tool_use"
    [use] = [b for b in first.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.id and isinstance(use.input, dict)
    follow = [*asked, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21C"}]}]
    second = client.messages.create(model=model, max_tokens=300, tools=TOOLS, messages=follow)
    assert second.stop_reason == "end_turn"
    assert second.content[-1].text == "The tool said: sunny, 21C"
    if kind == "openai":  # the tool_result went up as a tool message answering the call
        sent = world.mock.received(tag)[-1].body["messages"]
        assert sent[-2]["tool_calls"][0]["id"] == use.id
        assert sent[-1] == {"role": "tool", "tool_call_id": use.id, "content": "sunny, 21C"}
    assert world.held(tenant.user_id) == 0
    assert len(world.usage(tenant.user_id)) == 2


def test_image_and_key_headers(world: World, tenant: Tenant) -> None:
    model, tag = world.served_model(type="anthropic")
    content = [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
               {"type": "text", "text": "what is this"}]
    # The key as x-api-key (Claude Code, older SDKs) and as a bearer token (auth_token).
    for client in (_client(world, tenant.key), anthropic.Anthropic(base_url=world.url, auth_token=tenant.key,
                                                                   max_retries=0)):
        reply = client.messages.create(model=model, max_tokens=100, messages=[{"role": "user", "content": content}])
        assert reply.content[0].text == "This is a test! You said: what is this (and 1 image)"
    assert world.mock.received(tag)[-1].body["messages"][0]["content"] == content


def test_count_tokens(world: World, tenant: Tenant, served: tuple[str, str, str]) -> None:
    model, tag, _ = served
    client = _client(world, tenant.key)
    body: dict[str, Any] = {"model": model, "system": "You are terse.", "tools": TOOLS,
                            "messages": [{"role": "user", "content": "How many tokens is this?"}]}
    counted = client.messages.count_tokens(**body)
    assert counted.input_tokens == dialect.count_prompt(body, model) > 10
    assert world.mock.received(tag) == [] and world.usage(tenant.user_id) == []  # nothing sent, nothing charged


def test_large_request_of_about_90kb(world: World, tenant: Tenant) -> None:
    model, tag = world.served_model(type="anthropic")
    system = [{"type": "text", "text": "You are a coding agent. " * 3800, "cache_control": {"type": "ephemeral"}}]
    reply = requests.post(world.url + "/v1/messages?beta=true", timeout=60, json={
        "model": model, "max_tokens": 64, "system": system, "thinking": {"type": "enabled", "budget_tokens": 32},
        "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-api-key": tenant.key, "anthropic-version": "2026-10-21",
                 "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14"})
    assert len(reply.request.body) > 90_000
    assert reply.status_code == 200, reply.text
    sent = world.mock.received(tag)[-1]
    assert sent.headers["anthropic-version"] == "2026-10-21"
    assert sent.headers["anthropic-beta"] == "claude-code-20250219,interleaved-thinking-2025-05-14"
    assert sent.body["thinking"] == {"type": "enabled", "budget_tokens": 32}


def test_empty_balance_is_402_billing_error(world: World) -> None:
    model, tag = world.served_model(type="anthropic")
    broke = world.tenant(credits=0)
    with pytest.raises(anthropic.APIStatusError) as caught:
        _client(world, broke.key).messages.create(model=model, max_tokens=50,
                                                  messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 402
    assert caught.value.body == {"type": "error", "error": {"type": "billing_error",
                                                            "message": caught.value.body["error"]["message"]}}
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert world.mock.received(tag) == [] and world.balance(broke.user_id) == 0
    assert world.usage(broke.user_id) == []


@pytest.mark.parametrize(("case", "status", "kind"), [
    ("bad key", 401, "authentication_error"),
    ("no max_tokens", 400, "invalid_request_error"),
    ("bad role", 400, "invalid_request_error"),
    ("unknown model", 404, "not_found_error"),
    ("not json", 400, "invalid_request_error"),
])
def test_errors_in_anthropic_shape(world: World, tenant: Tenant, case: str, status: int, kind: str) -> None:
    model, tag = world.served_model(type="anthropic")
    key = "sk-wrong" if case == "bad key" else tenant.key
    body: Any = {"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    if case == "no max_tokens":
        body.pop("max_tokens")
    elif case == "bad role":
        body["messages"][0]["role"] = "system"
    elif case == "unknown model":
        body["model"] = "claude-nonexistent"
    data = b"{not json" if case == "not json" else None
    resp = requests.post(world.url + "/v1/messages", headers={"x-api-key": key, "anthropic-version": "2023-06-01",
                                                              "content-type": "application/json"},
                         json=None if data else body, data=data, timeout=30)
    assert resp.status_code == status
    answer = resp.json()
    assert answer["type"] == "error" and answer["error"]["type"] == kind and answer["error"]["message"]
    assert world.mock.received(tag) == [] and world.usage(tenant.user_id) == []


def test_no_channel_is_529_overloaded(world: World, tenant: Tenant) -> None:
    model, tag = world.served_model(type="anthropic")
    world.mock.always(tag, mock_anthropic.fail(529, "overloaded_error", "Overloaded"))
    client = _client(world, tenant.key)
    codes = []
    for _ in range(4):  # the channel fails, cools down, and then nothing can serve the model
        with pytest.raises(anthropic.APIStatusError) as caught:
            client.messages.create(model=model, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
        codes.append((caught.value.status_code, caught.value.body["error"]["type"]))
    assert codes[-1] == (529, "overloaded_error")
    assert world.balance(tenant.user_id) == 100 and world.held(tenant.user_id) == 0


def test_models_in_anthropic_shape(world: World, tenant: Tenant) -> None:
    model, _ = world.served_model(type="anthropic")
    page = _client(world, tenant.key).models.list()
    ids = [m.id for m in page.data]
    assert model in ids and all(m.type == "model" and m.created_at for m in page.data)
    plain = requests.get(world.url + "/v1/models", headers={"Authorization": f"Bearer {tenant.key}"}, timeout=30)
    assert plain.json()["object"] == "list" and "has_more" not in plain.json()


CACHED = {"input_tokens": 100, "cache_read_input_tokens": 600, "cache_creation_input_tokens": 300,
          "output_tokens": 50}


async def _cached_usage(request: web.Request, body: dict[str, Any], path: str) -> web.StreamResponse:
    """Anthropic's answer, reporting prompt-cache reads and writes."""
    message = {**mock_anthropic.answer(body), "usage": dict(CACHED)}
    if not body.get("stream"):
        return web.json_response(message)
    events = mock_anthropic.events(message)
    events[0]["message"]["usage"] = {**CACHED, "output_tokens": 1}
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for event in events:
        await response.write(mock_anthropic.frame(event))
    return response


@pytest.mark.parametrize("stream", [False, True])
def test_cache_reads_and_writes_are_priced(world: World, tenant: Tenant, stream: bool) -> None:
    model, tag = world.served_model(type="anthropic")
    world.admin("PUT", f"/admin/v1/prices/{model}", {"prompt": 2, "completion": 8, "cached_prompt": 0.5,
                                                      "cache_write": 2.5})
    world.mock.always(tag, _cached_usage)
    client = _client(world, tenant.key)
    kwargs: dict[str, Any] = {"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}],
                              "system": [{"type": "text", "text": "long", "cache_control": {"type": "ephemeral"}}]}
    if stream:
        with client.messages.stream(**kwargs) as s:
            usage = s.get_final_message().usage
    else:
        usage = client.messages.create(**kwargs).usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens,
            usage.output_tokens) == (100, 600, 300, 50)
    # 100 x 2 + 600 x 0.5 + 300 x 2.5 + 50 x 8, per 1,000
    expected = Decimal("0.2") + Decimal("0.3") + Decimal("0.75") + Decimal("0.4")
    [row] = world.usage(tenant.user_id)
    assert (row["prompt_tokens"], row["cached_prompt_tokens"], row["cache_write_tokens"]) == (1000, 600, 300)
    assert Decimal(str(row["credits"])) == expected
    assert world.balance(tenant.user_id) == 100 - expected and world.held(tenant.user_id) == 0
