"""Issue 11's rules on every path that holds credits: the Responses API (native and translated) and
Anthropic's Messages API (native and translated) send the completion budget upstream always, and tell
the client by `x-chatkore-max-tokens` when the balance cut it, as chat completions do; http(s) images
are held at the worst case and settled to the upstream's usage."""
from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
import requests

from services.inference import messages as dialect
from tests import mock_anthropic, mock_media, openai_tokens, scrape
from tests import mock_upstream as up
from tests.world import World
from tools.stack import wait_until

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


def _gated(gate: threading.Event, then: up.Behavior) -> up.Behavior:
    """Answer as `then` once the test opens the gate (the call stays in flight until then)."""

    async def behave(request: Any, body: dict[str, Any], path: str) -> Any:
        await asyncio.to_thread(gate.wait, 60)
        return await then(request, body, path)

    return behave


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_https_images_are_held_at_the_worst_case_and_settled_to_the_upstream_usage(world: World,
                                                                                    stream: bool) -> None:
    """An http(s) image is never fetched: the hold counts it at the worst case for its detail
    (gpt-4o: 85 + 170 x 8 tiles at high or auto, 85 at low), and the charge is the upstream's usage."""
    model = world.model(prompt=10, completion=20, prefix="gpt-4o")  # 0.01 and 0.02 credits a token
    world.admin("PUT", f"/admin/v1/prices/{model}", {"prompt": 10, "completion": 20, "max_output": 100,
                                                     "context": 128000})
    _, tag = world.channel([model])
    gate = threading.Event()
    world.mock.always(tag, _gated(gate, up.ok(usage_override={"prompt_tokens": 1234, "completion_tokens": 56,
                                                              "total_tokens": 1290})))
    t = world.tenant(credits=100)
    text = {"type": "text", "text": "what are these?"}
    urls = ["https://example.invalid/cat.png", "http://example.invalid/dog.jpg"]
    content = [text, {"type": "image_url", "image_url": {"url": urls[0], "detail": "high"}},
               {"type": "image_url", "image_url": {"url": urls[1], "detail": "low"}}]
    plain = openai_tokens.chat_prompt_tokens([{"role": "user", "content": [text]}], model)
    worst_prompt = plain + (85 + 170 * 8) + 85

    def call() -> None:
        reply = t.client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                                 stream=stream, **({"stream_options": {"include_usage": True}}
                                                                   if stream else {}))
        if stream:
            list(reply)

    with ThreadPoolExecutor(1) as pool:
        done = pool.submit(call)
        try:
            wait_until(lambda: world.mock.received(tag) and world.held(t.user_id) > 0, 30, "the call to be held")
            # The worst case for the prompt, and the model's 100 output tokens.
            assert world.held(t.user_id) == Decimal(worst_prompt) / 100 + Decimal(100) / 50
            assert world.balance(t.user_id) == 100 - world.held(t.user_id)
            sent = world.mock.received(tag)[-1].body["messages"][0]["content"]
            assert [p["image_url"]["url"] for p in sent[1:]] == urls  # passed on, never fetched
        finally:
            gate.set()
        done.result(60)
    wait_until(lambda: world.held(t.user_id) == 0, 20, "the hold to settle")
    [row] = world.usage(t.user_id)
    assert (row["prompt_tokens"], row["completion_tokens"], row["usage_source"]) == (1234, 56, "upstream")
    charge = Decimal("12.34") + Decimal("1.12")  # 1,234 x 0.01 + 56 x 0.02
    assert Decimal(str(row["credits"])) == charge and row["status"] == "complete"
    assert world.balance(t.user_id) == 100 - charge
    assert world.verify()["ok"]


def _unbilled(world: World, model: str) -> int:
    stats = world.admin("GET", "/admin/v1/stats?hours=1&bucket=3600")["data"]
    return sum(s["unbilled_tokens"] for s in stats if s["model"] == model)


def _unbilled_metric(world: World) -> float:
    return scrape.value(scrape.scrape(world.stack, "inference"), "chatkore_upstream_unbilled_tokens_total",
                        reason="server")


