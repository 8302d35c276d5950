"""POST /v1/responses through the official SDK: native on a Responses upstream, translated on chat and Anthropic ones."""
from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import openai
import pydantic
import pytest
from aiohttp import web

from tests import mock_responses
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
    assert reply.usage is not None and reply.usage.input_tokens > 0 and reply.usage.output_tokens > 0
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
    model, _ = _served(world, kind)
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
    _assert_billed_exactly(world, t, final.usage, Decimal(100))
    assert t.client.responses.retrieve(final.id).output_text == text
