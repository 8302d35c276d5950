"""POST /v1/responses through the official SDKs: native on a Responses upstream, translated on chat and Anthropic."""
from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import openai
import pydantic
import pytest
from aiohttp import web

from tests import mock_responses, openai_tokens
from tests import mock_upstream as up
from tests.world import Tenant, World

WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "The weather in a city now.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"], "additionalProperties": False}}

KINDS = ["native", "chat", "anthropic"]


def _charge(prompt_tokens: int, completion_tokens: int, prompt_price: str, completion_price: str) -> Decimal:
    micro = (prompt_tokens * Decimal(prompt_price) + completion_tokens * Decimal(completion_price)) * 1000
    return Decimal(int(-(-micro // 1))) / 1_000_000


def _served(world: World, kind: str) -> tuple[str, str]:
    """A priced model on a mock channel of this kind: (model, tag)."""
    if kind == "native":
        return world.served_model(prompt=1.5, completion=2, settings={"responses_api": "native"})
    if kind == "anthropic":
        return world.served_model(prompt=1.5, completion=2, type="anthropic")
    return world.served_model(prompt=1.5, completion=2)


def _upstream_path(kind: str) -> str:
    return {"native": "responses", "chat": "chat/completions", "anthropic": "messages"}[kind]


def _upstream_usage(world: World, tag: str, kind: str, model: str, answer: str) -> tuple[int, int]:
    """(input, output) tokens of the mock upstream's last call, counted here with tiktoken by the
    mock's own rule: on chat, OpenAI's (the cookbook's prompt count, the answer's tokens); on the
    Responses and Anthropic faces, the tokens of json.dumps([instructions or system, input items
    or messages, tools]) and of the answer, in o200k_base and cl100k_base."""
    sent = world.mock.received(tag)[-1].body
    if kind == "chat":
        return openai_tokens.chat_prompt_tokens(sent["messages"], model), openai_tokens.text_tokens(answer, model)
    if kind == "native":
        enc = openai_tokens.named_encoding("o200k_base")
        raw = sent.get("input")
        items = ([{"type": "message", "role": "user", "content": raw}] if isinstance(raw, str)
                 else [i for i in raw or () if isinstance(i, dict)])
        prompt = len(enc.encode(json.dumps([sent.get("instructions"), items, sent.get("tools")])))
    else:
        enc = openai_tokens.named_encoding("cl100k_base")
        prompt = len(enc.encode(json.dumps([sent.get("system"), sent["messages"], sent.get("tools") or []])))
    return prompt, len(enc.encode(answer))


def _usage_row(world: World, t: Tenant) -> dict[str, Any]:
    rows = world.usage(t.user_id)
    assert len(rows) >= 1
    return rows[0]


def _assert_billed_exactly(world: World, t: Tenant, usage: Any, before: Decimal) -> None:
    row = _usage_row(world, t)
    assert row["status"] == "complete"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage.input_tokens, usage.output_tokens)
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    expected = _charge(usage.input_tokens, usage.output_tokens, "1.5", "2")
    assert Decimal(str(row["credits"])) == expected
    assert world.balance(t.user_id) == before - expected
    assert world.held(t.user_id) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_plain_text(world: World, kind: str) -> None:
    model, tag = _served(world, kind)
    t = world.tenant(credits=100)
    reply = t.client.responses.create(model=model, input="Say this is a test!", instructions="Be brief.")
    assert reply.id.startswith("resp_") and reply.object == "response"
    assert reply.model == model and reply.status == "completed"
    assert "This is a test! You said: Say this is a test!" in reply.output_text
    assert reply.usage is not None
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == _upstream_usage(
        world, tag, kind, model, "This is a test! You said: Say this is a test!")
    _assert_billed_exactly(world, t, reply.usage, Decimal(100))
    sent = world.mock.received(tag)[-1]
    assert sent.path == _upstream_path(kind)
    if kind == "chat":
        assert sent.body["messages"] == [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "Say this is a test!"}]
    if kind == "native":
        assert sent.body["input"] == "Say this is a test!" and sent.body["instructions"] == "Be brief."
    # Stored by default: the same object comes back by id.
    again = t.client.responses.retrieve(reply.id)
    assert again.id == reply.id and again.output_text == reply.output_text


@pytest.mark.parametrize("kind", KINDS)
def test_streamed(world: World, kind: str) -> None:
    model, tag = _served(world, kind)
    t = world.tenant(credits=100)
    with t.client.responses.stream(model=model, input="Stream this please") as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    for needed in ("response.output_item.added", "response.content_part.added", "response.output_text.delta",
                   "response.output_text.done", "response.content_part.done", "response.output_item.done"):
        assert needed in types, (needed, types)
    assert types.index("response.output_item.added") < types.index("response.output_text.delta") \
        < types.index("response.output_text.done") < types.index("response.output_item.done")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert len({e.response.id for e in events if hasattr(e, "response")}) == 1
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == final.output_text == "This is a test! You said: Stream this please"
    assert final.id.startswith("resp_") and final.model == model
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens) == _upstream_usage(world, tag, kind, model, text)
    _assert_billed_exactly(world, t, final.usage, Decimal(100))
    assert t.client.responses.retrieve(final.id).output_text == text


