"""Images, audio and moderations under /v1: checked here, relayed and priced by inference (media.py)."""
from __future__ import annotations

import re
from typing import Any

import grpc
from aiohttp import web

from chatkore.v1 import common_pb2, inference_pb2
from edge import inputs, retry, sse, validate
from edge.errors import OpenAIError, invalid
from edge.openai_api import authenticate
from edge.state import CONFIG, LIMITS, PEERS
from services.common import multipart

MAX_IMAGES = 10
MAX_PROMPT_CHARS = 32_000
MAX_SPEECH_CHARS = 4096
SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
TRANSCRIPT_FORMATS = ("json", "text", "srt", "verbose_json", "vtt", "diarized_json")


def _string(body: dict[str, Any], name: str, *, required: bool = False, limit: int = 256,
            choices: tuple[str, ...] | None = None) -> str | None:
    value = body.get(name)
    if value is None or (value == "" and not required):
        if required:
            raise invalid(f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
        return None
    if not isinstance(value, str):
        raise invalid(f"Invalid type for '{name}': expected a string.", name, "invalid_type")
    if required and not value.strip():
        raise invalid(f"Invalid '{name}': empty string.", name, "empty_string")
    if len(value) > limit:
        raise invalid(f"Invalid '{name}': string too long. Expected a string with maximum length {limit}, but got a"
                      f" string with length {len(value)} instead.", name, "string_above_max_length")
    if choices is not None and value not in choices:
        raise invalid(f"Invalid value: '{value[:40]}'. Supported values are: {', '.join(repr(c) for c in choices)}.",
                      name, "invalid_value")
    return value


def _count(body: dict[str, Any], name: str, low: int, high: int) -> None:
    """An integer field, in JSON or as a form's text."""
    value = body.get(name)
    if value is None or value == "":
        return
    if isinstance(value, str):
        if not re.fullmatch(r"-?[0-9]{1,12}", value):  # ASCII digits only: "²" and "--5" are no integers
            raise invalid(f"Invalid type for '{name}': expected an integer.", name, "invalid_type")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"Invalid type for '{name}': expected an integer.", name, "invalid_type")
    if not low <= value <= high:
        raise invalid(f"Invalid '{name}': expected an integer from {low} to {high}, but got {value} instead.", name,
                      "integer_above_max_value" if value > high else "integer_below_min_value")


