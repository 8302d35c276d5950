"""Edge validation, table-driven: what passes, and the param each rejection names."""
from __future__ import annotations

import pytest

from edge import inputs, validate
from edge.errors import OpenAIError

MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("body, fields", [
    ({"model": "m", "messages": MSG}, ("m", False, False, 0, 1)),
    ({"model": "m", "messages": MSG, "stream": True, "stream_options": {"include_usage": True}, "n": 2,
      "max_tokens": 7}, ("m", True, True, 7, 2)),
    ({"model": "m", "messages": MSG, "max_completion_tokens": 9, "max_tokens": None}, ("m", False, False, 9, 1)),
    ({"model": "m", "messages": [{"role": "assistant", "content": None, "tool_calls": []}], "unknown": {"x": 1}},
     ("m", False, False, 0, 1)),
])
def test_chat_accepts(body, fields) -> None:
    r = validate.chat(body)
    assert (r.model, r.stream, r.include_usage, r.max_tokens, r.n) == fields


@pytest.mark.parametrize("body, param", [
    ({"messages": MSG}, "model"),
    ({"model": 5, "messages": MSG}, "model"),
    ({"model": "m", "messages": MSG, "top_p": 1.5}, "top_p"),
    ({"model": "m", "messages": MSG, "presence_penalty": -3}, "presence_penalty"),
    ({"model": "m", "messages": MSG, "stream": "yes"}, "stream"),
    ({"model": "m", "messages": MSG, "logit_bias": []}, "logit_bias"),
    ({"model": "m", "messages": MSG, "n": True}, "n"),
    ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"model": "m", "messages": [{"role": "user", "content": [1]}]}, "messages[0].content"),
    ({"model": "m", "messages": MSG, "functions": [{}]}, "functions[0].name"),
])
def test_chat_rejects(body, param) -> None:
    with pytest.raises(OpenAIError) as err:
        validate.chat(body)
    assert err.value.status == 400 and err.value.param == param


def test_completions_default_budget_is_16() -> None:
    assert validate.completions({"model": "m", "prompt": "x"}).max_tokens == 16
    assert validate.completions({"model": "m", "prompt": "x", "n": 2, "best_of": 3}).n == 3


@pytest.mark.parametrize("raw", [b"", b"{", b"NaN", b'{"a": NaN}', b"[" * 100000, b"\xff\xfe", b"null", b"1"])
def test_parse_relay_rejects(raw) -> None:
    with pytest.raises(OpenAIError) as err:
        inputs.parse_relay(raw, validate.DEFAULT_LIMITS)
    assert err.value.status == 400