# --- function tools: a round trip by previous_response_id, and by replaying the input ------------


def _chat_weather() -> up.Behavior:
    """A chat upstream that calls the first tool with {"city": "Paris"} and answers its result."""

    async def behave(request: web.Request, body: dict[str, Any], path: str) -> web.StreamResponse:
        last = body["messages"][-1]
        if last["role"] == "tool" or not body.get("tools"):
            message: dict[str, Any] = {"role": "assistant", "content": f"The tool said: {last['content']}"}
        else:
            message = {"role": "assistant", "content": None, "tool_calls": [{
                "id": f"call_{len(body['messages'])}x", "type": "function",
                "function": {"name": body["tools"][0]["function"]["name"], "arguments": '{"city": "Paris"}'}}]}
        finish = "tool_calls" if message.get("tool_calls") else "stop"
        usage = {"prompt_tokens": 50 + len(body["messages"]), "completion_tokens": 9, "total_tokens": 59}
        base = {"id": "chatcmpl-w", "created": 1, "model": body["model"]}
        if not body.get("stream"):
            return web.json_response({**base, "object": "chat.completion", "usage": usage, "choices": [
                {"index": 0, "message": message, "finish_reason": finish}]})
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        for call in message.get("tool_calls") or ():
            fn = call["function"]
            deltas.append({"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                           "function": {"name": fn["name"], "arguments": ""}}]})
            deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": p}}]}
                       for p in (fn["arguments"][:5], fn["arguments"][5:])]
        if message.get("content"):
            deltas += [{"content": message["content"][:7]}, {"content": message["content"][7:]}]
        chunks = [{**base, "object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
        chunks.append({**base, "object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": {}, "finish_reason": finish}]})
        chunks.append({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        stream = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await stream.prepare(request)
        for chunk in chunks:
            await stream.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await stream.write(b"data: [DONE]\n\n")
        return stream

    return behave


def _tool_model(world: World, kind: str) -> tuple[str, str]:
    model, tag = _served(world, kind)
    if kind == "chat":
        world.mock.always(tag, _chat_weather())
    return model, tag


def _calls(reply: Any) -> list[Any]:
    return [o for o in reply.output if o.type == "function_call"]


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "streamed"])
@pytest.mark.parametrize("kind", KINDS)
def test_function_tool_round_trip_by_previous_response_id(world: World, kind: str, stream: bool) -> None:
    model, tag = _tool_model(world, kind)
    t = world.tenant(credits=100)

    def create(**kwargs: Any) -> Any:
        if not stream:
            return t.client.responses.create(model=model, tools=[WEATHER_TOOL], **kwargs)
        with t.client.responses.stream(model=model, tools=[WEATHER_TOOL], **kwargs) as s:
            return s.get_final_response()

    first = create(input="What is the weather in Paris?")
    calls = _calls(first)
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].call_id
    assert isinstance(json.loads(calls[0].arguments), dict)
    second = create(previous_response_id=first.id,
                    input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "21C, sunny"}])
    assert second.output_text.endswith("The tool said: 21C, sunny")
    assert second.previous_response_id == first.id
    sent = world.mock.received(tag)[-1].body
    assert "previous_response_id" not in sent  # chatkore keeps the chain and sends it whole
    if kind == "chat":
        assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool"]
        assert sent["messages"][1]["tool_calls"][0]["id"] == calls[0].call_id
        assert sent["messages"][2] == {"role": "tool", "tool_call_id": calls[0].call_id, "content": "21C, sunny"}
    if kind == "native":
        assert [i.get("type", "message") for i in sent["input"]] == ["message", "function_call",
                                                                     "function_call_output"]
    items = t.client.responses.input_items.list(second.id, order="asc")
    assert [i.type for i in items.data][-1] == "function_call_output"
    assert any(i.type == "function_call" and i.call_id == calls[0].call_id for i in items.data)
    rows = world.usage(t.user_id)
    assert len(rows) == 2 and all(r["status"] == "complete" for r in rows)
    charged = sum(Decimal(str(r["credits"])) for r in rows)
    assert world.balance(t.user_id) == 100 - charged and world.held(t.user_id) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_function_tool_round_trip_by_replaying_the_input(world: World, kind: str) -> None:
    model, _ = _tool_model(world, kind)
    t = world.tenant(credits=100)
    question = {"role": "user", "content": "What is the weather in Paris?"}
    first = t.client.responses.create(model=model, input=[question], tools=[WEATHER_TOOL], store=False)
    call = _calls(first)[0]
    replay = [question, *[o.model_dump(exclude_none=True) for o in first.output],
              {"type": "function_call_output", "call_id": call.call_id, "output": "18C, rain"}]
    second = t.client.responses.create(model=model, input=replay, tools=[WEATHER_TOOL], store=False)
    assert second.output_text.endswith("The tool said: 18C, rain")
    with pytest.raises(openai.NotFoundError):  # store: false keeps nothing
        t.client.responses.retrieve(first.id)


