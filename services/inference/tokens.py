"""Token counting with tiktoken, offline, exactly as OpenAI counts.

The BPE rank files ship inside the `bpe-openai` wheel (gzipped); they are checked
against the official SHA-256 before use, and tiktoken's own encoding definitions
(split pattern, special tokens) are used unchanged, so counts equal OpenAI's.

Nothing is loaded at import: tiktoken itself is imported, and an encoding built (24 MB for
cl100k_base, 43 MB for o200k_base), the first time a count needs it — so a process serves
only with the encodings its models are counted with (inference warms those of the models its
channels serve at start-up, warm()).
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.metadata
import json
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.inference import images
from services.inference.audio import input_audio_tokens

if TYPE_CHECKING:
    import tiktoken

# The official hashes, as tiktoken_ext.openai_public checks them after a download.
_RANK_FILES = {
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}

_O200K_PREFIXES = ("gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "gpt-oss")


def _rank_file(name: str) -> Path:
    # Located through package metadata, so the 70 MB native module of bpe-openai is never imported.
    for file in importlib.metadata.files("bpe-openai") or ():
        if file.name == f"{name}.tiktoken.gz":
            return Path(file.locate())
    raise FileNotFoundError(f"{name}.tiktoken.gz is not in the bpe-openai package")


def _load_ranks(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
    name = url.rsplit("/", 1)[-1].removesuffix(".tiktoken")
    data = gzip.decompress(_rank_file(name).read_bytes())
    if hashlib.sha256(data).hexdigest() != _RANK_FILES[name]:
        raise ValueError(f"{name} rank file does not match OpenAI's published hash")
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


_built: dict[str, tiktoken.Encoding] = {}
_building = threading.Lock()  # counts also run in threads (relay.py): each encoding is built once


def encoding(name: str) -> tiktoken.Encoding:
    """cl100k_base or o200k_base, built from tiktoken's own definition with local ranks the
    first time it is asked for."""
    enc = _built.get(name)
    if enc is not None:
        return enc
    if name not in _RANK_FILES:
        raise ValueError(f"unknown encoding {name}")
    with _building:
        enc = _built.get(name)
        if enc is None:
            enc = _built[name] = _build(name)
    return enc


def _build(name: str) -> tiktoken.Encoding:
    import tiktoken
    import tiktoken_ext.openai_public as openai_public

    constructor = getattr(openai_public, name)
    original = openai_public.load_tiktoken_bpe
    openai_public.load_tiktoken_bpe = _load_ranks  # the only download in the definition
    try:
        params = constructor()
    finally:
        openai_public.load_tiktoken_bpe = original
    enc = tiktoken.Encoding(**params)
    # The Rust core keeps its own copy of the ranks; the Python dict (200k entries for
    # o200k_base) serves only pickling, and costs inference ~48 MB RSS for both encodings.
    enc._mergeable_ranks = {}
    return enc


def loaded() -> list[str]:
    """The encodings built so far."""
    return sorted(_built)


def warm(models: Iterable[str]) -> list[str]:
    """Build the encodings `models` are counted with (and no other); their names."""
    names = sorted({encoding_name_for(m) for m in models})
    for name in names:
        encoding(name)
    return names


def encoding_name_for(model: str) -> str:
    base = model.lower().split("/")[-1]
    return "o200k_base" if base.startswith(_O200K_PREFIXES) else "cl100k_base"


def encoding_for(model: str) -> tiktoken.Encoding:
    return encoding(encoding_name_for(model))


def count_text(text: str, enc: tiktoken.Encoding) -> int:
    """How many tokens `text` is, as enc.encode(text, disallowed_special=()) counts them: special-
    token text sent by a user is ordinary text to the model's billing.

    Counted in tiktoken's native buffer (4 bytes a token), as its encode_to_numpy does, never as a
    Python list of ints (36 bytes a token): 20 MB of "a a a ..." is 10 million tokens, 360 MB as a
    list, which a few such prompts at once would take inference past its memory limit."""
    if not text:
        return 0
    try:
        tokens = memoryview(enc._core_bpe.encode_to_tiktoken_buffer(text, set()))
    except UnicodeEncodeError:  # lone surrogates: replaced, as tiktoken's encode does
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        tokens = memoryview(enc._core_bpe.encode_to_tiktoken_buffer(text, set()))
    return tokens.nbytes // tokens.itemsize


# --- chat -----------------------------------------------------------------------

# Per-message framing, as in OpenAI's cookbook ("How to count tokens with tiktoken").
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
IMAGE_TOKENS = 85  # an image part at low detail on gpt-4o (services/inference/images.py has the rule)


def _content_tokens(value: Any, enc: tiktoken.Encoding, model: str = "") -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return count_text(value, enc)
    if isinstance(value, list):
        total = 0
        for part in value:
            if isinstance(part, dict):
                kind = part.get("type")
                # By its type first: an image or audio part with a stray "text" key is still one.
                if kind in ("image_url", "input_image", "image"):
                    total += images.image_tokens(part, model)
                elif kind == "input_audio":
                    total += input_audio_tokens(part)
                elif kind == "text" or "text" in part:
                    total += count_text(str(part.get("text") or ""), enc)
                else:
                    total += count_text(json.dumps(part, ensure_ascii=False), enc)
            else:
                total += _content_tokens(part, enc, model)
        return total
    return count_text(json.dumps(value, ensure_ascii=False, separators=(",", ":")), enc)


def count_messages(messages: Iterable[dict[str, Any]], enc: tiktoken.Encoding, model: str = "") -> int:
    total = 0
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if key == "tool_calls" and isinstance(value, list):
                for call in value:
                    fn = call.get("function") if isinstance(call, dict) else None
                    if isinstance(fn, dict):
                        total += count_text(str(fn.get("name") or ""), enc)
                        total += count_text(str(fn.get("arguments") or ""), enc)
                continue
            total += _content_tokens(value, enc, model)
            if key == "name":
                total += TOKENS_PER_NAME
    return total + REPLY_PRIMING


# Function-definition framing, from the same cookbook: (func_init, prop_init, prop_key,
# enum_init, enum_item, func_end) by encoding.
_TOOL_FRAMING = {"o200k_base": (7, 3, 3, -3, 3, 12), "cl100k_base": (10, 3, 3, -3, 3, 12)}


def count_tools(functions: Iterable[dict[str, Any]], enc: tiktoken.Encoding) -> int:
    """Tokens the tool definitions add to a prompt (OpenAI's hidden formatting)."""
    func_init, prop_init, prop_key, enum_init, enum_item, func_end = _TOOL_FRAMING.get(
        enc.name, _TOOL_FRAMING["cl100k_base"]
    )
    total = 0
    count = 0
    for function in functions:
        if not isinstance(function, dict):
            continue
        count += 1
        total += func_init
        desc = str(function.get("description") or "").removesuffix(".")
        total += count_text(f"{function.get('name', '')}:{desc}", enc)
        params = function.get("parameters")
        properties = params.get("properties") if isinstance(params, dict) else None
        if isinstance(properties, dict) and properties:
            total += prop_init
            for name, prop in properties.items():
                total += prop_key
                prop = prop if isinstance(prop, dict) else {}
                enum = prop.get("enum")
                if isinstance(enum, list):
                    total += enum_init
                    for item in enum:
                        total += enum_item + count_text(str(item), enc)
                p_desc = str(prop.get("description") or "").removesuffix(".")
                total += count_text(f"{name}:{prop.get('type', '')}:{p_desc}", enc)
                total += _nested_schema(prop, enc)
    return total + func_end if count else 0


_NESTED = ("properties", "items", "anyOf", "oneOf", "allOf", "$defs", "definitions", "prefixItems")


def _nested_schema(prop: dict[str, Any], enc: tiktoken.Encoding) -> int:
    """A property's nested schema (objects, arrays, unions), which the cookbook's formula for
    top-level properties leaves out but the model still reads: counted as its JSON text."""
    nested = {key: prop[key] for key in _NESTED if isinstance(prop.get(key), (dict, list)) and prop[key]}
    return count_text(json.dumps(nested, ensure_ascii=False, separators=(",", ":")), enc) if nested else 0


def count_response_format(value: Any, enc: tiktoken.Encoding) -> int:
    """A `response_format` json_schema: the schema the model is given, counted as its JSON text."""
    if not isinstance(value, dict) or value.get("type") != "json_schema":
        return 0
    schema = value.get("json_schema")
    return count_text(json.dumps(schema, ensure_ascii=False, separators=(",", ":")), enc) if schema else 0


def count_chat_prompt(body: dict[str, Any], model: str) -> int:
    """Prompt tokens of a chat request: messages, names, images, tool and function definitions
    (nested schemas included), and a response_format schema."""
    enc = encoding_for(model)
    messages = body.get("messages")
    total = count_messages([m for m in messages if isinstance(m, dict)], enc, model) \
        if isinstance(messages, list) else 0
    total += count_response_format(body.get("response_format"), enc)
    params_defs = 0
    functions: list[dict[str, Any]] = []
    for tool in body.get("tools") or ():
        if isinstance(tool, dict) and isinstance(tool.get("function"), dict):
            functions.append(tool["function"])
    for fn in body.get("functions") or ():
        if isinstance(fn, dict):
            functions.append(fn)
    for fn in functions:  # shared definitions a tool's parameters refer to
        params = fn.get("parameters")
        if isinstance(params, dict):
            params_defs += _nested_schema({k: v for k, v in params.items() if k in ("$defs", "definitions")}, enc)
    return total + params_defs + count_tools(functions, enc)


# --- completions and embeddings -------------------------------------------------


def count_input(value: Any, enc: tiktoken.Encoding) -> int:
    """A prompt or embeddings input: a string, a list of strings, tokens or lists of tokens."""
    if isinstance(value, str):
        return count_text(value, enc)
    if isinstance(value, list):
        if all(isinstance(v, int) for v in value):
            return len(value)
        return sum(count_input(v, enc) for v in value)
    return 0


def count_choices_text(texts: Iterable[str], model: str) -> int:
    enc = encoding_for(model)
    return sum(count_text(t, enc) for t in texts)


def count_input_audio(messages: Any) -> int:
    """The audio tokens among a chat prompt's (its `input_audio` parts, as _content_tokens counts
    them): what a counted settlement charges at the audio price."""
    if not isinstance(messages, list):
        return 0
    return sum(input_audio_tokens(part) for m in messages if isinstance(m, dict) and isinstance(m.get("content"), list)
               for part in m["content"] if isinstance(part, dict) and part.get("type") == "input_audio")
