"""Issue 11's rules on every path that holds credits: the Responses API (native and translated) and
Anthropic's Messages API (native and translated) send the completion budget upstream always, and tell
the client by `x-chatkore-max-tokens` when the balance cut it, as chat completions do."""
from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.world import World

MAX_OUTPUT = 1000

# (API, channel kind): how to serve the model, where the budget goes upstream.
PATHS = [("responses", "native"), ("responses", "chat"), ("responses", "anthropic"),
         ("messages", "anthropic"), ("messages", "openai"), ("chat", "openai")]


def _served(world: World, api: str, kind: str, prompt: float, completion: float) -> tuple[str, str]:
    model = world.model(prompt=prompt, completion=completion, prefix="claude" if api == "messages" else "m")
    world.admin("PUT", f"/admin/v1/prices/{model}", {"prompt": prompt, "completion": completion,
                                                     "max_output": MAX_OUTPUT})
    settings: dict[str, Any] = {}
    if kind == "native":
        settings["settings"] = {"responses_api": "native"}
    elif kind == "anthropic":
        settings["type"] = "anthropic"
    _, tag = world.channel([model], **settings)
    return model, tag


def _budget_sent(world: World, tag: str, api: str, kind: str) -> int:
    """The completion budget the upstream received, by its own name for it."""
    sent = world.mock.received(tag)[-1]
    if kind == "native":
        assert sent.path == "responses"
        return sent.body["max_output_tokens"]
    if kind == "anthropic":
        assert sent.path == "messages"
        return sent.body["max_tokens"]
    assert sent.path == "chat/completions"
    return sent.body.get("max_completion_tokens") or sent.body["max_tokens"]


def _post(world: World, key: str, api: str, model: str, stream: bool, asked: int | None) -> requests.Response:
    if api == "responses":
        path, body = "/v1/responses", {"model": model, "input": "hello", "stream": stream}
        if asked is not None:
            body["max_output_tokens"] = asked
    elif api == "messages":
        path = "/v1/messages"
        body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "stream": stream,
                "max_tokens": asked or 4096}
    else:
        path, body = "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "hello"}],
                                              "stream": stream}
        if asked is not None:
            body["max_tokens"] = asked
    resp = requests.post(world.url + path, headers={"Authorization": f"Bearer {key}"}, json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("api, kind", PATHS, ids=[f"{a}-{k}" for a, k in PATHS])
def test_the_budget_goes_upstream_on_a_rich_balance(world: World, api: str, kind: str, stream: bool) -> None:
    """No budget from the client (Messages always names one, larger than the model's): the upstream
    is sent the model's max_output all the same, and the client is not told of a cut that did not happen."""
    model, tag = _served(world, api, kind, prompt=1, completion=1)
    t = world.tenant(credits=100)
    resp = _post(world, t.key, api, model, stream, None)
    assert _budget_sent(world, tag, api, kind) == MAX_OUTPUT
    assert "x-chatkore-max-tokens" not in resp.headers
    # A client's smaller value passes unchanged.
    resp = _post(world, t.key, api, model, stream, 20)
    assert _budget_sent(world, tag, api, kind) == 20
    assert "x-chatkore-max-tokens" not in resp.headers
    assert world.held(t.user_id) == 0 and world.verify()["ok"]


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("api, kind", PATHS, ids=[f"{a}-{k}" for a, k in PATHS])
def test_a_budget_cut_by_the_balance_is_told_on_every_path(world: World, api: str, kind: str, stream: bool) -> None:
    model, tag = _served(world, api, kind, prompt=1000, completion=1000)  # a credit a token
    t = world.tenant(credits=60)
    resp = _post(world, t.key, api, model, stream, 500)
    budget = _budget_sent(world, tag, api, kind)
    assert 0 < budget < 60  # what the balance pays for after the prompt, not the 500 asked for
    assert resp.headers.get("x-chatkore-max-tokens") == str(budget)
    [row] = world.usage(t.user_id)
    assert row["status"] == "complete"
    assert world.held(t.user_id) == 0 and world.balance(t.user_id) >= 0
    assert world.verify()["ok"]