# --- structured output ------------------------------------------------------------------------------


class Weather(pydantic.BaseModel):
    city: str
    temperature_c: int


@pytest.mark.parametrize("kind", ["native", "chat"])
def test_structured_output_with_parse(world: World, kind: str) -> None:
    model, tag = _served(world, kind)
    answer = '{"city": "Paris", "temperature_c": 21}'
    world.mock.script(tag, mock_responses.ok(content=answer) if kind == "native" else up.ok(content=answer))
    t = world.tenant(credits=100)
    reply = t.client.responses.parse(model=model, input="Weather in Paris as JSON", text_format=Weather)
    assert reply.output_parsed == Weather(city="Paris", temperature_c=21)
    sent = world.mock.received(tag)[-1].body
    if kind == "chat":
        fmt = sent["response_format"]
        assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "Weather"
        assert fmt["json_schema"]["schema"]["properties"].keys() == {"city", "temperature_c"}
    else:
        assert sent["text"]["format"]["type"] == "json_schema"


# --- stored responses belong to their user -------------------------------------------------------------


def test_another_users_key_cannot_see_a_stored_response(world: World) -> None:
    model, _ = _served(world, "chat")
    owner, stranger = world.tenant(credits=100), world.tenant(credits=100)
    reply = owner.client.responses.create(model=model, input="A secret of mine")
    with pytest.raises(openai.NotFoundError) as seen:
        stranger.client.responses.retrieve(reply.id)
    assert seen.value.body["type"] == "invalid_request_error" and reply.id in seen.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        stranger.client.responses.input_items.list(reply.id)
    with pytest.raises(openai.NotFoundError):
        stranger.client.responses.delete(reply.id)
    with pytest.raises(openai.BadRequestError) as refused:
        stranger.client.responses.create(model=model, input="and what did I say?", previous_response_id=reply.id)
    assert refused.value.body["param"] == "previous_response_id"
    assert refused.value.body["code"] == "previous_response_not_found"
    assert world.balance(stranger.user_id) == 100 and world.usage(stranger.user_id) == []
    # Another key of the owner's sees it; deleted, it is gone for everyone.
    other_key = world.client(world.key(owner.user_id)["key"])
    assert other_key.responses.retrieve(reply.id).output_text == reply.output_text
    items = other_key.responses.input_items.list(reply.id)
    assert [i.type for i in items.data] == ["message"] and items.data[0].content[0].text == "A secret of mine"
    owner.client.responses.delete(reply.id)
    with pytest.raises(openai.NotFoundError):
        owner.client.responses.retrieve(reply.id)


