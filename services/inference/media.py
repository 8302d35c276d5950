"""Images, audio and moderations: one call to an OpenAI-compatible channel, held and settled per unit.

An image is priced by its size and quality, speech by the 1,000 characters of its input, a
transcription or translation by the minute of audio, each from the model's price row (`units`),
and refused without one; moderations are priced by their input tokens. The hold covers the worst
case (every image asked for; the longer of the audio's header length and the longest its size
could play); the settlement counts what came back (the images returned, the duration the
upstream reports — a transcript is always fetched as verbose_json for it — or else the hold).
"""
from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from services.common import jsoncodec, metrics, multipart
from services.inference.adapters.base import Exchange
from services.inference.adapters.openai import bearer_headers
from services.inference.audio import held_seconds
from services.inference.billing_peer import BillingPeer, Hold, Settle, Units
from services.inference.channel import Channel
from services.inference.channels import ChannelBook
from services.inference.errors import InvalidRequest, ModelNotFound
from services.inference.inflight import InFlight
from services.inference.payloads import Endpoint, Usage
from services.inference.relay import Call, Reply, _final_error, _rejected, _status_of
from services.inference.tokens import count_input, count_text, encoding_for
from services.inference.upstream import Failure, Upstream, UpstreamError

log = logging.getLogger(__name__)

FORMS = frozenset({Endpoint.IMAGES_EDITS, Endpoint.IMAGES_VARIATIONS, Endpoint.AUDIO_TRANSCRIPTIONS,
                   Endpoint.AUDIO_TRANSLATIONS})
IMAGES = frozenset({Endpoint.IMAGES_GENERATIONS, Endpoint.IMAGES_EDITS, Endpoint.IMAGES_VARIATIONS})
TRANSCRIPTIONS = frozenset({Endpoint.AUDIO_TRANSCRIPTIONS, Endpoint.AUDIO_TRANSLATIONS})
# The transcript formats asked of the upstream as verbose_json (which reports the audio's
# `duration`, the figure charged) and converted back to what the client asked for.
CONVERTED_FORMATS = frozenset({"json", "text", "srt", "vtt"})


@dataclass(frozen=True)
class ContentType:
    """First item of a streamed reply that is not JSON (speech): its media type."""

    value: str


@dataclass(frozen=True)
class MediaReply(Reply):
    content_type: str = ""


@dataclass(frozen=True)
class _Prepared:
    body: dict[str, Any]            # the JSON body, or the form's plain fields
    form: multipart.Form | None     # a multipart call's form
    candidates: list[Channel]
    prompt_tokens: int              # the input's tokens (the price when no unit is priced)
    units: Units | None
    asked_format: str = ""          # a transcript's format as asked, when converted from verbose_json


def _int_field(body: dict[str, Any], name: str, default: int) -> int:
    value = body.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"Invalid '{name}': expected an integer.", param=name) from None


def _str_field(body: dict[str, Any], name: str, default: str) -> str:
    value = body.get(name)
    return value if isinstance(value, str) and value else default


def _image_units(body: dict[str, Any]) -> Units:
    n = _int_field(body, "n", 1)
    size = _str_field(body, "size", "1024x1024")
    quality = _str_field(body, "quality", "standard")
    if "/" in size or "/" in quality:
        raise InvalidRequest("Invalid 'size' or 'quality'.", param="size")
    return Units(f"image/{size}/{quality}", max(1, n), required=True, param="size")


def _moderation_text(value: Any) -> Any:
    """The text pieces of a moderation input (strings, or multimodal parts: images count nothing)."""
    if isinstance(value, list):
        return [str(p.get("text") or "") if isinstance(p, dict) else p if isinstance(p, str) else "" for p in value]
    return value if isinstance(value, str) else ""


def _reply_seconds(raw: bytes) -> int | None:
    """The audio's length as the upstream reports it: `usage.seconds` or verbose_json's `duration`."""
    try:
        obj = jsoncodec.loads(raw)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    usage = obj.get("usage")
    value = usage.get("seconds") if isinstance(usage, dict) and usage.get("type") == "duration" else None
    if value is None:
        value = obj.get("duration")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 10**7:
        return math.ceil(value)
    return None


