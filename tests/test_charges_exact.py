"""Charges to the micro-credit where nothing else pins them: legacy /v1/completions, n > 1
choices, and a price change (new calls pay the new price within a second; a call in flight
when it changes pays the price its hold was placed at). Expected token counts come from
tiktoken (tests/openai_tokens.py), never from chatkore's own counter."""
from __future__ import annotations

import json
from decimal import Decimal

import pytest
import requests

from tests import mock_upstream as up
from tests import openai_tokens
from tests.world import Tenant, World
from tools.stack import wait_until

MSG = [{"role": "user", "content": "Say this is a test!"}]
PROMPT = "Say this is a test"
PROMPT_PRICE, COMPLETION_PRICE = 1.5, 2.0  # credits per 1,000 tokens (World.model's defaults)


def _price(prompt_tokens: int, completion_tokens: int, prompt_price: float = PROMPT_PRICE,
           completion_price: float = COMPLETION_PRICE) -> Decimal:
    """DESIGN §6: tokens × price per 1,000, in micro-credits, rounded up."""
    micro = prompt_tokens * round(prompt_price * 1e6) + completion_tokens * round(completion_price * 1e6)
    return Decimal(-(-micro // 1000)) / 1_000_000


def _call(world: World, t: Tenant, path: str, body: dict, stream: bool) -> tuple[str, list[str]]:
    """One call; returns its request id and the text of each choice, in index order."""
    resp = requests.post(world.url + path, headers={"Authorization": f"Bearer {t.key}"}, timeout=60,
                         json={**body, "stream": stream})
    assert resp.status_code == 200, resp.text
    texts: dict[int, str] = {}
    if stream:
        events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        for event in events[:-1]:
            for choice in json.loads(event)["choices"]:
                piece = choice["delta"].get("content") if "delta" in choice else choice.get("text")
                texts[choice["index"]] = texts.get(choice["index"], "") + (piece or "")
    else:
        for choice in resp.json()["choices"]:
            texts[choice["index"]] = choice["message"]["content"] if "message" in choice else choice["text"]
    return resp.headers["x-request-id"], [texts[i] for i in sorted(texts)]


def _row(world: World, t: Tenant, request_id: str) -> dict:
    wait_until(lambda: world.held(t.user_id) == 0, 10, "the hold to close")
    [row] = [r for r in world.usage(t.user_id) if r["request_id"] == request_id]
    return row


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_completions_are_charged_for_the_prompt_and_the_text_exactly(world: World, stream: bool) -> None:
    model, tag = world.served_model(prefix="gpt-3.5-turbo-instruct")
    world.mock.always(tag, up.ok(usage=False))  # no usage from the upstream: chatkore counts
    t = world.tenant()
    rid, [text] = _call(world, t, "/v1/completions", {"model": model, "prompt": PROMPT, "max_tokens": 30}, stream)
    row = _row(world, t, rid)
    # A completions prompt is its text alone: no chat framing.
    prompt_tokens = openai_tokens.text_tokens(PROMPT, model)
    completion_tokens = openai_tokens.text_tokens(text, model)
    assert text and (row["prompt_tokens"], row["completion_tokens"]) == (prompt_tokens, completion_tokens)
    assert row["usage_source"] == "counted" and row["status"] == "complete"
    assert Decimal(str(row["credits"])) == _price(prompt_tokens, completion_tokens)
    assert world.balance(t.user_id) == 100 - _price(prompt_tokens, completion_tokens)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_n_choices_pay_for_every_choice_and_the_prompt_once(world: World, path: str, stream: bool) -> None:
    model, tag = world.served_model()
    world.mock.always(tag, up.ok(usage=False))
    t = world.tenant()
    body = {"model": model, "n": 3, "max_tokens": 20}
    body |= {"messages": MSG} if path.endswith("chat/completions") else {"prompt": PROMPT}
    rid, texts = _call(world, t, path, body, stream)
    assert len(texts) == 3 and all(texts)
    row = _row(world, t, rid)
    prompt_tokens = (openai_tokens.chat_prompt_tokens(MSG, model) if "messages" in body
                     else openai_tokens.text_tokens(PROMPT, model))
    completion_tokens = sum(openai_tokens.text_tokens(text, model) for text in texts)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt_tokens, completion_tokens)
    assert Decimal(str(row["credits"])) == _price(prompt_tokens, completion_tokens)
    assert world.balance(t.user_id) == 100 - _price(prompt_tokens, completion_tokens)


def test_n_choices_with_the_upstreams_usage_pay_exactly_that(world: World) -> None:
    model, tag = world.served_model()
    reported = {"prompt_tokens": 13, "completion_tokens": 3 * 17, "total_tokens": 13 + 51}
    world.mock.always(tag, up.ok(usage_override=reported))
    t = world.tenant()
    reply = t.client.chat.completions.create(model=model, messages=MSG, n=3, max_tokens=20)
    assert len(reply.choices) == 3 and reply.usage.completion_tokens == 51
    [row] = world.usage(t.user_id)
    assert (row["prompt_tokens"], row["completion_tokens"], row["usage_source"]) == (13, 51, "upstream")
    assert Decimal(str(row["credits"])) == _price(13, 51) == Decimal("0.1215")
    assert world.balance(t.user_id) == 100 - _price(13, 51)


def test_a_price_change_reaches_new_calls_and_spares_the_call_in_flight(world: World) -> None:
    model, tag = world.served_model()
    usage = {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}
    old, new = _price(1000, 500), _price(1000, 500, 3, 5)
    assert (old, new) == (Decimal("2.5"), Decimal("5.5"))
    t = world.tenant()
    world.mock.always(tag, up.ok(usage_override=usage))
    assert t.client.chat.completions.create(model=model, messages=MSG).usage.prompt_tokens == 1000

    # A call whose hold is placed at the old price, held upstream until the price has changed.
    in_flight = world.mock.gate()
    world.mock.script(tag, up.ok(usage_override=usage, gate=in_flight))
    with requests.Session() as session:
        pending = _Background(lambda: session.post(
            world.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {t.key}"}, timeout=60,
            json={"model": model, "messages": MSG}))
        wait_until(lambda: in_flight.arrived == 1, 10, "the first call to be upstream")
        world.price(model, 3, 5)
        # New calls pay the new price once it has reached billing (within a second, README).
        charges: list[Decimal] = []

        def charged_new() -> bool:
            t.client.chat.completions.create(model=model, messages=MSG)
            charges.append(Decimal(str(world.usage(t.user_id, limit=1)[0]["credits"])))
            return charges[-1] == new

        wait_until(charged_new, 5, "a call at the new price")
        assert set(charges[:-1]) <= {old}, charges
        t.client.chat.completions.create(model=model, messages=MSG)
        assert Decimal(str(world.usage(t.user_id, limit=1)[0]["credits"])) == new  # and stays there
        assert in_flight.passed == 0
        in_flight.open()
        answer = pending.result()
    assert answer.status_code == 200
    row = _row(world, t, answer.headers["x-request-id"])
    assert Decimal(str(row["credits"])) == old  # the price its hold was placed at
    paid = [Decimal(str(r["credits"])) for r in world.usage(t.user_id)]
    assert sorted(paid) == sorted([old, old, *charges, new])
    assert world.balance(t.user_id) == 100 - sum(paid)
    assert world.verify()["ok"]


class _Background:
    """A call on a thread of its own, its result (or exception) collected later."""

    def __init__(self, call) -> None:  # noqa: ANN001 - a closure
        import concurrent.futures

        self._pool = concurrent.futures.ThreadPoolExecutor(1)
        self._future = self._pool.submit(call)

    def result(self, timeout_s: float = 60) -> requests.Response:
        try:
            return self._future.result(timeout_s)
        finally:
            self._pool.shutdown()