def test_bad_input_is_a_400_and_costs_nothing(world: World) -> None:
    model, _ = _served(world, "chat")
    t = world.tenant(credits=100)
    for body, param in [({"input": 5}, "input"), ({"input": ["text"]}, "input[0]"), ({}, "input"),
                        ({"input": "x", "max_output_tokens": 3}, "max_output_tokens"),
                        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
                        ({"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}},
                         "text.format.schema"),
                        ({"input": "x", "metadata": {"k": 1}}, "metadata.k")]:
        with pytest.raises(openai.BadRequestError) as seen:
            t.client.responses.create(model=model, **body)
        assert seen.value.body["param"] == param, body
    assert world.balance(t.user_id) == 100 and world.usage(t.user_id) == []


# --- what Codex sends: unknown items, tools and fields are accepted -------------------------------------

CODEX_TOOLS = [
    {"type": "function", "name": "shell", "description": "Runs a command.", "strict": False,
     "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}},
                    "required": ["command"]}},
    {"type": "custom", "name": "apply_patch", "description": "Applies a patch.",
     "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}},
    {"type": "web_search"},
    {"type": "namespace", "name": "mcp__files", "description": "File tools.",
     "tools": [{"type": "function", "name": "read_file", "parameters": {"type": "object", "properties": {}}}]},
]


def _codex_body(model: str) -> dict[str, Any]:
    return {
        "model": model, "instructions": "You are Codex.", "tools": CODEX_TOOLS, "tool_choice": "auto",
        "parallel_tool_calls": False, "reasoning": {"effort": "medium", "summary": "auto"}, "store": False,
        "stream": True, "include": ["reasoning.encrypted_content"], "prompt_cache_key": "0b6c-session",
        "client_metadata": {"originator": "codex_exec"}, "text": {"verbosity": "low"},
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "<permissions/>"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list the files"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAAB-opaque"},
            {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "shell",
             "arguments": "{\"command\": [\"ls\"]}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "a.txt\nb.txt"},
            {"type": "custom_tool_call", "id": "ctc_1", "call_id": "call_2", "name": "apply_patch",
             "input": "*** Begin Patch"},
            {"type": "custom_tool_call_output", "call_id": "call_2", "output": "Done."},
            {"type": "additional_tools", "tools": [{"type": "function", "name": "view_image",
                                                    "parameters": {"type": "object", "properties": {}}}]},
            {"type": "a_future_item", "whatever": {"nested": True}},
        ],
    }


