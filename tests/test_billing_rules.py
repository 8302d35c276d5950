"""Every token the upstream bills is paid for (issue 11): cache and reasoning prices, usage
past the hold, abandoned calls, budgets, images, cost multipliers, live holds."""
from __future__ import annotations

from decimal import Decimal

import openai
import pytest
import requests

from tests import mock_upstream as up
from tests import openai_tokens, scrape
from tests.world import World
from tools.stack import wait_until

MSG = [{"role": "user", "content": "hello"}]


def _row(world: World, user_id: int) -> dict:
    rows = world.usage(user_id)
    assert len(rows) == 1, rows
    return rows[0]


def test_price_rows_carry_cache_prices_limits_and_multipliers(world: World) -> None:
    model = world.model(prompt=2, completion=8)
    got = world.admin("PUT", f"/admin/v1/prices/{model}",
                      {"prompt": 2, "completion": 8, "cached_prompt": 0.5, "context": 32000, "max_output": 1000,
                       "tiers": {"priority": 2, "flex": 0.5}, "features": {"web_search": 4}})
    assert got["cached_prompt"] == 0.5 and got["cache_write"] == 2  # cache writes follow the prompt price
    assert (got["context"], got["max_output"]) == (32000, 1000)
    assert got["tiers"] == {"priority": 2.0, "flex": 0.5} and got["features"] == {"web_search": 4.0}
    # A PUT of the two prices alone keeps the rest.
    again = world.admin("PUT", f"/admin/v1/prices/{model}", {"prompt": 3, "completion": 8})
    assert again["cached_prompt"] == 0.5 and again["cache_write"] == 3 and again["max_output"] == 1000
    assert again["tiers"] == {"priority": 2.0, "flex": 0.5}
    listed = {p["model"]: p for p in world.admin("GET", "/admin/v1/prices")["data"]}
    assert listed[model] == again
    # A new model gets conservative limits the operator can see.
    fresh = world.admin("GET", "/admin/v1/prices")["data"]
    assert all(p["max_output"] <= 16384 for p in fresh)


def test_bad_price_fields_are_refused_and_change_nothing(world: World) -> None:
    model = world.model(prompt=2, completion=8)
    for body, param in [({"cached_prompt": -1}, "cached_prompt"), ({"tiers": {"priority": 0}}, "tiers"),
                        ({"tiers": ["priority"]}, "tiers"), ({"features": {"teleport": 2}}, "features"),
                        ({"max_output": -5}, "max_output"), ({"context": "big"}, "context")]:
        resp = world.http.put(world.url + f"/admin/v1/prices/{model}", json={"prompt": 9, "completion": 9, **body},
                              timeout=30)
        assert resp.status_code == 400, (body, resp.text)
        assert resp.json()["error"]["param"] == param
    listed = {p["model"]: p for p in world.admin("GET", "/admin/v1/prices")["data"]}
    assert listed[model]["prompt"] == 2


def test_cached_and_reasoning_tokens_are_charged_at_their_own_prices(world: World) -> None:
    model, tag = world.served_model(prompt=2, completion=8)
    world.admin("PUT", f"/admin/v1/prices/{model}", {"prompt": 2, "completion": 8, "cached_prompt": 0.5})
    world.mock.always(tag, up.ok(usage_override={
        "prompt_tokens": 1000, "completion_tokens": 300, "total_tokens": 1300,
        "prompt_tokens_details": {"cached_tokens": 600}, "completion_tokens_details": {"reasoning_tokens": 200}}))
    t = world.tenant(credits=100)
    reply = t.client.chat.completions.create(model=model, messages=MSG)
    assert reply.usage.prompt_tokens_details.cached_tokens == 600
    row = _row(world, t.user_id)
    # 400 x 2 + 600 x 0.5 + 300 x 8, per 1,000
    expected = Decimal("0.8") + Decimal("0.3") + Decimal("2.4")
    assert Decimal(str(row["credits"])) == expected
    assert (row["cached_prompt_tokens"], row["reasoning_tokens"], row["unpaid_credits"]) == (600, 200, 0)
    assert world.balance(t.user_id) == 100 - expected
    assert world.verify()["ok"]


