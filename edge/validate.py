"""OpenAI request bodies checked field by field; what the services need, extracted.

Errors name the offending field in `param`, with OpenAI's wording, so a client
sees the same 400 it would from OpenAI. Fields not checked here pass through.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edge.errors import OpenAIError, invalid
from edge.limits import Limits

MAX_N = 128
MAX_INT32 = 2**31 - 1  # the services carry token counts as int32
DEFAULT_LIMITS = Limits()

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array",
               dict: "an object", type(None): "null"}


def _got(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _type_error(param: str, expected: str, value: Any) -> OpenAIError:
    return invalid(f"Invalid type for '{param}': expected {expected}, but got {_got(value)} instead.", param,
                   "invalid_type")


def _optional_int(body: dict[str, Any], name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(name, "an integer", value)
    if value < low:
        raise invalid(f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, but got {value}"
                      " instead.", name, "integer_below_min_value")
    if high is not None and value > high:
        raise invalid(f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, but got {value}"
                      " instead.", name, "integer_above_max_value")
    return value


def _optional_number(body: dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(name, "a number", value)
    if value < low:
        raise invalid(f"Invalid '{name}': decimal below minimum value. Expected a value >= {low}, but got {value}"
                      " instead.", name, "decimal_below_min_value")
    if value > high:
        raise invalid(f"Invalid '{name}': decimal above maximum value. Expected a value <= {high}, but got {value}"
                      " instead.", name, "decimal_above_max_value")


def _optional(body: dict[str, Any], name: str, kinds: tuple[type, ...], expected: str) -> Any:
    value = body.get(name)
    if value is not None and (not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds):
        raise _type_error(name, expected, value)
    return value


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None or model == "":
        raise invalid("you must provide a model parameter", "model")
    if not isinstance(model, str):
        raise _type_error("model", "a string", model)
    if len(model) > 256:
        raise invalid("Invalid 'model': string too long.", "model", "string_above_max_length")
    return model


def _stream(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = _optional(body, "stream", (bool,), "a boolean") or False
    options = _optional(body, "stream_options", (dict,), "an object")
    if options is not None and not stream:
        raise invalid("The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options")
    include = options.get("include_usage") if options else None
    if include is not None and not isinstance(include, bool):
        raise _type_error("stream_options.include_usage", "a boolean", include)
    return stream, bool(include)


def _stop(body: dict[str, Any]) -> None:
    stop = body.get("stop")
    if stop is None or isinstance(stop, str):
        return
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise _type_error("stop", "one of a string or array of strings", stop)
    if len(stop) > 4:
        raise invalid("Invalid 'stop': array too long. Expected an array with maximum length 4, but got an array"
                      f" with length {len(stop)} instead.", "stop", "array_above_max_length")


def _common_sampling(body: dict[str, Any]) -> None:
    _optional_number(body, "temperature", 0, 2)
    _optional_number(body, "top_p", 0, 1)
    _optional_number(body, "presence_penalty", -2, 2)
    _optional_number(body, "frequency_penalty", -2, 2)
    _optional(body, "logit_bias", (dict,), "an object")
    _optional(body, "user", (str,), "a string")
    _optional_int(body, "seed", -(2**63), 2**63 - 1)
    _stop(body)


@dataclass(frozen=True)
class Relayable:
    """What the services need to know about a call; the body itself travels as sent."""

    model: str
    stream: bool
    include_usage: bool
    max_tokens: int  # per choice, 0 = not given
    n: int


_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


def _messages(body: dict[str, Any], limits: Limits) -> None:
    messages = body.get("messages")
    if messages is None:
        raise invalid("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise _type_error("messages", "an array", messages)
    if not messages:
        raise invalid("Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty"
                      " array instead.", "messages", "empty_array")
    if len(messages) > limits.max_messages:
        raise invalid(f"Invalid 'messages': array too long. Expected an array with maximum length"
                      f" {limits.max_messages}, but got an array with length {len(messages)} instead.", "messages",
                      "array_above_max_length")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _type_error(where, "an object", message)
        role = message.get("role")
        if role is None:
            raise invalid(f"Missing required parameter: '{where}.role'.", f"{where}.role",
                          "missing_required_parameter")
        if role not in _ROLES:
            raise invalid(f"Invalid value: '{str(role)[:40]}'. Supported values are: {', '.join(map(repr, _ROLES))}.",
                          f"{where}.role", "invalid_value")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise _type_error(f"{where}.content", "one of a string or array of objects", content)
        if isinstance(content, list) and not all(isinstance(part, dict) for part in content):
            raise _type_error(f"{where}.content", "an array of objects", content)
        if "name" in message and not isinstance(message["name"], str):
            raise _type_error(f"{where}.name", "a string", message["name"])


def _tools(body: dict[str, Any]) -> None:
    tools = _optional(body, "tools", (list,), "an array")
    for i, tool in enumerate(tools or ()):
        if not isinstance(tool, dict):
            raise _type_error(f"tools[{i}]", "an object", tool)
        fn = tool.get("function")
        if tool.get("type", "function") == "function":
            if not isinstance(fn, dict):
                raise invalid(f"Missing required parameter: 'tools[{i}].function'.", f"tools[{i}].function",
                              "missing_required_parameter")
            if not isinstance(fn.get("name"), str) or not fn["name"]:
                raise invalid(f"Missing required parameter: 'tools[{i}].function.name'.", f"tools[{i}].function.name",
                              "missing_required_parameter")
    _optional(body, "tool_choice", (str, dict), "one of a string or object")
    functions = _optional(body, "functions", (list,), "an array")
    for i, fn in enumerate(functions or ()):
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise invalid(f"Missing required parameter: 'functions[{i}].name'.", f"functions[{i}].name",
                          "missing_required_parameter")
    _optional(body, "function_call", (str, dict), "one of a string or object")
    _optional(body, "response_format", (dict,), "an object")
    _optional(body, "parallel_tool_calls", (bool,), "a boolean")


def chat(body: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> Relayable:
    model = _model(body)
    _messages(body, limits)
    stream, include_usage = _stream(body)
    n = _optional_int(body, "n", 1, MAX_N) or 1
    max_tokens = _optional_int(body, "max_tokens", 1, MAX_INT32)
    max_completion = _optional_int(body, "max_completion_tokens", 1, MAX_INT32)
    _common_sampling(body)
    _tools(body)
    _optional(body, "logprobs", (bool,), "a boolean")
    _optional_int(body, "top_logprobs", 0, 20)
    return Relayable(model, stream, include_usage, max_completion or max_tokens or 0, n)


def _prompt_like(value: Any, param: str, *, required: bool) -> None:
    """A string, array of strings, array of tokens, or array of token arrays."""
    if value is None:
        if required:
            raise invalid(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
        return
    if isinstance(value, str):
        return
    expected = "one of a string, array of strings, array of integers, or array of arrays of integers"
    if not isinstance(value, list):
        raise _type_error(param, expected, value)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return
    if all(isinstance(v, str) for v in value):
        return
    if all(isinstance(v, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in v) for v in value):
        return
    raise _type_error(param, expected, value)


def completions(body: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> Relayable:
    model = _model(body)
    _prompt_like(body.get("prompt"), "prompt", required=True)
    stream, include_usage = _stream(body)
    n = _optional_int(body, "n", 1, MAX_N) or 1
    best_of = _optional_int(body, "best_of", 1, 20)
    if best_of is not None and best_of < n:
        raise invalid("best_of must be greater than or equal to n", "best_of")
    # The legacy endpoint's own default is 16 tokens.
    max_tokens = _optional_int(body, "max_tokens", 0, MAX_INT32)
    _optional(body, "suffix", (str,), "a string")
    _optional(body, "echo", (bool,), "a boolean")
    _optional_int(body, "logprobs", 0, 5)
    _common_sampling(body)
    return Relayable(model, stream, include_usage, 16 if max_tokens is None else max(max_tokens, 1), best_of or n)


def embeddings(body: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> Relayable:
    model = _model(body)
    value = body.get("input")
    _prompt_like(value, "input", required=True)
    if value == "" or value == [] or (isinstance(value, list) and any(v == "" or v == [] for v in value)):
        raise invalid("'$.input' is invalid. Please check the API reference: an input cannot be empty.", "input")
    if isinstance(value, list) and len(value) > 2048:
        raise invalid("Invalid 'input': array too long. Expected at most 2048 inputs.", "input",
                      "array_above_max_length")
    fmt = _optional(body, "encoding_format", (str,), "a string")
    if fmt is not None and fmt not in ("float", "base64"):
        raise invalid(f"Invalid value: '{fmt[:40]}'. Supported values are: 'float' and 'base64'.", "encoding_format",
                      "invalid_value")
    _optional_int(body, "dimensions", 1, 65536)
    _optional(body, "user", (str,), "a string")
    return Relayable(model, False, False, 0, 1)


def _metadata(body: dict[str, Any]) -> None:
    metadata = _optional(body, "metadata", (dict,), "an object")
    if metadata is None:
        return
    if len(metadata) > 16:
        raise invalid("Invalid 'metadata': too many properties. Expected an object with at most 16 properties, but"
                      f" got an object with {len(metadata)} properties instead.", "metadata",
                      "object_above_max_properties")
    for key, value in metadata.items():
        if len(key) > 64:
            raise invalid("Invalid 'metadata': keys may be at most 64 characters long.", "metadata")
        if not isinstance(value, str):
            raise _type_error(f"metadata.{key[:64]}", "a string", value)
        if len(value) > 512:
            raise invalid(f"Invalid 'metadata.{key[:64]}': string too long. Expected a string with maximum length 512.",
                          f"metadata.{key[:64]}", "string_above_max_length")


def _response_tools(body: dict[str, Any]) -> None:
    """Function tools need a name; every other kind (custom, web_search, namespace, ...) passes through."""
    tools = _optional(body, "tools", (list,), "an array")
    for i, tool in enumerate(tools or ()):
        if not isinstance(tool, dict):
            raise _type_error(f"tools[{i}]", "an object", tool)
        if tool.get("type") == "function" and (not isinstance(tool.get("name"), str) or not tool["name"]):
            raise invalid(f"Missing required parameter: 'tools[{i}].name'.", f"tools[{i}].name",
                          "missing_required_parameter")
    _optional(body, "tool_choice", (str, dict), "one of a string or object")
    _optional(body, "parallel_tool_calls", (bool,), "a boolean")


def _text_format(body: dict[str, Any]) -> None:
    text = _optional(body, "text", (dict,), "an object")
    fmt = text.get("format") if text else None
    if fmt is None:
        return
    if not isinstance(fmt, dict):
        raise _type_error("text.format", "an object", fmt)
    if fmt.get("type") == "json_schema":
        if not isinstance(fmt.get("name"), str) or not fmt["name"]:
            raise invalid("Missing required parameter: 'text.format.name'.", "text.format.name",
                          "missing_required_parameter")
        if not isinstance(fmt.get("schema"), dict):
            raise invalid("Missing required parameter: 'text.format.schema'.", "text.format.schema",
                          "missing_required_parameter")


def responses(body: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> Relayable:
    """POST /v1/responses. Input items of any type pass (unknown ones are the upstream's to judge)."""
    model = _model(body)
    value = body.get("input")
    previous = _optional(body, "previous_response_id", (str,), "a string")
    if value is None and not previous:
        raise invalid("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    if value is not None and not isinstance(value, (str, list)):
        raise _type_error("input", "one of a string or array of input items", value)
    if isinstance(value, list):
        if len(value) > limits.max_messages:
            raise invalid(f"Invalid 'input': array too long. Expected an array with maximum length"
                          f" {limits.max_messages}, but got an array with length {len(value)} instead.", "input",
                          "array_above_max_length")
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise _type_error(f"input[{i}]", "an object", item)
    _optional(body, "instructions", (str,), "a string")
    stream = _optional(body, "stream", (bool,), "a boolean") or False
    store = _optional(body, "store", (bool,), "a boolean")
    if _optional(body, "background", (bool,), "a boolean"):
        if stream:
            raise invalid("A background response cannot be streamed here: create it without 'stream' and GET"
                          " /v1/responses/{id} for its result.", "stream", "unsupported_value")
        if store is False:
            raise invalid("A background response must be stored: 'background' needs 'store' to be true.",
                          "background")
    max_output = _optional_int(body, "max_output_tokens", 16, MAX_INT32)
    _optional_number(body, "temperature", 0, 2)
    _optional_number(body, "top_p", 0, 1)
    _optional(body, "reasoning", (dict,), "an object")
    _optional(body, "user", (str,), "a string")
    _response_tools(body)
    _text_format(body)
    _metadata(body)
    return Relayable(model, stream, False, max_output or 0, 1)


# --- Anthropic's Messages API (/v1/messages) ------------------------------------------

_MESSAGE_ROLES = ("user", "assistant")


def _anthropic_messages(body: dict[str, Any], limits: Limits) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages: Field required (a non-empty array of messages)", "messages")
    if len(messages) > limits.max_messages:
        raise invalid(f"messages: at most {limits.max_messages} messages are allowed", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid(f"messages.{i}: Input should be an object", f"messages.{i}")
        if message.get("role") not in _MESSAGE_ROLES:
            raise invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'", f"messages.{i}.role")
        content = message.get("content")
        if not isinstance(content, (str, list)):
            raise invalid(f"messages.{i}.content: Input should be a string or an array of content blocks",
                          f"messages.{i}.content")
        for j, block in enumerate(content if isinstance(content, list) else ()):
            if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                raise invalid(f"messages.{i}.content.{j}: Input should be a content block with a type",
                              f"messages.{i}.content.{j}")


def messages(body: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> Relayable:
    """An Anthropic Messages request: what the hold needs, and the shape errors worth a 400 here."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model: Field required", "model")
    if len(model) > 256:
        raise invalid("model: String should have at most 256 characters", "model")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise invalid("max_tokens: Field required (an integer)", "max_tokens")
    if not 1 <= max_tokens <= MAX_INT32:
        raise invalid("max_tokens: Input should be greater than or equal to 1", "max_tokens")
    _anthropic_messages(body, limits)
    system = body.get("system")
    if system is not None and not isinstance(system, (str, list)):
        raise invalid("system: Input should be a string or an array of text blocks", "system")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid("stream: Input should be a valid boolean", "stream")
    for name, kind, expected in (("tools", list, "an array"), ("stop_sequences", list, "an array"),
                                 ("metadata", dict, "an object"), ("thinking", dict, "an object"),
                                 ("tool_choice", dict, "an object")):
        value = body.get(name)
        if value is not None and not isinstance(value, kind):
            raise invalid(f"{name}: Input should be {expected}", name)
    for i, tool in enumerate(body.get("tools") or ()):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise invalid(f"tools.{i}.name: Field required", f"tools.{i}.name")
    temperature = body.get("temperature")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                    or not 0 <= temperature <= 1):
        raise invalid("temperature: Input should be a number between 0 and 1", "temperature")
    return Relayable(model, bool(stream), False, max_tokens, 1)


def count_tokens(body: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> Relayable:
    """/v1/messages/count_tokens: a Messages request without max_tokens."""
    return messages({**body, "max_tokens": 1, "stream": False}, limits)