@pytest.mark.parametrize("kind", ["native", "chat"])
def test_codex_requests_are_accepted(world: World, kind: str) -> None:
    model, tag = _served(world, kind)
    t = world.tenant(credits=100)
    body = _codex_body(model)
    resp = world.http.post(world.url + "/v1/responses", json=body, timeout=60,
                           headers={"Authorization": f"Bearer {t.key}"}, stream=True)
    assert resp.status_code == 200, resp.text
    events = [json.loads(line[6:]) for line in resp.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert events[-1]["type"] == "response.completed" and events[-1]["response"]["store"] is False
    sent = world.mock.received(tag)[-1].body
    if kind == "native":
        # Passed through as sent, but for the upstream's model name and the budget the hold pays for.
        assert {k: v for k, v in sent.items() if k not in ("model", "max_output_tokens")} == \
            {k: v for k, v in body.items() if k != "model"}
    else:
        names = [tool["function"]["name"] for tool in sent["tools"]]
        assert names == ["shell", "apply_patch", "read_file", "view_image"]
        assert sent["messages"][0] == {"role": "system", "content": "You are Codex."}
        assert [m["role"] for m in sent["messages"]] == ["system", "system", "user", "assistant", "tool", "assistant",
                                                         "tool"]
        assert sent["messages"][3]["tool_calls"][0]["id"] == "call_1"
        patch = sent["messages"][5]["tool_calls"][0]
        assert patch["id"] == "call_2" and json.loads(patch["function"]["arguments"]) == {"input": "*** Begin Patch"}
    assert world.usage(t.user_id)[0]["status"] == "complete"


# --- the OpenAI Agents SDK -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["native", "chat"])
def test_an_agent_with_a_function_tool_runs_to_its_final_answer(world: World, kind: str) -> None:
    import asyncio

    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)  # no trace export to api.openai.com
    model, tag = _tool_model(world, kind)
    t = world.tenant(credits=100)
    asked: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city now."""
        asked.append(city)
        return f"Sunny and 24C in {city}"

    async def run() -> str:
        client = world.async_client(t.key)
        agent = Agent(name="weather", instructions="Answer with the weather.", tools=[get_weather],
                      model=OpenAIResponsesModel(model=model, openai_client=client))
        result = await Runner.run(agent, "What is the weather in Paris?")
        await client.close()
        return str(result.final_output)

    final = asyncio.run(run())
    city = "Paris" if kind == "chat" else "What is the weather in Paris?"
    assert asked == [city]
    assert final.endswith(f"The tool said: Sunny and 24C in {city}")
    rows = world.usage(t.user_id)
    assert len(rows) == 2 and all(r["status"] == "complete" for r in rows)
    assert world.balance(t.user_id) == 100 - sum(Decimal(str(r["credits"])) for r in rows)


# --- failures and limits --------------------------------------------------------------------------------


def test_a_stream_broken_after_output_errors_in_band_and_pays_what_was_delivered(world: World) -> None:
    model, tag = _served(world, "chat")
    world.mock.script(tag, up.stream_then(4, "cut"))
    t = world.tenant(credits=100)
    seen: list[str] = []
    delivered = ""
    with pytest.raises(openai.APIError) as failed, \
            t.client.responses.stream(model=model, input="Tell me something long enough to cut") as stream:
        for event in stream:
            seen.append(event.type)
            if event.type == "response.output_text.delta":
                delivered += event.delta
    assert "response.output_text.delta" in seen and "response.completed" not in seen
    assert "upstream" in str(failed.value.message).lower()
    # The mock's answer in 20 pieces: the role chunk and three pieces went out before the cut.
    answer = "This is a test! You said: Tell me something long enough to cut"
    assert delivered == answer[:3 * -(-len(answer) // 20)]
    row = _usage_row(world, t)
    # Counted by chatkore (the cut stream reported none): the prompt sent, the output delivered.
    prompt = openai_tokens.chat_prompt_tokens([{"role": "user", "content": "Tell me something long enough to cut"}],
                                              model)
    assert world.mock.received(tag)[-1].body["messages"] == [
        {"role": "user", "content": "Tell me something long enough to cut"}]
    assert row["status"] == "upstream_error"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, openai_tokens.text_tokens(delivered, model))
    expected = _charge(row["prompt_tokens"], row["completion_tokens"], "1.5", "2")
    assert Decimal(str(row["credits"])) == expected
    wait_held_zero(world, t)
    assert world.balance(t.user_id) == 100 - expected


def wait_held_zero(world: World, t: Tenant) -> None:
    from tools.stack import wait_until

    wait_until(lambda: world.held(t.user_id) == 0, 10, "the hold to settle")


def test_a_failure_before_any_output_is_a_real_status_and_costs_nothing(world: World) -> None:
    model, tag = _served(world, "native")
    world.mock.always(tag, up.fail(500, "upstream exploded"))
    t = world.tenant(credits=100)
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as failed:
            if stream:
                with t.client.responses.stream(model=model, input="hi") as s:
                    list(s)
            else:
                t.client.responses.create(model=model, input="hi")
        assert failed.value.status_code in (502, 503)
        assert failed.value.body["type"] == "server_error"
    wait_held_zero(world, t)
    assert world.balance(t.user_id) == 100
    assert all(Decimal(str(r["credits"])) == 0 for r in world.usage(t.user_id))


def test_an_upstream_validation_error_passes_through(world: World) -> None:
    model, tag = _served(world, "native")
    world.mock.script(tag, up.fail(400, "Invalid 'input[0].content': bad part.", error_type="invalid_request_error",
                                   param="input[0].content", code="invalid_value"))
    t = world.tenant(credits=100)
    with pytest.raises(openai.BadRequestError) as refused:
        t.client.responses.create(model=model, input=[{"role": "user", "content": [{"type": "input_strange"}]}])
    assert refused.value.body["param"] == "input[0].content" and refused.value.body["code"] == "invalid_value"
    wait_held_zero(world, t)
    assert world.balance(t.user_id) == 100


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "streamed"])
def test_output_cut_by_max_output_tokens_is_incomplete(world: World, stream: bool) -> None:
    model, tag = _served(world, "chat")
    t = world.tenant(credits=100)
    prompt = "Please repeat every one of these words back to me exactly as they were written here, thank you"
    if stream:
        with t.client.responses.stream(model=model, input=prompt, max_output_tokens=16) as s:
            events = list(s)
        assert events[-1].type == "response.incomplete"  # as OpenAI ends such a stream (not .completed)
        reply = events[-1].response
    else:
        reply = t.client.responses.create(model=model, input=prompt, max_output_tokens=16)
    assert reply.status == "incomplete" and reply.incomplete_details.reason == "max_output_tokens"
    assert world.mock.received(tag)[-1].body["max_tokens"] == 16
    assert reply.usage.output_tokens == 16
    _assert_billed_exactly(world, t, reply.usage, Decimal(100))


@pytest.mark.parametrize("kind", ["native", "chat"])
def test_a_client_that_hangs_up_on_completed_paid_for_a_complete_call(world: World, kind: str) -> None:
    """Codex and the SDK's stream helper close the connection once response.completed is in."""
    model, tag = _served(world, kind)
    t = world.tenant(credits=100)
    with world.http.post(world.url + "/v1/responses", json={"model": model, "input": "hi", "stream": True},
                         headers={"Authorization": f"Bearer {t.key}"}, stream=True, timeout=60) as resp:
        for line in resp.iter_lines(decode_unicode=True):
            if line == "event: response.completed":
                break
    wait_held_zero(world, t)
    row = _usage_row(world, t)
    prompt, completion = _upstream_usage(world, tag, kind, model, "This is a test! You said: hi")
    assert row["status"] == "complete"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, completion)
    assert Decimal(str(row["credits"])) == _charge(prompt, completion, "1.5", "2")
    assert world.balance(t.user_id) == 100 - Decimal(str(row["credits"]))