def _timestamp(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def transcript_as(fmt: str, raw: bytes) -> tuple[bytes, str]:
    """A verbose_json transcript in the format the client asked for: json, text, srt or vtt."""
    try:
        obj = jsoncodec.loads(raw)
    except ValueError:
        raise UpstreamError(Failure.SERVER, "upstream sent a malformed reply") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        raise UpstreamError(Failure.SERVER, "upstream sent a reply without a transcript")
    text: str = obj["text"]
    if fmt == "json":
        return jsoncodec.dumps({"text": text}), "application/json"
    if fmt == "text":
        return (text + "\n").encode(), "text/plain; charset=utf-8"
    segments = [s for s in obj.get("segments") or [] if isinstance(s, dict)]
    if not segments:
        segments = [{"start": 0, "end": obj.get("duration") or 0, "text": text}]
    sep = "," if fmt == "srt" else "."
    cues = []
    for i, seg in enumerate(segments, 1):
        start, end = seg.get("start"), seg.get("end")
        start = start if isinstance(start, (int, float)) and not isinstance(start, bool) else 0
        end = end if isinstance(end, (int, float)) and not isinstance(end, bool) else start
        line = f"{_timestamp(start, sep)} --> {_timestamp(end, sep)}\n{str(seg.get('text') or '').strip()}\n"
        cues.append(f"{i}\n{line}" if fmt == "srt" else line)
    head = "" if fmt == "srt" else "WEBVTT\n\n"
    return (head + "\n".join(cues)).encode(), "text/plain; charset=utf-8"


def _images_in(raw: bytes) -> int:
    try:
        obj = jsoncodec.loads(raw)
    except ValueError:
        raise UpstreamError(Failure.SERVER, "upstream sent a malformed reply") from None
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, list):
        raise UpstreamError(Failure.SERVER, "upstream sent a reply without images")
    return len(data)