@pytest.mark.parametrize("case", ["messages-native", "messages-translated", "chat"])
def test_a_stream_the_upstream_breaks_counts_what_no_one_paid_as_unbilled(world: World, case: str) -> None:
    """The upstream opens a stream, then breaks it. The client pays what reached it (nothing when no
    output did); the prompt and output the upstream is known to have processed past that are counted
    for the operator (usage stats, chatkore_upstream_unbilled_tokens_total), not dropped."""
    body: dict[str, Any] = {"max_tokens": 200, "stream": True,
                            "messages": [{"role": "user", "content": "tell me a long story about a lighthouse"}]}
    if case == "messages-native":
        model, tag = _served(world, "messages", "anthropic", prompt=1, completion=1)
        world.mock.always(tag, mock_anthropic.ok(cut_after=2))  # message_start and ping, then an error event
        path = "/v1/messages"
        # What Anthropic's message_start said it had: the prompt, and one output token.
        known = mock_anthropic.answer({**body, "model": model})["usage"]["input_tokens"] + 1
    elif case == "messages-translated":
        model, tag = _served(world, "messages", "openai", prompt=1, completion=1)
        world.mock.always(tag, up.stream_then(1, "error"))  # the role chunk, then an error event
        path = "/v1/messages"
        known = dialect.count_prompt({**body, "model": model}, model)  # the prompt it read; no output
    else:
        model, tag = _served(world, "chat", "openai", prompt=1, completion=1)
        world.mock.always(tag, up.stream_then(6, "error"))
        path, known = "/v1/chat/completions", 0  # all the upstream sent reached the client, which pays it
        body.pop("max_tokens")
    t = world.tenant(credits=100)
    before = _unbilled_metric(world)
    with requests.post(world.url + path, headers={"Authorization": f"Bearer {t.key}"}, json={**body, "model": model},
                       timeout=60, stream=True) as resp:
        assert resp.status_code == 200
        lines = [line for line in resp.iter_lines(decode_unicode=True) if line]
    assert any("error" in line for line in lines[-3:]), lines[-3:]  # told in-band
    wait_until(lambda: world.usage(t.user_id), 20, "the usage row")
    [row] = world.usage(t.user_id)
    assert row["status"] == "upstream_error"
    if case == "chat":
        # The prompt sent, and what reached the client: the role chunk and five pieces of the answer.
        chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
        delivered = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
        answer = "This is a test! You said: tell me a long story about a lighthouse"
        assert delivered == answer[:5 * -(-len(answer) // 20)]
        assert row["prompt_tokens"] == openai_tokens.chat_prompt_tokens(body["messages"], model)
        assert row["completion_tokens"] == openai_tokens.text_tokens(delivered, model)
        paid = Decimal(row["prompt_tokens"] + row["completion_tokens"]) / 1000
        assert Decimal(str(row["credits"])) == paid
    else:
        assert (row["prompt_tokens"], row["completion_tokens"], row["credits"]) == (0, 0, 0)
        paid = Decimal(0)
        assert known > 0
    assert _unbilled(world, model) == known
    assert _unbilled_metric(world) - before == known
    assert world.balance(t.user_id) == 100 - paid and world.held(t.user_id) == 0
    assert world.verify()["ok"]


def test_a_custom_tool_call_read_but_never_sent_on_is_counted_unbilled_when_the_stream_breaks(world: World) -> None:
    """Over a chat upstream, a Responses custom tool call is announced whole when the upstream is done;
    an upstream that breaks the stream mid-call has sent its words to chatkore, not to the client: the
    client pays what reached it, the call's tokens are counted for the operator."""
    model, tag = _served(world, "responses", "chat", prompt=1, completion=1)
    arguments = json.dumps({"input": "*** Begin Patch\n*** Update File: lighthouse.py\n-old = 1\n+new = 2\n"})

    def chunk(delta: dict[str, Any]) -> bytes:
        obj = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    stream = (chunk({"role": "assistant", "content": ""})
              + chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                       "function": {"name": "apply_patch", "arguments": ""}}]})
              + chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]})
              + b'data: {"error": {"message": "scripted mid-stream error", "type": "server_error"}}\n\n')
    world.mock.always(tag, up.raw(200, stream, "text/event-stream"))
    t = world.tenant(credits=100)
    before = _unbilled_metric(world)
    body = {"model": model, "stream": True, "input": "change old to new in lighthouse.py",
            "tools": [{"type": "custom", "name": "apply_patch", "description": "Apply a patch to files."}]}
    with requests.post(world.url + "/v1/responses", headers={"Authorization": f"Bearer {t.key}"}, json=body,
                       timeout=60, stream=True) as resp:
        assert resp.status_code == 200
        events = [line for line in resp.iter_lines(decode_unicode=True) if line.startswith("event: ")]
    assert events[0] == "event: response.created" and events[-1] == "event: error"
    assert not any("custom_tool_call" in e or "output_item" in e for e in events)  # nothing of the call got out
    wait_until(lambda: world.usage(t.user_id), 20, "the usage row")
    [row] = world.usage(t.user_id)
    assert row["status"] == "upstream_error" and row["completion_tokens"] == 0 and row["prompt_tokens"] > 0
    assert Decimal(str(row["credits"])) == Decimal(row["prompt_tokens"]) / 1000  # the prompt, which it was sent
    held = openai_tokens.text_tokens("apply_patch" + arguments, model)
    assert _unbilled(world, model) == held
    assert _unbilled_metric(world) - before == held
    assert world.held(t.user_id) == 0 and world.verify()["ok"]


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_a_reasoning_model_gets_its_budget_as_max_completion_tokens(world: World, api: str) -> None:
    """OpenAI refuses max_tokens for reasoning models: the budget goes as max_completion_tokens,
    whichever name the client (or the Responses translation) used."""
    model = world.model(prompt=1, completion=1, prefix="o4-mini")
    world.admin("PUT", f"/admin/v1/prices/{model}", {"prompt": 1, "completion": 1, "max_output": MAX_OUTPUT})
    _, tag = world.channel([model])
    t = world.tenant(credits=100)
    if api == "chat":
        t.client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=50)
    else:
        t.client.responses.create(model=model, input="hi", max_output_tokens=50)
    sent = world.mock.received(tag)[-1]
    assert sent.path == "chat/completions"
    assert sent.body["max_completion_tokens"] == 50 and "max_tokens" not in sent.body
    t.client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert world.mock.received(tag)[-1].body["max_completion_tokens"] == MAX_OUTPUT


