"""Expected token counts, computed the way OpenAI documents them, apart from the product.

Tests that assert a count take the expectation from here, never from
services/inference/tokens.py: tiktoken's own `encoding_for_model` and `get_encoding`
(the rank files, offline, from the bpe-openai wheel, put where tiktoken's cache looks
for its downloads and checked by tiktoken against OpenAI's published hashes), and the
chat format's framing from OpenAI's cookbook "How to count tokens with tiktoken"
(`num_tokens_from_messages`: 3 tokens per message, 1 per name, 3 priming the reply).
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.metadata
import os
import tempfile
from typing import Any

import tiktoken

_URL = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3


@functools.cache
def _cache_dir() -> str:
    """A tiktoken cache holding both rank files under the names tiktoken gives its downloads."""
    cache = tempfile.mkdtemp(prefix="ck-tiktoken-")
    for file in importlib.metadata.files("bpe-openai") or ():
        if file.name.endswith(".tiktoken.gz"):
            name = file.name.removesuffix(".tiktoken.gz")
            key = hashlib.sha1(_URL.format(name).encode()).hexdigest()
            with open(os.path.join(cache, key), "wb") as out:
                out.write(gzip.decompress(file.locate().read_bytes()))
    return cache


@functools.cache
def encoding(model: str) -> tiktoken.Encoding:
    """OpenAI's encoding for `model`; a name tiktoken does not know (the suite's made-up models)
    is counted with cl100k_base (the encoding of the OpenAI models the suite stands them in for)."""
    try:
        name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        name = "cl100k_base"
    return named_encoding(name)


@functools.cache
def named_encoding(name: str) -> tiktoken.Encoding:
    """An encoding by its own name (cl100k_base, o200k_base): what the scripted upstreams count
    with whatever the model (tests/mock_anthropic.py, tests/mock_responses.py)."""
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = _cache_dir()  # only while tiktoken loads; it keeps the encoding
    try:
        return tiktoken.get_encoding(name)
    finally:
        if saved is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved


def text_tokens(text: str, model: str) -> int:
    return len(encoding(model).encode(text, disallowed_special=()))


def _value_tokens(value: Any, model: str) -> int:
    if isinstance(value, str):
        return text_tokens(value, model)
    # A content array of text parts counts its texts; images are counted by their own rule
    # (the tests that send them add it themselves).
    assert isinstance(value, list) and all(p.get("type") == "text" for p in value), value
    return sum(text_tokens(p["text"], model) for p in value)


def chat_prompt_tokens(messages: list[dict[str, Any]], model: str) -> int:
    """OpenAI's cookbook `num_tokens_from_messages` for the gpt-3.5-turbo/gpt-4/gpt-4o family."""
    total = REPLY_PRIMING
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            total += _value_tokens(value, model)
            if key == "name":
                total += TOKENS_PER_NAME
    return total