@pytest.mark.parametrize("kind,stream", [("native", False), ("native", True), ("chat", True)])
def test_cached_and_reasoning_tokens_are_charged_at_their_own_prices(world: World, kind: str, stream: bool) -> None:
    model = world.model(prompt=2, completion=8)
    world.admin("PUT", f"/admin/v1/prices/{model}", {"prompt": 2, "completion": 8, "cached_prompt": 0.5})
    settings: dict[str, Any] = {"settings": {"responses_api": "native"}} if kind == "native" else {}
    _, tag = world.channel([model], **settings)
    if kind == "native":
        world.mock.always(tag, mock_responses.ok(usage={
            "input_tokens": 1000, "input_tokens_details": {"cached_tokens": 600}, "output_tokens": 300,
            "output_tokens_details": {"reasoning_tokens": 200}, "total_tokens": 1300}))
    else:
        world.mock.always(tag, up.ok(usage_override={
            "prompt_tokens": 1000, "completion_tokens": 300, "total_tokens": 1300,
            "prompt_tokens_details": {"cached_tokens": 600}, "completion_tokens_details": {"reasoning_tokens": 200}}))
    t = world.tenant(credits=100)
    if stream:
        with t.client.responses.stream(model=model, input="Think, then answer") as s:
            reply = s.get_final_response()
    else:
        reply = t.client.responses.create(model=model, input="Think, then answer")
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (1000, 300)
    assert reply.usage.input_tokens_details.cached_tokens == 600
    assert reply.usage.output_tokens_details.reasoning_tokens == 200
    row = _usage_row(world, t)
    assert (row["cached_prompt_tokens"], row["reasoning_tokens"], row["unpaid_credits"]) == (600, 200, 0)
    expected = Decimal("3.5")  # (400 x 2 + 600 x 0.5 + 300 x 8) / 1,000
    assert Decimal(str(row["credits"])) == expected
    wait_held_zero(world, t)
    assert world.balance(t.user_id) == 100 - expected