AUDIO_ASK = {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}


def test_audio_prices_are_set_in_pairs_and_the_old_audio_multiplier_is_gone(world: World) -> None:
    model = world.model(prompt=2.5, completion=10)
    got = world.admin("PUT", f"/admin/v1/prices/{model}", {"prompt": 2.5, "completion": 10, "audio_prompt": 40,
                                                           "audio_completion": 80})
    assert (got["audio_prompt"], got["audio_completion"]) == (40, 80)
    kept = world.admin("PUT", f"/admin/v1/prices/{model}", {"prompt": 3, "completion": 10})  # absent: kept
    assert (kept["audio_prompt"], kept["audio_completion"]) == (40, 80)
    for body, param in [({"audio_prompt": 40}, "audio_completion"), ({"audio_completion": -1}, "audio_completion"),
                        ({"features": {"audio": 4}}, "features")]:
        resp = world.http.put(world.url + f"/admin/v1/prices/{model}", json={"prompt": 9, "completion": 9, **body},
                              timeout=30)
        assert resp.status_code == 400, (body, resp.text)
        assert resp.json()["error"]["param"] == param
    gone = world.admin("PUT", f"/admin/v1/prices/{model}", {"prompt": 3, "completion": 10, "audio_prompt": None,
                                                            "audio_completion": None})
    assert (gone["audio_prompt"], gone["audio_completion"]) == (None, None)
    assert {p["model"]: p for p in world.admin("GET", "/admin/v1/prices")["data"]}[model] == gone


