"""Which tool the demo upstream calls, if any, and with what arguments.

Agents and coding tools offer tools with every request, so the demo calls one only when the
prompt asks for what it offers: a word of the tool's name in the prompt (get_weather for "the
weather in Paris"), or two words of its description. tool_choice "required" or a named function
forces a call; "none" forbids one. The arguments fit the tool's JSON schema: every required
property (all of them when none is marked required) with a value of its type, taken from the
prompt where it says something (a place after "in", a number, a URL, a file name, an enum value
it names), else a plain default.
"""
from __future__ import annotations

import datetime as dt
import re
from typing import Any

_STOP = frozenset({
    "the", "and", "for", "with", "from", "that", "this", "what", "which", "when", "where", "how", "are", "you",
    "your", "can", "please", "tell", "give", "get", "set", "use", "run", "new", "not", "but", "all", "any", "its",
    "into", "out", "about", "have", "has", "was", "were", "will", "would", "could", "should", "there", "their",
    "them", "then", "than", "these", "those", "some", "just", "like", "make", "want", "need",
})
_WORD = re.compile(r"[A-Za-z]+|\d+")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
_PLACE = re.compile(r"\b(?:in|at|for|near|of)\s+((?:[A-Z][\w'-]*)(?:\s+[A-Z][\w'-]*)*)")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_URL = re.compile(r"https?://\S+")
_FILE = re.compile(r"[\w./-]*\w\.\w{1,8}\b|(?:\.{0,2}/)[\w./-]+")
_PLACE_NAMES = ("city", "location", "place", "country", "region", "address", "town")
_MAX_DEPTH = 6


def words(text: str) -> set[str]:
    """The content words of a text, lower case, plural 's' dropped: get_weather -> {weather}."""
    out = set()
    for word in _WORD.findall(_CAMEL.sub(" ", text.replace("_", " ").replace("-", " "))):
        word = word.lower()
        if len(word) < 3 or word in _STOP:
            continue
        out.add(word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word)
    return out


def _function(tool: Any) -> dict[str, Any] | None:
    fn = tool.get("function") if isinstance(tool, dict) else None
    return fn if isinstance(fn, dict) and isinstance(fn.get("name"), str) else None


def _score(fn: dict[str, Any], asked: set[str]) -> int:
    name = words(fn["name"])
    described = words(str(fn.get("description") or "")) - name
    return 3 * len(asked & name) + len(asked & described)


def choose(tools: Any, tool_choice: Any, prompt: str) -> dict[str, Any] | None:
    """The function to call for this prompt, or None for a text answer."""
    functions = [fn for fn in (_function(t) for t in tools or ()) if fn is not None]
    if not functions or tool_choice == "none":
        return None
    if isinstance(tool_choice, dict):
        wanted = _function(tool_choice) or tool_choice
        for fn in functions:
            if fn["name"] == wanted.get("name"):
                return fn
    asked = words(prompt)
    best = max(functions, key=lambda fn: _score(fn, asked))
    if tool_choice == "required" or _score(best, asked) >= 2:
        return best
    return None


def _type(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if isinstance(kind, str):
        return kind
    if isinstance(schema.get("properties"), dict):
        return "object"
    return "string"


def _string(name: str, schema: dict[str, Any], prompt: str) -> str:
    lowered = name.lower()
    if schema.get("format") == "date":
        return dt.date.today().isoformat()
    if any(p in lowered for p in _PLACE_NAMES):
        found = _PLACE.search(prompt)
        return found[1] if found else "Paris"
    if "url" in lowered or schema.get("format") == "uri":
        found = _URL.search(prompt)
        return found[0] if found else "https://example.com"
    if "path" in lowered or "file" in lowered:
        found = _FILE.search(prompt)
        return found[0] if found else "README.md"
    return prompt


def _number(schema: dict[str, Any], prompt: str, integer: bool) -> int | float:
    found = _NUMBER.search(prompt)
    value: float = float(found[0]) if found else float(schema.get("minimum", 1))
    if isinstance(schema.get("minimum"), (int, float)):
        value = max(value, schema["minimum"])
    if isinstance(schema.get("maximum"), (int, float)):
        value = min(value, schema["maximum"])
    return int(value) if integer else value


def value_for(schema: Any, name: str, prompt: str, depth: int = 0) -> Any:
    """A value of the schema's type, from the prompt where it says something."""
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return prompt
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        asked = words(prompt)
        return next((v for v in enum if isinstance(v, str) and words(v) & asked), enum[0])
    if "const" in schema:
        return schema["const"]
    for combo in ("anyOf", "oneOf"):
        options = schema.get(combo)
        if isinstance(options, list) and options:
            return value_for(next((o for o in options if isinstance(o, dict) and o.get("type") != "null"),
                                  options[0]), name, prompt, depth + 1)
    kind = _type(schema)
    if kind == "object":
        return arguments(schema, prompt, depth + 1)
    if kind == "array":
        return [value_for(schema.get("items"), name, prompt, depth + 1)]
    if kind in ("integer", "number"):
        return _number(schema, prompt, kind == "integer")
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return _string(name, schema, prompt)


def arguments(schema: Any, prompt: str, depth: int = 0) -> dict[str, Any]:
    """The arguments object for a function's `parameters` schema."""
    if not isinstance(schema, dict):
        return {}
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return {}
    required = schema.get("required")
    names = [n for n in required if n in properties] if isinstance(required, list) and required else list(properties)
    return {name: value_for(properties[name], name, prompt, depth) for name in names}