def _number(body: dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None or value == "":
        return
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise invalid(f"Invalid type for '{name}': expected a number.", name, "invalid_type") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise invalid(f"Invalid '{name}': expected a number from {low:g} to {high:g}.", name, "invalid_value")


def _no_stream(body: dict[str, Any]) -> None:
    stream = body.get("stream")
    if stream is True or (isinstance(stream, str) and stream.lower() == "true"):
        raise invalid("Streaming is not supported for this endpoint on this gateway.", "stream", "unsupported_value")


def _image_options(body: dict[str, Any]) -> None:
    _count(body, "n", 1, MAX_IMAGES)
    _string(body, "size", limit=32)
    _string(body, "quality", limit=32)
    _string(body, "style", limit=32)
    _string(body, "response_format", choices=("url", "b64_json"))
    _string(body, "user", limit=256)
    _no_stream(body)


# --- the checks of each endpoint: the model the call is for ------------------------------------


def images_generation(body: dict[str, Any]) -> str:
    model = _string(body, "model") or "dall-e-2"  # OpenAI's default
    _string(body, "prompt", required=True, limit=MAX_PROMPT_CHARS)
    _image_options(body)
    return model


def image_form(form: multipart.Form, *, prompt: bool) -> str:
    fields = form.fields()
    model = _string(fields, "model") or "dall-e-2"
    if prompt:
        _string(fields, "prompt", required=True, limit=MAX_PROMPT_CHARS)
    if not form.files("image"):
        raise invalid("Missing required parameter: 'image'.", "image", "missing_required_parameter")
    _image_options(fields)
    return model


def speech(body: dict[str, Any]) -> str:
    model = _string(body, "model", required=True)
    assert model is not None
    _string(body, "input", required=True, limit=MAX_SPEECH_CHARS)
    voice = body.get("voice")
    if voice is None:
        raise invalid("Missing required parameter: 'voice'.", "voice", "missing_required_parameter")
    if not isinstance(voice, (str, dict)):
        raise invalid("Invalid type for 'voice': expected a string or an object.", "voice", "invalid_type")
    _string(body, "response_format", choices=SPEECH_FORMATS)
    _string(body, "instructions", limit=MAX_SPEECH_CHARS)
    _number(body, "speed", 0.25, 4.0)
    return model


def transcription(form: multipart.Form) -> str:
    fields = form.fields()
    model = _string(fields, "model", required=True)
    assert model is not None
    if not form.files("file"):
        raise invalid("Missing required parameter: 'file'.", "file", "missing_required_parameter")
    if len(form.files("file")) > 1:
        raise invalid("Invalid 'file': send one audio file.", "file", "invalid_value")
    _string(fields, "response_format", choices=TRANSCRIPT_FORMATS)
    _string(fields, "language", limit=16)
    _string(fields, "prompt", limit=MAX_PROMPT_CHARS)
    _number(fields, "temperature", 0, 1)
    _no_stream(fields)
    return model


def moderation(body: dict[str, Any]) -> str:
    model = _string(body, "model") or "omni-moderation-latest"  # OpenAI's default
    value = body.get("input")
    if value is None or value == "" or value == []:
        raise invalid("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    if isinstance(value, list):
        if len(value) > 2048 or not all(isinstance(v, (str, dict)) for v in value):
            raise invalid("Invalid 'input': expected a string, an array of strings or of content parts.", "input")
    elif not isinstance(value, str):
        raise invalid("Invalid type for 'input': expected a string or an array.", "input", "invalid_type")
    return model


# --- the relay -----------------------------------------------------------------------------------


async def _form(request: web.Request) -> tuple[bytes, multipart.Form]:
    content_type = request.headers.get("Content-Type", "")
    if not multipart.is_form(content_type):
        raise OpenAIError(415, "This endpoint takes a multipart/form-data upload (Content-Type: multipart/form-data).",
                          code="unsupported_media_type")
    raw = await inputs.read(request, json_budget=False)
    try:
        return raw, multipart.parse(raw, content_type)
    except multipart.FormError as exc:
        raise invalid(f"The request body is not a valid multipart/form-data form: {exc}.") from None


def _reply_headers(content_type: str) -> dict[str, str]:
    return {"Content-Type": content_type or "application/json"}


async def _relay(request: web.Request, endpoint: int, model: str, raw: bytes, body: dict[str, Any],
                 content_type: str = "", *, stream: bool = False) -> web.StreamResponse:
    key = request["media_key"]
    cfg = request.app[CONFIG]
    limits = request.app[LIMITS]
    admission = await limits.admit(key, body, validate.Relayable(model, False, False, 0, 1))
    request["model"] = model
    message = inference_pb2.RelayRequest(
        caller=common_pb2.Caller(user_id=key.user_id, key_id=key.key_id, models=key.models,
                                 credit_limit=key.credit_limit, request_id=request["request_id"]),
        endpoint=endpoint, model=model, body=raw, stream=stream, n=1, content_type=content_type, try_number=1)
    inference = request.app[PEERS].inference
    request["relayed"] = True  # settled after the reply (edge/settled.py)
    headers = admission.headers if admission else {}
    used: list[int] = []
    try:
        if stream:  # speech: the audio's bytes as they come, under the upstream's Content-Type
            return await sse.relay(request, lambda n: inference.RelayStream(retry.numbered(message, n),
                                                                            timeout=cfg.stream_deadline_s),
                                   headers=headers, on_outcome=lambda o: used.append(o.usage.total_tokens),
                                   framing=sse.RawFraming())
        reply = await inference.Relay(message, timeout=cfg.relay_deadline_s)
        used.append(reply.usage.total_tokens)
        return web.Response(body=reply.body, headers={**headers, **_reply_headers(reply.content_type)})
    except (grpc.aio.AioRpcError, OpenAIError):
        used.append(0)
        raise
    finally:
        limits.settle(admission, used[0] if used else None)


async def _json_call(request: web.Request, endpoint: int, check: Any, *, stream: bool = False) -> web.StreamResponse:
    request["media_key"] = await authenticate(request)
    raw, body = await inputs.relay_body(request)
    return await _relay(request, endpoint, check(body), raw, body, stream=stream)


async def _form_call(request: web.Request, endpoint: int, check: Any) -> web.StreamResponse:
    request["media_key"] = await authenticate(request)
    raw, form = await _form(request)
    model = check(form)
    return await _relay(request, endpoint, model, raw, form.fields(), request.headers["Content-Type"])


async def images_generations(request: web.Request) -> web.StreamResponse:
    return await _json_call(request, inference_pb2.IMAGES_GENERATIONS, images_generation)


async def images_edits(request: web.Request) -> web.StreamResponse:
    return await _form_call(request, inference_pb2.IMAGES_EDITS, lambda f: image_form(f, prompt=True))


async def images_variations(request: web.Request) -> web.StreamResponse:
    return await _form_call(request, inference_pb2.IMAGES_VARIATIONS, lambda f: image_form(f, prompt=False))


async def audio_speech(request: web.Request) -> web.StreamResponse:
    return await _json_call(request, inference_pb2.AUDIO_SPEECH, speech, stream=True)


async def audio_transcriptions(request: web.Request) -> web.StreamResponse:
    return await _form_call(request, inference_pb2.AUDIO_TRANSCRIPTIONS, transcription)


async def audio_translations(request: web.Request) -> web.StreamResponse:
    return await _form_call(request, inference_pb2.AUDIO_TRANSLATIONS, transcription)


async def moderations(request: web.Request) -> web.StreamResponse:
    return await _json_call(request, inference_pb2.MODERATIONS, moderation)