ODD_BODIES: list[Any] = [
    {"input": [{"role": "user", "content": 5}]},
    {"input": [{"role": "user", "content": [{"type": "input_image"}, {"type": "input_file", "file_id": "f"}, 7]}]},
    {"input": [{"type": "function_call", "arguments": {"not": "a string"}}, {"type": "function_call_output"}]},
    {"input": [{"type": "function_call_output", "call_id": 3, "output": None}]},
    {"input": [{"type": "item_reference", "id": "msg_unknown"}]},
    {"input": [{"type": "message", "role": "wizard", "content": "x"}]},
    {"input": [{"type": "additional_tools", "tools": "none"}, {"role": "user", "content": "hi"}]},
    {"input": [{"type": "reasoning", "summary": "x"}, {"role": "user", "content": "hi"}]},
    {"input": "hi", "tools": [{"type": "namespace", "tools": [{"type": "namespace", "tools": [5]}]}]},
    {"input": "hi", "tools": [{"type": "custom"}, {"type": "function", "name": "f", "parameters": "x"}]},
    {"input": "hi", "tool_choice": {"type": "function"}},
    {"input": "hi", "tool_choice": "sometimes"},
    {"input": "hi", "text": {"format": {"type": "json_object"}}},
    {"input": "hi", "text": {"format": "json"}},
    {"input": "hi", "reasoning": {"effort": "maximal"}},
    {"input": "hi", "previous_response_id": "resp_" + "x" * 5000},
    {"input": "hi", "previous_response_id": ""},
    {"input": "", "instructions": ""},
    {"input": [], "max_output_tokens": 16},
    {"input": "hi", "stream": "yes"},
    {"input": "hi", "store": "no"},
    {"input": "hi", "metadata": {"k" * 65: "v"}},
    {"input": "hi", "temperature": 9},
    {"input": "hi", "include": ["reasoning.encrypted_content"], "truncation": "auto", "service_tier": "auto"},
    {"input": "\ud800 lone surrogate \u0000 nul"},
]