class Media:
    def __init__(self, book: ChannelBook, upstream: Upstream, billing: BillingPeer,
                 calls: InFlight | None = None) -> None:
        self.book = book
        self.upstream = upstream
        self.billing = billing
        self.in_flight = 0
        # The relay's: a call cancelled once it is `stopping` was cut by this process's shutdown.
        self.calls = calls if calls is not None else InFlight()

    # --- before the call -----------------------------------------------------------------

    async def _prepare(self, call: Call) -> _Prepared:
        if call.allowed and call.model not in call.allowed:
            raise ModelNotFound(f"The model `{call.model}` does not exist or you do not have access to it.",
                                param="model")
        form = None
        if call.endpoint in FORMS:
            try:
                form = multipart.parse(call.body, call.content_type)
            except multipart.FormError as exc:
                raise InvalidRequest(f"The request body must be multipart/form-data: {exc}.") from None
            body: Any = form.fields()
        else:
            try:
                body = jsoncodec.loads(call.body)
            except ValueError:
                body = None
            if not isinstance(body, dict):
                raise InvalidRequest("The request body must be a JSON object.")
        candidates = await self.book.plan_fresh(call.model, call.endpoint, body)
        enc = encoding_for(call.model)
        if call.endpoint in IMAGES:
            return _Prepared(body, form, candidates, count_text(str(body.get("prompt") or ""), enc),
                             _image_units(body))
        if call.endpoint is Endpoint.AUDIO_SPEECH:
            # Audio output is priced by the operator or refused (DESIGN §6): input tokens alone
            # would leave the synthesis itself unpaid.
            text = str(body.get("input") or "")
            return _Prepared(body, form, candidates, count_text(text, enc),
                             Units("1k_characters", len(text), required=True, param="model"))
        if call.endpoint in TRANSCRIPTIONS:
            assert form is not None
            files = form.files("file")
            if not files:
                raise InvalidRequest("Missing required parameter: 'file'.", param="file")
            if len(files) > 1:
                raise InvalidRequest("Invalid 'file': send one audio file.", param="file")
            data = files[0].data
            # Held for as long as it could play (audio.held_seconds: PCM WAV exactly, anything else
            # at least as long as its size allows, whatever its header states).
            worst = max(math.ceil(await asyncio.to_thread(held_seconds, data)), 1)
            asked = _str_field(body, "response_format", "json")
            return _Prepared(body, form, candidates, count_text(str(body.get("prompt") or ""), enc),
                             Units("minute", worst, required=True, param="model"),
                             asked if asked in CONVERTED_FORMATS else "")
        return _Prepared(body, form, candidates, count_input(_moderation_text(body.get("input")), enc), None)

    async def _reserve(self, call: Call, prepared: _Prepared) -> Hold:
        return await self.billing.reserve(
            request_id=call.request_id, user_id=call.user_id, key_id=call.key_id, credit_limit=call.credit_limit,
            model=self.book.price_model(call.model), prompt_tokens=prepared.prompt_tokens, max_tokens=0, choices=1,
            try_number=call.try_number, units=prepared.units, input_only=True)

    def _exchange(self, call: Call, prepared: _Prepared, channel: Channel) -> Exchange:
        model = channel.upstream_model(call.model)
        headers = bearer_headers(channel)
        if prepared.form is not None:
            form = prepared.form.with_value("model", model)
            if prepared.asked_format:
                form = form.with_value("response_format", "verbose_json")
            body, headers["Content-Type"] = form.encode()
        else:
            body = jsoncodec.dumps({**prepared.body, "model": model})
        if call.endpoint is Endpoint.AUDIO_SPEECH or call.endpoint in TRANSCRIPTIONS:
            headers["Accept"] = "*/*"  # audio, or a transcript as text, srt or vtt
        return Exchange(channel, channel.base_url + call.endpoint.value, headers, body)

    @staticmethod
    def _held(prepared: _Prepared, hold: Hold) -> Usage:
        """What the hold counted: every image asked for, all the input, the audio's length or its worst case."""
        if not hold.unit:
            return Usage(prepared.prompt_tokens, 0)
        return Usage(prepared.units.count if prepared.units else 0, 0)

    def _used(self, call: Call, prepared: _Prepared, hold: Hold, raw: bytes) -> Usage:
        """What the call is charged for: the things its unit counts, or its input tokens."""
        if not hold.unit:
            return Usage(prepared.prompt_tokens, 0)
        if call.endpoint in IMAGES:
            return Usage(_images_in(raw), 0)
        if call.endpoint in TRANSCRIPTIONS:
            # The upstream's figure, never the header's (the client writes that); without one, the worst case.
            reported = _reply_seconds(raw)
            return Usage(reported, 0) if reported is not None else self._held(prepared, hold)
        return self._held(prepared, hold)

    def _rewrite(self, call: Call, prepared: _Prepared, raw: bytes, content_type: str) -> tuple[bytes, str]:
        """Replies name the model the client asked for (a moderation's `model`); a transcript
        fetched as verbose_json goes back in the format the client asked for."""
        if prepared.asked_format:
            return transcript_as(prepared.asked_format, raw)
        if call.endpoint is not Endpoint.MODERATIONS:
            return raw, content_type
        try:
            obj = jsoncodec.loads(raw)
        except ValueError:
            raise UpstreamError(Failure.SERVER, "upstream sent a malformed reply") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("results"), list):
            raise UpstreamError(Failure.SERVER, "upstream sent a reply without results")
        obj["model"] = call.model
        return jsoncodec.dumps(obj), content_type

    def _heartbeat(self, call: Call, hold: Hold) -> asyncio.Task[None]:
        async def beat() -> None:
            while hold.ttl_s > 0:
                await asyncio.sleep(max(0.5, hold.ttl_s / 3))
                if not await self.billing.keep_alive(call.request_id, call.try_number):
                    return
        return asyncio.create_task(beat())

    async def _settle(self, call: Call, usage: Usage, status: str, source: str, channel_id: int,
                      unbilled: int = 0) -> None:
        s = Settle(call.request_id, usage.prompt, 0, status, source, channel_id, call.try_number,
                   unbilled_tokens=unbilled)
        if status == "client_gone":
            self.billing.settle_later(s)
        elif status == "complete":
            await self.billing.settle_soon(s)  # the answer goes out first; its settlement follows (issue 16)
        else:
            await self.billing.settle(s)

    async def _settle_failed(self, call: Call, prepared: _Prepared, hold: Hold, exc: BaseException,
                             sent_to: int) -> None:
        """Settle a call that did not complete (`sent_to`: the channel it is at upstream, or 0)."""
        status = _status_of(exc)
        if status == "client_gone" and self.calls.stopping:
            # Not its client: this process cut it, its shutdown's grace over (InFlight.cut). A
            # server failure is free for the client, who is told to retry; what the upstream may
            # still bill for it (the hold's count) is the operator's, counted unbilled.
            unbilled = self._held(prepared, hold).prompt if sent_to else 0
            if unbilled:
                metrics.UNBILLED.labels(Failure.SERVER.value).inc(unbilled)
            await self._settle(call, Usage(0, 0), "server_error", "", 0, unbilled)
        elif status == "client_gone" and sent_to:
            # Sent upstream and then left by its client: the upstream did the work, it is paid for.
            await self._settle(call, self._held(prepared, hold), status, "counted", sent_to)
        else:
            await self._settle(call, Usage(0, 0), status, "", 0)

    # --- the call --------------------------------------------------------------------------

    async def _answer(self, call: Call, prepared: _Prepared, sent: list[int], *, stream: bool
                      ) -> tuple[Channel, Any]:
        """The first channel's 200 answer (failover before anything reached the client); `sent`
        holds the channel the request is at, for a client who leaves meanwhile."""
        failures: list[UpstreamError] = []
        for channel in prepared.candidates:
            attempt = self.book.take(channel)
            if attempt is None:
                continue
            try:
                exchange = self._exchange(call, prepared, channel)
                sent[0] = channel.id
                answer = await self.upstream.post(exchange, stream=stream)
            except UpstreamError as e:
                sent[0] = 0
                if not e.kind.retryable:
                    self.book.done(attempt)
                    raise _rejected(e) from None
                self.book.done(attempt, f"{e.kind.value}: {e.message}", auth_failure=e.kind is Failure.AUTH)
                log.warning("channel %s failed (%s); trying the next", channel.id, e.kind.value)
                failures.append(e)
                continue
            except BaseException:
                self.book.done(attempt)
                raise
            self.book.done(attempt)
            return channel, answer
        raise _final_error(failures, call.model)

    async def unary(self, call: Call) -> MediaReply:
        self.in_flight += 1
        try:
            prepared = await self._prepare(call)
            hold = await self._reserve(call, prepared)
            beat = self._heartbeat(call, hold)
            sent = [0]
            try:
                channel, answer = await self._answer(call, prepared, sent, stream=False)
                raw, content_type = await self.upstream.read_body(answer)
                reply, content_type = self._rewrite(call, prepared, raw, content_type)
                usage = self._used(call, prepared, hold, raw)
            except BaseException as exc:
                await self._settle_failed(call, prepared, hold, exc, sent[0])
                if isinstance(exc, UpstreamError):
                    raise _final_error([exc], call.model) from None
                raise
            finally:
                beat.cancel()
            self.calls.answered()  # charged from here on: a shutdown's cut lets it answer
            await self._settle(call, usage, "complete", "counted", channel.id)
            return MediaReply(reply, usage.prompt, 0, content_type=content_type)
        finally:
            self.in_flight -= 1

    async def stream(self, call: Call) -> AsyncGenerator[bytes | ContentType | tuple[int], None]:
        """Speech: the audio's bytes as the upstream sends them, then (units or tokens,), the
        settlement following. A client that leaves once the request is upstream pays for the whole input (the upstream
        synthesises it all); an upstream that breaks off costs nothing, and so does a call this
        process cuts as it shuts down (server_error, the input counted unbilled)."""
        self.in_flight += 1
        settled = False
        try:
            prepared = await self._prepare(call)
            hold = await self._reserve(call, prepared)
            beat = self._heartbeat(call, hold)
            sent = [0]
            usage = self._held(prepared, hold)
            try:
                channel, answer = await self._answer(call, prepared, sent, stream=True)
                channel_id = channel.id
                yield ContentType(answer.headers.get("Content-Type", "application/octet-stream"))
                async for piece in self.upstream.pieces(answer):
                    yield piece
                settled = True
                self.calls.answered()  # charged in full: a shutdown's cut lets it end
                await self._settle(call, usage, "complete", "counted", channel_id)
                yield (usage.prompt,)
            except BaseException as exc:
                if not settled:
                    settled = True
                    await self._settle_failed(call, prepared, hold, exc, sent[0])
                if isinstance(exc, UpstreamError):
                    raise _final_error([exc], call.model) from None
                raise
            finally:
                beat.cancel()
        finally:
            self.in_flight -= 1
