"""Token counts equal OpenAI's tiktoken, offline."""
from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest

from services.inference import tokens

COOKBOOK_MESSAGES = [
    {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate jargon "
                                  "into plain English."},
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
    {"role": "system", "name": "example_user", "content": "Let's circle back when we have more bandwidth to touch "
                                                          "base on opportunities for increased leverage."},
    {"role": "system", "name": "example_assistant", "content": "Let's talk later when we're less busy about how to "
                                                               "do better."},
    {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client "
                                "deliverable."},
]


@pytest.mark.parametrize("model, expected", [
    # OpenAI cookbook "How to count tokens with tiktoken": the API's prompt_tokens for these messages.
    ("gpt-3.5-turbo", 129), ("gpt-4", 129), ("gpt-4o", 124), ("gpt-4o-mini", 124),
])
def test_cookbook_chat_counts(model, expected) -> None:
    assert tokens.count_chat_prompt({"messages": COOKBOOK_MESSAGES}, model) == expected


@pytest.mark.parametrize("name, text, ids", [
    ("cl100k_base", "tiktoken is great!", [83, 1609, 5963, 374, 2294, 0]),
    ("o200k_base", "hello world", [24912, 2375]),
    ("cl100k_base", "hello world", [15339, 1917]),
])
def test_known_encodings(name, text, ids) -> None:
    assert tokens.encoding(name).encode(text) == ids


def test_encoding_for_models() -> None:
    assert tokens.encoding_name_for("gpt-4o-2024-08-06") == "o200k_base"
    assert tokens.encoding_name_for("gpt-3.5-turbo-16k") == "cl100k_base"
    assert tokens.encoding_name_for("text-embedding-ada-002") == "cl100k_base"


def test_seed_example_prompt() -> None:
    # The seed's example answer reports prompt_tokens 13 for this request.
    assert tokens.count_chat_prompt({"messages": [{"role": "user", "content": "Say this is a test!"}]},
                                    "gpt-3.5-turbo") == 13


def test_special_token_text_is_plain_text() -> None:
    enc = tokens.encoding("cl100k_base")
    assert tokens.count_text("<|endoftext|>", enc) == len(enc.encode("<|endoftext|>", disallowed_special=()))


@pytest.mark.parametrize("value, expected", [("hello world", 2), (["hello", "world"], 2), ([1, 2, 3], 3),
                                             ([[1, 2], [3]], 3)])
def test_count_input_forms(value, expected) -> None:
    assert tokens.count_input(value, tokens.encoding("cl100k_base")) == expected


def test_an_image_or_audio_part_with_a_stray_text_key_counts_as_what_it_is() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://x.example/a.png", "detail": "low"}}
    data = base64.b64encode(b"\x01" * 6_000).decode()  # no header: 10 s at 600 bytes a second
    audio = {"type": "input_audio", "input_audio": {"data": data, "format": "mp3"}}
    plain = tokens.count_chat_prompt({"messages": [{"role": "user", "content": [image, audio]}]}, "gpt-4o")
    stray = tokens.count_chat_prompt(
        {"messages": [{"role": "user", "content": [{**image, "text": ""}, {**audio, "text": ""}]}]}, "gpt-4o")
    assert stray == plain == 3 + 1 + 85 + 100 + 3  # framing, "user", a low-detail image, 10 s of audio, priming


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
@pytest.mark.parametrize("text", [
    "a", "hello world", "<|endoftext|> and <|fim_prefix|>", "哈哈哈哈哈 你好，世界", "emoji 🤖🧪 and \u00e9",
    "lone \ud800 surrogate", "pair \ud83e\udd16 written as surrogates", "  \n\n\t spaces  \r\n", "x" * 10_000,
    "a " * 5_000 + "1234567890" * 100,
])
def test_count_text_equals_tiktokens_own_count(name: str, text: str) -> None:
    enc = tokens.encoding(name)
    assert tokens.count_text(text, enc) == len(enc.encode(text, disallowed_special=()))


def test_a_20_mb_prompt_is_counted_without_a_list_of_its_tokens() -> None:
    """10 million tokens: as a Python list of ints they took 420 MB of peak memory; counted in
    tiktoken's buffer, 4 bytes a token."""
    script = (
        "import resource\n"
        "from services.inference import tokens\n"
        "enc = tokens.encoding('cl100k_base')\n"
        "text = 'a ' * 10_000_000\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "n = tokens.count_text(text, enc)\n"
        "print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}).stdout.split()
    count, growth_kb = int(out[0]), int(out[1])
    assert count == 10_000_001
    assert growth_kb < 80 * 1024, f"peak memory grew {growth_kb / 1024:.0f} MB while counting"
