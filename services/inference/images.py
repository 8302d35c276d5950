"""Prompt tokens of an image part, by OpenAI's size-and-detail rule for the model's family.

    low detail          -> the family's base tokens
    high / auto detail  -> fit in 2048 x 2048, then shortest side down to 768; each 512 px
                           tile costs the tile price, plus the base once
    patch families      -> 32 px patches (at most 1,536, scaled down to fit) x a multiplier

The size comes from the first bytes of a `data:` URL (imagesize reads the header; the image
is never decoded). An http(s) URL is never fetched (that would let a client make chatkore
fetch any address): it is counted at the worst case for its detail, and the settlement
then follows the upstream's own usage.
"""
from __future__ import annotations

import base64
import binascii
import io
import math
from typing import Any

import imagesize

# (base, per tile) for tile families; checked most specific prefix first.
_TILES = (
    ("gpt-4o-mini", (2833, 5667)),
    ("o1", (75, 150)), ("o3", (75, 150)),
    ("computer-use", (65, 129)),
    ("gpt-5-chat", (70, 140)),
)
# Patch families: multiplier on the patch count.
_PATCHES = (("gpt-4.1-mini", 1.62), ("gpt-4.1-nano", 2.46), ("o4-mini", 1.72), ("gpt-5-mini", 1.62),
            ("gpt-5-nano", 2.46))
_DEFAULT_TILES = (85, 170)  # gpt-4o, gpt-4.1, gpt-4-turbo and any other model
_GPT5_TILES = (70, 140)
_HEADER_CHARS = 256 * 1024  # base64 characters decoded to find a size (JPEG's may follow EXIF)
MAX_PATCHES = 1536


def _family(model: str) -> tuple[str, Any]:
    for prefix, multiplier in _PATCHES:
        if model.startswith(prefix):
            return "patch", multiplier
    for prefix, tiles in _TILES:
        if model.startswith(prefix):
            return "tile", tiles
    if model.startswith("gpt-5"):
        return "tile", _GPT5_TILES
    return "tile", _DEFAULT_TILES


def tile_tokens(width: int, height: int, detail: str, tiles: tuple[int, int]) -> int:
    base, per_tile = tiles
    if detail == "low":
        return base
    if width > 2048 or height > 2048:
        scale = 2048 / max(width, height)
        width, height = width * scale, height * scale
    if min(width, height) > 768:
        scale = 768 / min(width, height)
        width, height = width * scale, height * scale
    return base + per_tile * math.ceil(width / 512) * math.ceil(height / 512)


def patch_tokens(width: int, height: int, multiplier: float) -> int:
    patches = math.ceil(width / 32) * math.ceil(height / 32)
    if patches > MAX_PATCHES:  # scaled down until its patches fit the budget
        scale = math.sqrt(MAX_PATCHES * 32 * 32 / (width * height))
        patches = min(MAX_PATCHES, math.ceil(width * scale / 32) * math.ceil(height * scale / 32))
    return math.ceil(patches * multiplier)


def worst_case(model: str, detail: str) -> int:
    kind, value = _family(model)
    if kind == "patch":
        return math.ceil(MAX_PATCHES * value)
    return tile_tokens(2048, 768, detail, value)  # the most tiles any image can have


def size_of(url: str) -> tuple[int, int] | None:
    """(width, height) of a base64 `data:` URL's image, from its header bytes only."""
    if not url.startswith("data:"):
        return None
    head, _, data = url.partition(",")
    if ";base64" not in head:
        return None
    chunk = data[:_HEADER_CHARS]
    chunk = chunk[: len(chunk) - len(chunk) % 4]
    try:
        width, height = imagesize.get(io.BytesIO(base64.b64decode(chunk)))
    except (binascii.Error, ValueError, OSError):
        return None
    return (width, height) if width > 0 and height > 0 else None


def image_tokens(part: dict[str, Any], model: str) -> int:
    """Tokens of an image_url (chat) or input_image (Responses) content part."""
    image = part.get("image_url")
    if isinstance(image, dict):
        url, detail = image.get("url"), image.get("detail")
    else:
        url, detail = image, part.get("detail")
    detail = detail if detail in ("low", "high", "auto") else "auto"
    kind, value = _family(model)
    size = size_of(url) if isinstance(url, str) else None
    if size is None:  # an http(s) URL, or no size in the first bytes
        return worst_case(model, detail)
    if kind == "patch":
        return patch_tokens(*size, value)
    return tile_tokens(*size, detail, value)