def test_usage_past_the_hold_is_charged_from_a_rich_balance(world: World) -> None:
    model, tag = world.served_model(prompt=1, completion=1)
    # The upstream ignores the budget it was sent and reports far more than the hold covers.
    world.mock.always(tag, up.ok(usage_override={"prompt_tokens": 10, "completion_tokens": 5000,
                                                 "total_tokens": 5010}))
    t = world.tenant(credits=100)
    t.client.chat.completions.create(model=model, messages=MSG, max_tokens=10)
    row = _row(world, t.user_id)
    assert Decimal(str(row["credits"])) == Decimal("5.01") and row["unpaid_credits"] == 0
    assert world.balance(t.user_id) == Decimal("94.99") and world.held(t.user_id) == 0
    assert world.verify()["ok"]


def test_usage_past_the_hold_on_a_poor_balance_stops_at_zero_and_records_the_rest(world: World) -> None:
    model, tag = world.served_model(prompt=1, completion=1)
    world.mock.always(tag, up.ok(usage_override={"prompt_tokens": 10, "completion_tokens": 100_000,
                                                 "total_tokens": 100_010}))
    t = world.tenant(credits=1)
    t.client.chat.completions.create(model=model, messages=MSG, max_tokens=10)
    row = _row(world, t.user_id)
    assert Decimal(str(row["credits"])) == 1
    assert Decimal(str(row["unpaid_credits"])) == Decimal("99.01")
    assert world.balance(t.user_id) == 0 and world.held(t.user_id) == 0
    assert world.verify()["ok"]


def _prompt(model: str, messages: list[dict]) -> int:
    return openai_tokens.chat_prompt_tokens(messages, model)


@pytest.mark.parametrize("stream", [True, False], ids=["stream-before-first-chunk", "unary"])
def test_a_call_abandoned_before_its_answer_pays_the_prompt(world: World, stream: bool) -> None:
    model, tag = world.served_model(prompt=1000, completion=1000)  # a credit a token
    held = world.mock.gate()  # the first byte (or the answer) comes only after the client gave up
    world.mock.always(tag, up.ok(pieces=3, gate=held))
    t = world.tenant(credits=100)
    messages = [{"role": "user", "content": "a long prompt, read and billed by the upstream " * 3}]
    try:
        with pytest.raises(openai.APITimeoutError):
            t.client.with_options(timeout=1.0).chat.completions.create(model=model, messages=messages,
                                                                       stream=stream)
        assert (held.arrived, held.passed) == (1, 0)  # the upstream had not said a word
        wait_until(lambda: world.usage(t.user_id), 20, "the usage row of the abandoned call")
    finally:
        held.open()
    assert len(world.mock.received(tag)) == 1  # the upstream had the request
    row = _row(world, t.user_id)
    prompt = _prompt(model, messages)
    assert row["status"] == "client_gone" and row["prompt_tokens"] == prompt
    assert row["completion_tokens"] == 0 and Decimal(str(row["credits"])) == prompt
    assert world.balance(t.user_id) == 100 - prompt and world.held(t.user_id) == 0
    assert world.verify()["ok"]


def test_upstream_failure_is_free_for_the_client_and_counted_for_the_operator(world: World) -> None:
    model, tag = world.served_model(prompt=1, completion=1)
    world.mock.always(tag, up.fail(500))
    t = world.tenant(credits=100)
    before = scrape.value(scrape.scrape(world.stack, "inference"), "chatkore_upstream_unbilled_tokens_total",
                          reason="server")
    with pytest.raises(openai.InternalServerError):
        t.client.chat.completions.create(model=model, messages=MSG)
    row = _row(world, t.user_id)
    assert row["status"] == "upstream_error" and row["credits"] == 0
    assert world.balance(t.user_id) == 100
    stats = [s for s in world.admin("GET", "/admin/v1/stats?hours=1&bucket=3600")["data"] if s["model"] == model]
    assert sum(s["unbilled_tokens"] for s in stats) == _prompt(model, MSG)
    after = scrape.value(scrape.scrape(world.stack, "inference"), "chatkore_upstream_unbilled_tokens_total",
                         reason="server")
    assert after - before == _prompt(model, MSG)


