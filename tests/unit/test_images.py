"""Image prompt tokens by OpenAI's size-and-detail rule, read from data: URL headers only."""
from __future__ import annotations

import base64
import struct
import zlib

import pytest

from services.inference import images, tokens


def png(width: int, height: int) -> str:
    """A data: URL of a PNG whose header says width x height (its pixels are not there: only
    the header is ever read)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return "data:image/png;base64," + base64.b64encode(data + b"\0" * 64).decode()


def part(url: str, detail: str | None = None) -> dict:
    image = {"url": url, **({"detail": detail} if detail else {})}
    return {"type": "image_url", "image_url": image}


@pytest.mark.parametrize("model, size, detail, expected", [
    ("gpt-4o", (2048, 2048), "high", 765),     # OpenAI's worked example: 768 x 768, four tiles
    ("gpt-4o", (2048, 2048), "low", 85),
    ("gpt-4o", (2048, 2048), None, 765),       # auto counts as high
    ("gpt-4o", (1024, 1024), "high", 765),
    ("gpt-4o", (4096, 8192), "high", 1105),    # OpenAI's example: 1024 x 2048 -> 768 x 1536, six tiles
    ("gpt-4o", (512, 512), "high", 255),
    ("gpt-4o-mini", (512, 512), "high", 2833 + 5667),
    ("o1", (2048, 2048), "low", 75),
    ("gpt-4.1-mini", (1024, 1024), "high", 1659),  # 1,024 patches x 1.62
    ("gpt-4.1-mini", (1800, 2400), "high", 2489),  # at most 1,536 patches x 1.62, rounded up
])
def test_image_tokens(model: str, size: tuple[int, int], detail: str | None, expected: int) -> None:
    assert images.image_tokens(part(png(*size), detail), model) == expected


def test_an_http_image_is_never_fetched_and_holds_the_worst_case() -> None:
    assert images.image_tokens(part("https://example.invalid/cat.png", "high"), "gpt-4o") == 85 + 170 * 8
    assert images.image_tokens(part("https://example.invalid/cat.png", "low"), "gpt-4o") == 85
    assert images.image_tokens(part("data:image/png;base64,!!!not base64"), "gpt-4o") == 85 + 170 * 8


def test_a_chat_prompt_counts_its_images_and_schemas() -> None:
    text = {"role": "user", "content": [{"type": "text", "text": "what is this?"}]}
    with_image = {"role": "user", "content": [{"type": "text", "text": "what is this?"}, part(png(2048, 2048), "high")]}
    plain = tokens.count_chat_prompt({"messages": [text]}, "gpt-4o")
    assert tokens.count_chat_prompt({"messages": [with_image]}, "gpt-4o") == plain + 765
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"answer": {"type": "string"}}}}}
    assert tokens.count_chat_prompt({"messages": [text], "response_format": schema}, "gpt-4o") > plain + 10
    flat = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "object"}}}}}
    nested = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "object", "properties": {
            "deep": {"type": "array", "items": {"type": "string", "description": "a long nested description"}}}}}}}}
    assert tokens.count_chat_prompt({"messages": [text], "tools": [nested]}, "gpt-4o") > \
        tokens.count_chat_prompt({"messages": [text], "tools": [flat]}, "gpt-4o") + 10
