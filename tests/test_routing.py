"""Routing like a production relay: priority, failover before the first byte, billed once,
cool-down and a probe back in, weights, per-channel concurrency."""
from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
import requests

from tests import mock_upstream as up
from tests import openai_tokens
from tests.world import Tenant, World
from tools.stack import wait_until

MSG = [{"role": "user", "content": "route me"}]


def _chat(world: World, t: Tenant, model: str, stream: bool = False) -> requests.Response:
    resp = requests.post(world.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {t.key}"},
                         json={"model": model, "messages": MSG, "stream": stream, "max_tokens": 20}, timeout=30)
    assert resp.status_code == 200, resp.text
    if stream:
        assert resp.text.endswith("data: [DONE]\n\n") and '"error"' not in resp.text
    else:
        assert resp.json()["choices"][0]["message"]["content"].startswith("This is a test")
    return resp


def _health(world: World, channel_id: int) -> str:
    return next(c["health"] for c in world.admin("GET", "/admin/v1/channels")["data"] if c["id"] == channel_id)


def _billed_once(world: World, t: Tenant, resp: requests.Response, channel_id: int, before: Decimal) -> Decimal:
    """The call has exactly one usage row, complete, from `channel_id`, and the balance moved by it
    alone: MSG and the mock's answer to it, at World.model's prices (1.5 and 2 credits per 1,000)."""
    rid = resp.headers["x-request-id"]
    rows = wait_until(lambda: [r for r in world.usage(t.user_id) if r["request_id"] == rid], 5, "the usage row")
    assert len(rows) == 1 and rows[0]["status"] == "complete" and rows[0]["channel_id"] == channel_id, rows
    model = rows[0]["model"]
    prompt = openai_tokens.chat_prompt_tokens(MSG, model)
    completion = openai_tokens.text_tokens("This is a test! You said: route me", model)  # under max_tokens=20
    assert (rows[0]["prompt_tokens"], rows[0]["completion_tokens"]) == (prompt, completion)
    after = world.balance(t.user_id)
    assert before - after == Decimal(str(rows[0]["credits"])) == (prompt * Decimal("1.5") + completion * 2) / 1000
    assert world.held(t.user_id) == 0
    return after


def test_priority_failover_cooldown_and_probe(world: World) -> None:
    t = world.tenant()
    model = world.model()
    first_id, first = world.channel([model], priority=10)
    second_id, second = world.channel([model], priority=0)
    for stream in (False, True, False):
        _chat(world, t, model, stream)
    assert (len(world.mock.received(first)), len(world.mock.received(second))) == (3, 0)

    world.mock.always(first, up.fail(500))
    balance = world.balance(t.user_id)
    for stream in (False, True):  # CHATKORE_CHANNEL_FAILURES=2 in tests
        resp = _chat(world, t, model, stream)
        balance = _billed_once(world, t, resp, second_id, balance)
    assert (len(world.mock.received(first)), len(world.mock.received(second))) == (5, 2)
    assert _health(world, first_id) == "cooling"
    _chat(world, t, model)  # straight to the second: the cooling channel is not called
    assert (len(world.mock.received(first)), len(world.mock.received(second))) == (5, 3)

    world.mock.always(first, up.ok())
    # After the cool-down (2 s in tests) one call probes the first channel, and it takes traffic again.
    wait_until(lambda: _chat(world, t, model) and len(world.mock.received(first)) == 6, 10, "the probe")
    assert _health(world, first_id) == "healthy"
    _chat(world, t, model, stream=True)
    assert len(world.mock.received(first)) == 7


def test_failed_probe_cools_again_at_once(world: World) -> None:
    t = world.tenant()
    model = world.model()
    first_id, first = world.channel([model], priority=10)
    world.channel([model], priority=0)
    world.mock.always(first, up.fail(503))
    _chat(world, t, model)
    _chat(world, t, model)
    assert _health(world, first_id) == "cooling"
    wait_until(lambda: _chat(world, t, model) and len(world.mock.received(first)) == 3, 10, "the probe")
    assert _health(world, first_id) == "cooling"  # one failed probe is enough to cool down again
    _chat(world, t, model)
    assert len(world.mock.received(first)) == 3


@pytest.mark.parametrize("stream", [False, True])
def test_hang_past_channel_timeout_fails_over(world: World, stream: bool) -> None:
    t = world.tenant()
    model = world.model()
    _, slow = world.channel([model], priority=10, settings={"timeout_s": 0.5})
    fast_id, fast = world.channel([model], priority=0)
    held = world.mock.gate()  # the slow channel answers only when the test says so: after the failover
    world.mock.always(slow, up.ok(gate=held))
    balance = world.balance(t.user_id)
    try:
        resp = _chat(world, t, model, stream)
        # Answered by the fast channel while the slow one's call was still held at the gate.
        assert (held.arrived, held.passed) == (1, 0)
    finally:
        held.open()
    _billed_once(world, t, resp, fast_id, balance)
    assert len(world.mock.received(slow)) == 1 and len(world.mock.received(fast)) == 1


def test_weights_split_three_to_one(world: World) -> None:
    t = world.tenant(credits=1000)
    model = world.model(prompt=0.001, completion=0.001)
    _, heavy = world.channel([model], weight=3)
    _, light = world.channel([model], weight=1)
    session = requests.Session()

    def one(_: int) -> int:
        resp = session.post(world.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {t.key}"},
                            json={"model": model, "messages": MSG, "max_tokens": 5}, timeout=30)
        return resp.status_code

    with ThreadPoolExecutor(8) as pool:
        codes = Counter(pool.map(one, range(400)))
    assert codes == {200: 400}
    counts = len(world.mock.received(heavy)), len(world.mock.received(light))
    assert sum(counts) == 400
    # Dealt in turn by weight: exactly 300:100 on one replica; a little room for calls
    # planned while the second channel was still loading.
    assert 0.73 <= counts[0] / 400 <= 0.77, counts


def test_max_concurrency_spills_to_the_next_channel(world: World) -> None:
    t = world.tenant()
    model = world.model()
    _, busy = world.channel([model], priority=10, settings={"max_concurrency": 1})
    _, spare = world.channel([model], priority=0)
    held = world.mock.gate()  # the first call stays in flight until the second is answered
    world.mock.script(busy, up.ok(gate=held))
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(_chat, world, t, model)
        try:
            wait_until(lambda: held.arrived == 1, 10, "the first call to be in flight")
            _chat(world, t, model)  # the busy channel is at its limit: this one goes to the spare
            assert not slow.done() and held.passed == 0
        finally:
            held.open()
        slow.result()
    assert (len(world.mock.received(busy)), len(world.mock.received(spare))) == (1, 1)
