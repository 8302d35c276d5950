"""The demo upstream calls a tool only when the prompt asks for what it offers, with arguments
that fit the tool's schema; otherwise it answers in text."""
from __future__ import annotations

import json
from typing import Any

import pytest

from services.demo import replies, tools

WEATHER = {"name": "get_weather", "description": "Weather in a city.",
           "parameters": {"type": "object", "required": ["city"], "properties": {
               "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}
BASH = {"name": "Bash", "description": "Executes a given bash command in a persistent shell session.",
        "parameters": {"type": "object", "required": ["command"], "properties": {
            "command": {"type": "string"}, "timeout": {"type": "number", "maximum": 600000}}}}
READ = {"name": "Read", "description": "Reads a file from the local filesystem.",
        "parameters": {"type": "object", "required": ["file_path"], "properties": {
            "file_path": {"type": "string"}, "limit": {"type": "integer"}}}}
TODO = {"name": "TodoWrite", "description": "Update the todo list.", "parameters": {
    "type": "object", "required": ["todos"], "properties": {"todos": {"type": "array", "items": {
        "type": "object", "required": ["content", "status", "priority"], "properties": {
            "content": {"type": "string"}, "status": {"type": "string", "enum": ["pending", "completed"]},
            "priority": {"type": "integer", "minimum": 1, "maximum": 5}}}}}}}
AGENT_TOOLS = [{"type": "function", "function": f} for f in (WEATHER, BASH, READ, TODO)]


@pytest.mark.parametrize(("prompt", "choice", "name", "args"), [
    ("What is the weather in Paris?", "auto", "get_weather", {"city": "Paris"}),
    ("weather in New York in fahrenheit", None, "get_weather", {"city": "New York"}),
    ("Read the file src/main.py please", "auto", "Read", {"file_path": "src/main.py"}),
    ("run a bash command: ls -la", "auto", "Bash", {"command": "run a bash command: ls -la"}),
    ("add 3 items to my todo list", "auto", "TodoWrite",
     {"todos": [{"content": "add 3 items to my todo list", "status": "pending", "priority": 3}]}),
    ("Say this is a test!", "auto", None, None),
    ("What is 2+2? Answer with just the number.", "auto", None, None),
    ("hello", "required", "get_weather", {"city": "Paris"}),
    ("What is the weather in Paris?", "none", None, None),
    ("anything", {"type": "function", "function": {"name": "Read"}}, "Read", {"file_path": "README.md"}),
])
def test_a_tool_only_when_asked(prompt: str, choice: Any, name: str | None, args: dict[str, Any] | None) -> None:
    body: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}], "tools": AGENT_TOOLS}
    if choice is not None:
        body["tool_choice"] = choice
    message = replies.chat(body)["choices"][0]
    if name is None:
        assert message["finish_reason"] == "stop"
        assert message["message"]["content"] == f"This is a test! You said: {prompt}"
        return
    assert message["finish_reason"] == "tool_calls"
    [call] = message["message"]["tool_calls"]
    assert call["function"]["name"] == name
    assert json.loads(call["function"]["arguments"]) == args


def test_a_tool_result_is_answered_in_text() -> None:
    body = {"model": "gpt-4o", "tools": AGENT_TOOLS, "messages": [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]}
    assert replies.chat(body)["choices"][0]["message"]["content"] == "The tool said: sunny"


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"n": {"type": ["integer", "null"], "minimum": 5}}},
    {"type": "object", "properties": {"x": {"anyOf": [{"type": "null"}, {"type": "boolean"}]}}},
    {"type": "object", "properties": {"deep": {"type": "object", "properties": {"deeper": {"$ref": "#/x"}}}}},
    {"type": "object"}, {}, None, {"type": "object", "properties": {"c": {"const": "fixed"}}},
])
def test_arguments_fit_odd_schemas(schema: Any) -> None:
    args = tools.arguments(schema, "give me 7")
    assert isinstance(args, dict)
    if schema and "n" in (schema.get("properties") or {}):
        assert args == {"n": 7}
    if schema and "x" in (schema.get("properties") or {}):
        assert args == {"x": False}
    if schema and "c" in (schema.get("properties") or {}):
        assert args == {"c": "fixed"}