@pytest.mark.parametrize("ask", ["output", "input"])
def test_audio_on_a_model_without_an_audio_price_is_refused_before_any_hold(world: World, ask: str) -> None:
    model, tag = world.served_model(prompt=1, completion=1)
    world.admin("PUT", f"/admin/v1/prices/{model}", {"prompt": 1, "completion": 1, "features": {"web_search": 2}})
    t = world.tenant(credits=10)
    if ask == "output":
        body = {"model": model, "messages": [{"role": "user", "content": "say hi"}], **AUDIO_ASK}
    else:
        body = {"model": model, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is said here?"},
            {"type": "input_audio", "input_audio": {"data": "UklGRgAAAABXQVZF", "format": "wav"}}]}]}
    resp = requests.post(world.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {t.key}"},
                         json=body, timeout=60)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == "modalities" and error["type"] == "invalid_request_error"
    assert "audio price" in error["message"] and model in error["message"]
    assert world.mock.received(tag) == [] and world.usage(t.user_id) == []
    assert world.balance(t.user_id) == 10 and world.held(t.user_id) == 0


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_audio_tokens_are_held_and_charged_at_the_audio_prices(world: World, stream: bool) -> None:
    """gpt-4o-audio-preview's shape: text 2.5 / 10, audio 40 / 80 credits per 1,000 tokens. The hold
    counts every token at the audio price; the charge prices the usage's audio tokens apart."""
    model = world.model(prompt=2.5, completion=10, prefix="gpt-4o-audio")
    world.admin("PUT", f"/admin/v1/prices/{model}", {"prompt": 2.5, "completion": 10, "audio_prompt": 40,
                                                     "audio_completion": 80, "max_output": 200})
    _, tag = world.channel([model])
    usage = {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500,
             "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 300},
             "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 400}}
    gate = threading.Event()
    world.mock.always(tag, _gated(gate, up.ok(usage_override=usage)))
    t = world.tenant(credits=100)
    messages = [{"role": "user", "content": "say hello in a cheerful voice"}]
    prompt = openai_tokens.chat_prompt_tokens(messages, model)

    def call() -> Any:
        extra = {"stream_options": {"include_usage": True}} if stream else {}
        reply = t.client.chat.completions.create(model=model, messages=messages, stream=stream, **AUDIO_ASK,
                                                 **extra)
        return list(reply)[-1] if stream else reply

    with ThreadPoolExecutor(1) as pool:
        done = pool.submit(call)
        try:
            wait_until(lambda: world.mock.received(tag) and world.held(t.user_id) > 0, 30, "the call to be held")
            # Every prompt token at 40 and the model's 200 output tokens at 80, per 1,000.
            assert world.held(t.user_id) == Decimal(prompt * 40 + 200 * 80) / 1000
            sent = world.mock.received(tag)[-1].body
            assert sent["modalities"] == ["text", "audio"] and sent["audio"]["voice"] == "alloy"
        finally:
            gate.set()
        last = done.result(60)
    assert last.usage.prompt_tokens == 1000 and last.usage.completion_tokens == 500
    wait_until(lambda: world.held(t.user_id) == 0, 20, "the hold to settle")
    [row] = world.usage(t.user_id)
    assert (row["prompt_tokens"], row["completion_tokens"], row["usage_source"]) == (1000, 500, "upstream")
    # 700 text and 300 audio input tokens, 100 text and 400 audio output tokens.
    charge = (700 * Decimal("2.5") + 300 * 40 + 100 * 10 + 400 * 80) / 1000
    assert charge == Decimal("46.75")
    assert Decimal(str(row["credits"])) == charge and row["status"] == "complete"
    assert world.balance(t.user_id) == 100 - charge
    assert world.verify()["ok"]


def test_audio_input_is_held_by_its_length_not_its_base64_text(world: World) -> None:
    """A 30 s recording (960 KB of wav, 1.3 MB of base64) is about 300 audio tokens to OpenAI (10 a
    second); counted as text it was ~700,000 tokens: refused as longer than the model's context,
    or held at thousands of times its cost."""
    model = world.model(prompt=2.5, completion=10, prefix="gpt-4o-audio")
    world.admin("PUT", f"/admin/v1/prices/{model}", {"prompt": 2.5, "completion": 10, "audio_prompt": 40,
                                                     "audio_completion": 80, "max_output": 200})
    _, tag = world.channel([model])
    usage = {"prompt_tokens": 312, "completion_tokens": 20, "total_tokens": 332,
             "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 300}}
    gate = threading.Event()
    world.mock.always(tag, _gated(gate, up.ok(usage_override=usage)))
    t = world.tenant(credits=100)
    question = "what is said here?"
    audio = base64.b64encode(mock_media.wav(30)).decode()
    messages = [{"role": "user", "content": [{"type": "text", "text": question},
                                             {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}}]}]
    text_only = [{"role": "user", "content": [{"type": "text", "text": question}]}]
    prompt = openai_tokens.chat_prompt_tokens(text_only, "gpt-4o") + 300

    with ThreadPoolExecutor(1) as pool:
        done = pool.submit(lambda: t.client.chat.completions.create(model=model, messages=messages))
        try:
            wait_until(lambda: world.mock.received(tag) and world.held(t.user_id) > 0, 30, "the call to be held")
            # Every prompt token at the audio price, 40, and the 200 output tokens at 80, per 1,000.
            assert world.held(t.user_id) == Decimal(prompt * 40 + 200 * 80) / 1000
            assert world.mock.received(tag)[-1].body["messages"] == messages  # the audio goes up untouched
        finally:
            gate.set()
        reply = done.result(60)
    assert reply.usage.prompt_tokens == 312
    wait_until(lambda: world.held(t.user_id) == 0, 20, "the hold to settle")
    [row] = world.usage(t.user_id)
    charge = (12 * Decimal("2.5") + 300 * 40 + 20 * 10) / 1000
    assert Decimal(str(row["credits"])) == charge and row["status"] == "complete"
    assert world.balance(t.user_id) == 100 - charge


def test_a_client_leaving_an_audio_call_pays_its_audio_at_the_audio_price(world: World) -> None:
    """The request went upstream with 30 s of audio; the client hangs up before the answer. The
    upstream bills the prompt, audio at the audio price: so does the counted settlement (it once
    priced every counted token at the text price, a sixteenth of it here)."""
    model = world.model(prompt=2.5, completion=10, prefix="gpt-4o-audio")
    world.admin("PUT", f"/admin/v1/prices/{model}", {"prompt": 2.5, "completion": 10, "audio_prompt": 40,
                                                     "audio_completion": 80, "max_output": 200})
    _, tag = world.channel([model])
    gate = threading.Event()
    world.mock.always(tag, _gated(gate, up.ok()))
    t = world.tenant(credits=100)
    question = "what is said here?"
    messages = [{"role": "user", "content": [
        {"type": "text", "text": question},
        {"type": "input_audio",
         "input_audio": {"data": base64.b64encode(mock_media.wav(30)).decode(), "format": "wav"}}]}]
    text = openai_tokens.chat_prompt_tokens([{"role": "user", "content": [{"type": "text", "text": question}]}],
                                           "gpt-4o")
    body = json.dumps({"model": model, "messages": messages}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t.key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    try:
        with socket.create_connection(("127.0.0.1", world.stack.http_port), timeout=30) as sock:
            sock.sendall(head + body)
            wait_until(lambda: world.mock.received(tag) and world.held(t.user_id) > 0, 30, "the call to go upstream")
        # The client is gone (its connection closed) while the upstream works on the answer.
        wait_until(lambda: world.held(t.user_id) == 0, 30, "the call to be settled")
    finally:
        gate.set()
    [row] = world.usage(t.user_id)
    assert (row["status"], row["usage_source"]) == ("client_gone", "counted")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (text + 300, 0)
    # text at 2.5 and 300 audio tokens at 40 credits per 1,000, rounded up to the micro-credit
    micro = -(-(text * 2_500_000 + 300 * 40_000_000) // 1000)
    assert Decimal(str(row["credits"])) == Decimal(micro) / 1_000_000
    assert world.balance(t.user_id) == 100 - Decimal(micro) / 1_000_000