@pytest.mark.parametrize("kind", ["native", "chat", "anthropic"])
def test_odd_requests_never_fail_the_server(world: World, kind: str) -> None:
    model, _ = _served(world, kind)
    t = world.tenant(credits=100)
    for body in ODD_BODIES:
        for stream in (False, True):
            sent = {"model": model, **body, **({"stream": True} if stream and "stream" not in body else {})}
            resp = world.http.post(world.url + "/v1/responses", data=json.dumps(sent), timeout=60,
                                   headers={"Authorization": f"Bearer {t.key}", "Content-Type": "application/json"})
            assert resp.status_code < 500, (sent, resp.status_code, resp.text[:300])
            if resp.status_code >= 400:
                error = resp.json()["error"]
                assert isinstance(error["message"], str) and error["type"], sent
            elif not stream:
                assert resp.json()["status"] in ("completed", "incomplete"), sent
            else:
                assert "event: response." in resp.text and "event: error" not in resp.text, sent
    wait_held_zero(world, t)
    rows = world.usage(t.user_id)
    assert world.balance(t.user_id) == 100 - sum(Decimal(str(r["credits"])) for r in rows)
    assert world.verify()["ok"]


def test_concurrent_responses_on_a_small_balance_never_overdraw(world: World) -> None:
    import asyncio

    import aiohttp

    from tests.test_credits import BookWatcher

    model = world.model(prompt=20, completion=20)
    _, tag = world.channel([model], settings={"responses_api": "native"})
    prompt = openai_tokens.chat_prompt_tokens([{"role": "user", "content": "hello"}], model)

    def usage(body: dict[str, Any]) -> dict[str, Any]:
        # 50 output tokens, or fewer when chatkore capped the budget to what the balance pays for.
        output = min(50, body.get("max_output_tokens") or 50)
        return {"input_tokens": prompt, "output_tokens": output, "total_tokens": prompt + output}

    world.mock.always(tag, mock_responses.ok(usage=usage))
    per_call = Decimal(prompt + 50) * 20 / 1000
    initial = per_call * 15
    t = world.tenant(credits=float(initial))
    bodies = [{"model": model, "input": "hello", "max_output_tokens": 60, "stream": i % 2 == 1} for i in range(60)]

    async def hammer() -> list[tuple[int, str]]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=aiohttp.ClientTimeout(total=120),
                                         headers={"Authorization": f"Bearer {t.key}"}) as session:
            async def one(body: dict[str, Any]) -> tuple[int, str]:
                async with session.post(world.url + "/v1/responses", json=body) as resp:
                    return resp.status, await resp.text()

            return await asyncio.gather(*(one(b) for b in bodies))

    with BookWatcher(world.stack.database_url, t.user_id, int(initial * 1_000_000)) as watcher:
        answers = asyncio.run(hammer())
    statuses = [status for status, _ in answers]
    assert set(statuses) <= {200, 402}, set(statuses)
    assert all(json.loads(text)["error"]["code"] == "insufficient_quota" for status, text in answers if status == 402)
    streamed = [text for (status, text), body in zip(answers, bodies, strict=True) if status == 200 and body["stream"]]
    assert all("event: response.completed" in text for text in streamed)
    ok = statuses.count(200)
    hold_each = Decimal(prompt + 60) * 20 / 1000  # holds are larger than charges: concurrency matters
    assert ok >= int(initial / hold_each) and watcher.violations == [] and watcher.samples > 3
    wait_held_zero(world, t)
    rows = world.usage(t.user_id, limit=1000)
    assert len(rows) == ok and all(r["status"] == "complete" for r in rows)
    charges = [Decimal(str(r["credits"])) for r in rows]
    assert all(0 < c <= per_call for c in charges)
    assert sum(charges) == initial - world.balance(t.user_id) and world.balance(t.user_id) >= 0
    assert world.verify()["ok"]