def test_the_budget_always_goes_upstream_never_above_the_model_maximum(world: World) -> None:
    model, tag = world.served_model(prompt=1, completion=1)
    world.admin("PUT", f"/admin/v1/prices/{model}", {"prompt": 1, "completion": 1, "max_output": 1000})
    t = world.tenant(credits=100)
    raw = t.client.chat.completions.with_raw_response.create(model=model, messages=MSG)
    assert world.mock.received(tag)[-1].body["max_tokens"] == 1000  # none asked: the model's max_output
    assert "x-chatkore-max-tokens" not in raw.headers  # the balance did not cut it
    t.client.chat.completions.create(model=model, messages=MSG, max_completion_tokens=50_000)
    sent = world.mock.received(tag)[-1].body
    assert sent["max_completion_tokens"] == 1000 and "max_tokens" not in sent
    t.client.chat.completions.create(model=model, messages=MSG, max_tokens=7)  # a smaller value passes unchanged
    assert world.mock.received(tag)[-1].body["max_tokens"] == 7
    t.client.completions.create(model=model, prompt="Say this is a test")
    assert world.mock.received(tag)[-1].body["max_tokens"] == 16  # OpenAI's default for /v1/completions


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_a_budget_cut_by_the_balance_is_told_to_the_client(world: World, stream: bool) -> None:
    model, tag = world.served_model(prompt=1000, completion=1000)  # a credit a token
    t = world.tenant(credits=30)
    resp = requests.post(world.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {t.key}"},
                         json={"model": model, "messages": MSG, "stream": stream}, timeout=60)
    assert resp.status_code == 200
    budget = world.mock.received(tag)[-1].body["max_tokens"]
    assert budget == 30 - _prompt(model, MSG)
    assert resp.headers["x-chatkore-max-tokens"] == str(budget)
    wait_until(lambda: world.held(t.user_id) == 0, 10, "the hold to settle")
    assert world.verify()["ok"]


@pytest.mark.parametrize("field, value, param", [
    ("service_tier", "priority", "service_tier"),
    ("modalities", ["text", "audio"], "modalities"),
    ("web_search_options", {}, "web_search_options"),
    ("prediction", {"type": "content", "content": "x"}, "prediction"),
])
def test_an_unpriced_cost_multiplier_is_refused_before_any_hold(world: World, field: str, value: object,
                                                                param: str) -> None:
    model, tag = world.served_model(prompt=1, completion=1)
    t = world.tenant(credits=10)
    resp = requests.post(world.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {t.key}"},
                         json={"model": model, "messages": MSG, field: value}, timeout=60)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert world.mock.received(tag) == [] and world.usage(t.user_id) == []
    assert world.balance(t.user_id) == 10 and world.held(t.user_id) == 0


def test_a_priced_tier_carries_its_multiplier(world: World) -> None:
    model, tag = world.served_model(prompt=1, completion=1)
    world.admin("PUT", f"/admin/v1/prices/{model}", {"prompt": 1, "completion": 1, "tiers": {"priority": 2.5}})
    world.mock.always(tag, up.ok(usage_override={"prompt_tokens": 100, "completion_tokens": 300,
                                                 "total_tokens": 400}))
    t = world.tenant(credits=10)
    t.client.chat.completions.create(model=model, messages=MSG, service_tier="priority")
    assert world.mock.received(tag)[-1].body["service_tier"] == "priority"  # passed through
    t.client.chat.completions.create(model=model, messages=MSG, service_tier="default")
    charges = sorted(Decimal(str(r["credits"])) for r in world.usage(t.user_id))
    assert charges == [Decimal("0.4"), Decimal("1")]  # 400 tokens at 1, then at 2.5
    assert world.verify()["ok"]


def test_images_are_counted_by_size_and_detail_and_urls_hold_the_worst_case(world: World) -> None:
    from tests.unit.test_images import part, png

    model, tag = world.served_model(prompt=1, completion=1, prefix="gpt-4o")
    world.mock.always(tag, up.ok(usage=False, content="a cat"))  # no usage: the prompt is what chatkore counts
    t = world.tenant(credits=100)
    text = {"type": "text", "text": "what is this?"}
    plain = _prompt(model, [{"role": "user", "content": [text]}])
    for detail in ("high", "low"):
        t.client.chat.completions.create(model=model, messages=[
            {"role": "user", "content": [text, part(png(2048, 2048), detail)]}])
    rows = sorted(world.usage(t.user_id), key=lambda r: r["prompt_tokens"])
    assert [r["prompt_tokens"] for r in rows] == [plain + 85, plain + 765]
    # An https image is never fetched: the hold covers the worst case, the upstream's usage settles it.
    world.mock.always(tag, up.ok(usage_override={"prompt_tokens": 300, "completion_tokens": 2, "total_tokens": 302}))
    t2 = world.tenant(credits=100)
    t2.client.chat.completions.create(model=model, messages=[
        {"role": "user", "content": [text, part("https://example.invalid/cat.png", "high")]}])
    [row] = world.usage(t2.user_id)
    assert row["prompt_tokens"] == 300 and row["usage_source"] == "upstream"
    assert world.verify()["ok"]
