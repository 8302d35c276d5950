"""One OpenAI call end to end: count, hold, route with failover, relay, settle."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from services.common import jsoncodec, metrics
from services.common.errors import ServiceError
from services.inference.adapters import ADAPTERS, Exchange, Outgoing
from services.inference.billing_peer import BillingPeer, Hold, Settle
from services.inference.channel import Channel
from services.inference.channel_health import Attempt
from services.inference.channels import ChannelBook
from services.inference.errors import (
    InvalidRequest,
    ModelNotFound,
    NoAvailableChannel,
    RequestTooLarge,
    UpstreamFailed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimedOut,
)
from services.inference.failures import scrub
from services.inference.inflight import InFlight
from services.inference.messages import MessagesTally
from services.inference.payloads import (
    Endpoint,
    StreamTally,
    Usage,
    completion_texts,
    count_prompt,
    dumps,
    price_options,
    rewrite_reply,
    usage_of,
)
from services.inference.responses import call as responses
from services.inference.responses.background import Running
from services.inference.responses.book import ResponseBook
from services.inference.responses.events import ResponsesTally
from services.inference.responses.reply import Envelope, output_texts, usage_object
from services.inference.tokens import count_choices_text, count_input_audio
from services.inference.upstream import Failure, Upstream, UpstreamError

log = logging.getLogger(__name__)

AnyTally = StreamTally | ResponsesTally | MessagesTally  # what a stream has delivered, in its API's terms

LARGE_BODY = 256 * 1024  # bytes of request above which the prompt is counted off the event loop


@dataclass(frozen=True)
class Call:
    request_id: str
    user_id: int
    key_id: int
    credit_limit: int
    allowed: tuple[str, ...]   # the key's model allowlist; empty = all
    endpoint: Endpoint
    model: str
    body: bytes
    stream: bool
    include_usage: bool
    max_tokens: int            # per choice; 0 = not given
    n: int
    try_number: int = 0        # the edge's try at the call (RelayRequest.try_number); 0 = not numbered
    forward_headers: tuple[tuple[str, str], ...] = ()  # client headers for an upstream of its dialect
    content_type: str = ""     # the body's media type when it is not JSON (a multipart upload)


@dataclass(frozen=True)
class Reply:
    """A call's answer; its settlement follows it (BillingPeer.settle_soon), so no charge here."""

    body: bytes
    prompt_tokens: int
    completion_tokens: int
    capped_max_tokens: int = 0  # the budget the balance cut the call to (0: not cut)


@dataclass(frozen=True)
class Capped:
    """First item of a stream whose completion budget the balance cut: the budget sent."""

    max_tokens: int


@dataclass(frozen=True)
class Outcome:
    prompt_tokens: int
    completion_tokens: int
    status: str


def _final_error(failures: list[UpstreamError], model: str) -> ServiceError:
    """What the client hears when no eligible channel answered."""
    if not failures:
        return NoAvailableChannel(f"No upstream can serve `{model}` right now. Try again shortly.",
                                  retry_after_s=1.0)
    kinds = {f.kind for f in failures}
    if kinds == {Failure.RATE_LIMITED}:
        wait = min((f.retry_after_s for f in failures if f.retry_after_s), default=1.0)
        return UpstreamRateLimited("The upstream provider is rate limiting requests; retry after a short wait.",
                                   retry_after_s=max(1.0, wait))
    if kinds == {Failure.TIMEOUT}:
        return UpstreamTimedOut("The upstream provider did not answer in time.")
    return UpstreamFailed("The upstream provider failed to answer. Please retry.")


def _rejected(e: UpstreamError) -> UpstreamRejected:
    code = e.error.get("code")
    return UpstreamRejected(
        e.message,
        http_status=e.status,
        type=str(e.error.get("type") or "invalid_request_error"),
        code=str(code) if code is not None else "",
        param=str(e.error.get("param") or ""),
    )


@dataclass(frozen=True)
class _Prepared:
    body: dict[str, Any]
    candidates: list[Channel]
    prompt_tokens: int
    responses: responses.ResponsesCall | None = None  # a Responses API call, its history resolved
    audio_tokens: int = 0  # of prompt_tokens, those of input_audio parts (priced as audio when counted)


def _status_of(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return "client_gone"
    if isinstance(exc, UpstreamTimedOut):
        return "upstream_timeout"
    if isinstance(exc, UpstreamRejected):
        return "upstream_rejected"
    return "upstream_error"


class Relay:
    def __init__(self, book: ChannelBook, upstream: Upstream, billing: BillingPeer, *, max_stream_s: float,
                 responses: ResponseBook | None = None, max_json_nodes: int = 100_000) -> None:
        self.book = book
        self.max_json_nodes = max_json_nodes
        self.upstream = upstream
        self.billing = billing
        self.responses = responses
        self.max_stream_s = max_stream_s
        self.in_flight = 0  # calls between their start and their settlement (GetStats)
        self.running = Running(responses) if responses is not None else None  # background responses
        self.calls = InFlight()  # the calls being served, cut by a shutdown past its grace

    async def _prepare(self, call: Call) -> _Prepared:
        if call.allowed and call.model not in call.allowed:
            raise ModelNotFound(f"The model `{call.model}` does not exist or you do not have access to it.",
                                param="model")
        try:
            # Counted on the bytes first: a body of a million empty objects is refused, not built.
            jsoncodec.check_containers(call.body, self.max_json_nodes)
        except jsoncodec.TooManyContainers as exc:
            raise RequestTooLarge(f"The request body is too complex: it holds more than {exc.budget} JSON objects"
                                  " and arrays, the most this server accepts.") from None
        try:
            body = jsoncodec.loads(call.body)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise InvalidRequest("The request body must be a JSON object.")
        resp = None
        counted, counted_body = call.endpoint, body
        if call.endpoint is Endpoint.RESPONSES:
            if self.responses is None:
                raise InvalidRequest("The Responses API is not available here.")
            resp = await responses.prepare(self.responses, user_id=call.user_id, request_id=call.request_id,
                                           model=call.model, body=body)
            # Every kind of channel can carry it; an Anthropic one only what its chat translation can.
            counted, counted_body = Endpoint.CHAT, resp.chat_body
        candidates = await self.book.plan_fresh(call.model, counted, counted_body)
        audio = count_input_audio(counted_body.get("messages")) if counted is Endpoint.CHAT else 0
        if len(call.body) < LARGE_BODY:
            return _Prepared(body, candidates, count_prompt(counted, counted_body, call.model), resp, audio)
        # Counting megabytes takes tiktoken a noticeable time; it releases the GIL, so a
        # thread keeps every other call on this loop moving meanwhile.
        prompt_tokens = await asyncio.to_thread(count_prompt, counted, counted_body, call.model)
        return _Prepared(body, candidates, prompt_tokens, resp, audio)

    async def _reserve(self, call: Call, prompt_tokens: int, body: dict[str, Any]) -> Hold:
        tier, features = price_options(body)
        return await self.billing.reserve(
            request_id=call.request_id, user_id=call.user_id, key_id=call.key_id, credit_limit=call.credit_limit,
            model=self.book.price_model(call.model), prompt_tokens=prompt_tokens, max_tokens=call.max_tokens,
            choices=call.n, try_number=call.try_number, service_tier=tier, features=features,
        )

    def _exchange(self, call: Call, body: dict[str, Any], channel: Channel, hold: Hold,
                  resp: responses.ResponsesCall | None = None) -> Exchange:
        if resp is not None:
            return responses.exchange(channel, resp, upstream_model=channel.upstream_model(call.model),
                                      stream=call.stream, budget=hold.completion_budget, capped=hold.budget_capped)
        out = Outgoing(call.endpoint, body, channel.upstream_model(call.model), call.model, call.stream,
                       hold.completion_budget, hold.budget_capped, dict(call.forward_headers))
        return ADAPTERS[channel.type].exchange(channel, out)

    async def count(self, call: Call) -> int:
        """The prompt tokens the call would be held for; nothing is held or sent."""
        return (await self._prepare(call)).prompt_tokens

    # --- unary ----------------------------------------------------------------------

    async def unary(self, call: Call) -> Reply:
        self.in_flight += 1
        try:
            return await self._unary(call)
        finally:
            self.in_flight -= 1

    async def _unary(self, call: Call) -> Reply:
        prepared = await self._prepare(call)
        if prepared.responses is not None and prepared.responses.background:
            stored = await self._stored(prepared.responses)
            if stored is not None:  # a retried call: its first try runs it and holds its credits
                return Reply(dumps(stored), 0, 0, 0)
        hold = await self._reserve(call, prepared.prompt_tokens, prepared.body)
        if prepared.responses is not None and prepared.responses.background:
            return await self._queue(call, prepared, hold)
        beat = self._heartbeat(call, hold)
        try:
            return await self._unary_held(call, prepared, hold)
        finally:
            beat.cancel()

    def _heartbeat(self, call: Call, hold: Hold) -> asyncio.Task[None]:
        """Keep a live call's hold from the sweeper: its deadline is pushed forward every third
        of its lifetime until the call ends (the caller cancels the task)."""
        return asyncio.create_task(self._beat(call, hold.ttl_s))

    async def _beat(self, call: Call, ttl_s: int) -> None:
        if ttl_s <= 0:
            return
        while True:
            await asyncio.sleep(max(0.5, ttl_s / 3))
            if not await self.billing.keep_alive(call.request_id, call.try_number):
                return  # settled, released, or taken over by a later try: nothing to keep

    async def _unary_held(self, call: Call, prepared: _Prepared, hold: Hold) -> Reply:
        body, candidates, prompt_tokens = prepared.body, prepared.candidates, prepared.prompt_tokens
        sent = _Sent(prompt_tokens)
        try:
            obj, channel = await self._first_answer(call, body, candidates, hold, prepared.responses, sent)
        except BaseException as exc:
            status = _status_of(exc)
            if status == "client_gone" and self._stopped_by_server(prepared):
                # The server stopped the call (a background response, or a call past the shutdown's
                # grace). A server failure is free for the client; what the upstream may bill is
                # counted for the operator.
                if sent.channel_id:
                    sent.failed(Failure.SERVER)
                self.billing.settle_later(_settle(call, Usage(0, 0), "server_error", "", 0, sent.unbilled))
            elif status == "client_gone" and sent.channel_id:
                # The request reached the upstream, which bills the prompt whether or not
                # anyone waits for its answer: the client who left pays it.
                await self._close(_settle(call, Usage(prompt_tokens, 0, audio_prompt=prepared.audio_tokens), status,
                                          "counted", sent.channel_id, sent.unbilled))
            else:  # nothing was delivered: the hold is released in full
                await self._close(_settle(call, Usage(0, 0), status, "", 0, sent.unbilled))
            raise
        reported = usage_of(obj, call.endpoint)
        if reported is not None and reported.prompt > 0:
            usage, source = reported, "upstream"
        else:
            texts = output_texts(obj) if prepared.responses else completion_texts(call.endpoint, obj)
            completion = 0 if call.endpoint is Endpoint.EMBEDDINGS else count_choices_text(texts, call.model)
            usage, source = Usage(prompt_tokens, completion, audio_prompt=prepared.audio_tokens), "counted"
        # The answer goes out first; its settlement follows on its own (drained at shutdown).
        self.calls.answered()  # charged from here on: a shutdown's cut lets it answer
        await self.billing.settle_soon(_settle(call, usage, "complete", source, channel.id, sent.unbilled))
        if prepared.responses is not None:
            response = prepared.responses.envelope.adopt(obj)
            response["usage"] = usage_object(usage.prompt, usage.completion, usage.cached_prompt, usage.reasoning)
            await self._keep(prepared.responses, response)
            return Reply(dumps(response), usage[0], usage[1], _capped(hold))
        reply = rewrite_reply(call.endpoint, obj, model=call.model, request_id=call.request_id, usage=usage,
                              counted=source == "counted")
        return Reply(reply, usage[0], usage[1], _capped(hold))

    # --- Responses in the background ------------------------------------------------------

    async def _queue(self, call: Call, prepared: _Prepared, hold: Hold) -> Reply:
        """A background response: held like any call, stored as queued, answered at once, and run
        by a task of this process; GET shows it as it goes, and it is billed as if the client waited."""
        resp = prepared.responses
        assert resp is not None and self.responses is not None and self.running is not None
        queued = resp.envelope.response("queued", [])
        try:
            fresh = await self.responses.keep(user_id=resp.user_id, model=resp.envelope.model, items=resp.items,
                                              response=queued)
        except BaseException:
            await self._close(_settle(call, Usage(0, 0), "upstream_error", "", 0))  # nothing ran: release
            raise
        if not fresh:
            # A try at the same call stored it a moment ago and runs it: one runner, not two.
            log.warning("background response %s is stored already: not run twice", resp.envelope.id)
            return Reply(dumps(await self._stored(resp) or queued), 0, 0, 0)
        self.running.start(resp.envelope.id, self._run_in_background(call, prepared, hold))
        return Reply(dumps(queued), 0, 0, 0)

    async def _stored(self, resp: responses.ResponsesCall) -> dict[str, Any] | None:
        """The background response stored under this call's id (by an earlier try), if any."""
        assert self.responses is not None
        try:
            return await self.responses.get(resp.user_id, resp.envelope.id)
        except ServiceError:
            return None

    def _stopped_by_server(self, prepared: _Prepared) -> bool:
        """A call cancelled by a shutdown, not by its client: a background response stopped by it, or
        any other call still running once the grace was over (InFlight.cut)."""
        resp = prepared.responses
        if resp is None or not resp.background:
            return self.calls.stopping
        return (self.running is not None and self.running.stopping
                and resp.envelope.id not in self.running.cancelled)

    async def _run_in_background(self, call: Call, prepared: _Prepared, hold: Hold) -> None:
        resp = prepared.responses
        assert resp is not None and self.responses is not None and self.running is not None
        envelope = resp.envelope
        self.in_flight += 1
        beat = self._heartbeat(call, hold)
        try:
            if not await self.responses.finish(envelope.id, envelope.response("in_progress", [])):
                # Cancelled by its user while queued: nothing went upstream, the hold is released.
                await self._close(_settle(call, Usage(0, 0), "cancelled", "", 0))
                return
            await self._unary_held(call, prepared, hold)  # its _keep stores the completed response
        except asyncio.CancelledError:
            if envelope.id not in self.running.cancelled:  # not its user's cancel: the process is stopping
                await self._fail(envelope, "server_error", "The server stopped while the response was running.")
            raise
        except ServiceError as exc:
            await self._fail(envelope, exc.reason.lower(), exc.message)
        except Exception:
            log.exception("background response %s failed", envelope.id)
            await self._fail(envelope, "server_error", "The response failed on the server.")
        finally:
            beat.cancel()
            self.in_flight -= 1

    async def _fail(self, envelope: Envelope, code: str, message: str) -> None:
        assert self.responses is not None
        failed = envelope.response("failed", [])
        failed["error"] = {"code": code, "message": message}
        try:
            await asyncio.shield(self.responses.finish(envelope.id, failed))
        except Exception:
            log.exception("could not record the failure of background response %s", envelope.id)

    async def cancel_response(self, user_id: int, response_id: str) -> dict[str, Any]:
        """POST /v1/responses/{id}/cancel: the row marked cancelled, and the work stopped if it runs here
        (a replica running it stops within a poll of the row)."""
        if self.responses is None or self.running is None:
            raise InvalidRequest("The Responses API is not available here.")
        response = await self.responses.cancel(user_id, response_id)
        if response.get("status") == "cancelled":
            self.running.cancel(response_id)
        return response

    async def _keep(self, resp: responses.ResponsesCall, response: dict[str, Any]) -> None:
        """Store a finished response for previous_response_id and GET; the answer stands if this fails."""
        if not resp.store or self.responses is None:
            return
        if resp.background:
            await self.responses.finish(resp.envelope.id, response)
            return
        try:
            await self.responses.keep(user_id=resp.user_id, model=resp.envelope.model, items=resp.items,
                                      response=response)
        except Exception:
            log.exception("could not store response %s", resp.envelope.id)

    def _tally(self, call: Call, resp: responses.ResponsesCall | None) -> AnyTally:
        if resp is not None:
            return ResponsesTally(resp.envelope, call.model)
        if call.endpoint is Endpoint.MESSAGES:
            return MessagesTally(call.model, call.request_id)
        return StreamTally(call.endpoint, call.model, call.request_id, call.include_usage)

    async def _first_answer(self, call: Call, body: dict[str, Any], candidates: list[Channel],
                            hold: Hold, resp: responses.ResponsesCall | None,
                            sent: _Sent) -> tuple[dict[str, Any], Channel]:
        failures: list[UpstreamError] = []
        for channel in candidates:
            attempt = self.book.take(channel)
            if attempt is None:
                continue
            try:
                exchange = self._exchange(call, body, channel, hold, resp)
                sent.going(channel.id)
                answer = await self.upstream.post(exchange, stream=False)
                obj = await self.upstream.read_json(answer, exchange)
            except UpstreamError as e:
                sent.failed(e.kind)
                if not e.kind.retryable:
                    self.book.done(attempt)  # the client's fault says nothing about the channel
                    raise _rejected(e) from None
                self.book.done(attempt, f"{e.kind.value}: {e.message}", auth_failure=e.kind is Failure.AUTH)
                log.warning("channel %s failed (%s); trying the next", channel.id, e.kind.value)
                failures.append(e)
                continue
            except BaseException:
                self.book.done(attempt)
                raise
            self.book.done(attempt)
            return obj, channel
        raise _final_error(failures, call.model)

    # --- streaming --------------------------------------------------------------------

    async def stream(self, call: Call) -> AsyncGenerator[bytes | Capped | Outcome, None]:
        """Chunks as they arrive, then an Outcome. Settlement happens whatever way it ends."""
        self.in_flight += 1
        inner = self._stream(call)
        try:
            async for item in inner:
                yield item
        finally:
            try:
                await inner.aclose()  # now, not whenever it is collected: it settles the call
            finally:
                self.in_flight -= 1

    async def _stream(self, call: Call) -> AsyncIterator[bytes | Capped | Outcome]:
        prepared = await self._prepare(call)
        if prepared.responses is not None and prepared.responses.background:
            raise InvalidRequest("A background response cannot be streamed here: create it without 'stream' and"
                                 " GET /v1/responses/{id} for its result.", param="stream")
        body, candidates, prompt_tokens = prepared.body, prepared.candidates, prepared.prompt_tokens
        hold = await self._reserve(call, prompt_tokens, body)
        tally = self._tally(call, prepared.responses)
        channel_id = 0
        settled = False
        opened: _Opened | None = None
        sent = _Sent(prompt_tokens)
        status = "upstream_error"
        beat = self._heartbeat(call, hold)
        try:
            if _capped(hold):
                yield Capped(_capped(hold))
            opened = await self._open_stream(call, body, candidates, hold, prepared.responses, sent)
            tally, channel_id = opened.tally, opened.channel.id
            failure: str | None = None
            try:
                async for out in self._relay_events(opened):
                    yield out
            except UpstreamError as e:
                failure = f"{e.kind.value}: {e.message}"
                raise (UpstreamTimedOut if e.kind is Failure.TIMEOUT else UpstreamFailed)(
                    f"The upstream stream broke off: {e.message}") from None
            finally:
                self.book.done(opened.attempt, failure)
            usage, source = self._stream_usage(tally, prompt_tokens, prepared.audio_tokens)
            closing = tally.closing(usage.prompt, usage.completion)
            if isinstance(tally, ResponsesTally) and prepared.responses is not None and tally.final is not None:
                await self._keep(prepared.responses, tally.final)
            # The settlement starts before the closing event goes out, and follows it on its own:
            # clients (Codex, Claude Code, the SDKs' stream helpers) hang up as soon as they have
            # it, and the call was complete.
            status = "complete"
            settled = True  # from here on the settlement is the one below, whatever happens
            self.calls.answered()  # charged in full: a shutdown's cut lets it end
            await self.billing.settle_soon(_settle(call, usage, status, source, channel_id, sent.unbilled))
            if closing is not None:
                yield closing
            yield Outcome(usage.prompt, usage.completion, status)
        except BaseException as exc:
            status = _status_of(exc)
            if status == "client_gone" and self._stopped_by_server(prepared):
                # Not its client: this process cut it, its shutdown's grace over (InFlight.cut).
                # Settled as a stream the upstream broke: the client pays what reached it.
                status = "server_error"
            raise
        finally:
            beat.cancel()
            if opened is not None:
                await opened.events.aclose()  # type: ignore[attr-defined]
            if not settled:
                if status == "client_gone" and (opened is not None or sent.channel_id):
                    # Once the request is upstream, a client who leaves (before the first visible
                    # chunk or after) pays the prompt and whatever the upstream sent until we
                    # stopped reading; the upstream's own usage wins when it came.
                    if opened is None:
                        tally, channel_id = sent.tally or tally, sent.channel_id
                    usage, source = self._stream_usage(tally, prompt_tokens, prepared.audio_tokens)
                elif opened is not None:
                    # The upstream broke a stream it had opened: the client pays what reached it
                    # (nothing when no output did); what the upstream is known to have done past
                    # that (its prompt, the tokens it sent) is counted for the operator, not dropped.
                    known, known_source = self._stream_usage(tally, prompt_tokens, prepared.audio_tokens)
                    usage, source = (known, known_source) if tally.chunks else (Usage(0, 0), "")
                    held = opened.exchange.held_back() if known_source == "counted" else ""
                    if held:  # read from the upstream, never sent on: the upstream bills it all the same
                        known = known._replace(completion=known.completion + count_choices_text([held], call.model))
                    sent.broke(Failure.TIMEOUT if status == "upstream_timeout" else Failure.SERVER, known, usage)
                else:
                    if status == "server_error" and sent.channel_id:
                        sent.failed(Failure.SERVER)  # cut before a chunk came: the prompt is the operator's
                    usage, source = Usage(0, 0), ""
                await self._close(_settle(call, usage, status, source, channel_id, sent.unbilled))

    async def _close(self, settle: Settle) -> None:
        """Settle a call that did not complete: now, so the client's next look at its balance
        is right; in the background when the caller is being cancelled."""
        if settle.status == "client_gone":
            self.billing.settle_later(settle)
        else:
            await self.billing.settle(settle)

    def _stream_usage(self, tally: AnyTally, prompt_tokens: int, audio_tokens: int = 0) -> tuple[Usage, str]:
        reported = tally.usage
        if reported is not None and reported[0] > 0:
            if isinstance(reported, Usage):
                return reported, "upstream"
            cached, reasoning = getattr(tally, "details", (0, 0))  # a Responses stream's
            read, written = getattr(tally, "cache", (cached, 0))   # a Messages stream's
            return Usage(reported[0], reported[1], read, written, reasoning), "upstream"
        return Usage(prompt_tokens, tally.completion_tokens(), audio_prompt=audio_tokens), "counted"

    async def _outputs(self, opened: _Opened) -> list[bytes]:
        """What the next upstream event gives our client (often nothing); marks the end of the events."""
        payload = await anext(opened.events, None)
        if payload is None:
            opened.ended = True
            return [out for obj in opened.exchange.flush() for out in opened.tally.take_all(obj)]
        return [out for obj in opened.exchange.chunks(_chunk(payload, opened.channel))
                for out in opened.tally.take_all(obj)]

    async def _relay_events(self, opened: _Opened) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_stream_s
        for out in opened.pending:
            yield out
        while not opened.ended:
            # The limit holds while waiting too: an upstream that only sends keep-alive
            # comments never yields an event, yet must not hold the call open forever.
            try:
                async with asyncio.timeout_at(deadline):
                    outputs = await self._outputs(opened)
            except TimeoutError:
                raise UpstreamError(Failure.TIMEOUT, "the stream ran past its time limit") from None
            for out in outputs:
                yield out

    async def _open_stream(self, call: Call, body: dict[str, Any], candidates: list[Channel],
                           hold: Hold, resp: responses.ResponsesCall | None, sent: _Sent) -> _Opened:
        """Open a stream on the first channel that yields something for the client: failover
        happens only here, before a byte has reached the client."""
        failures: list[UpstreamError] = []
        for channel in candidates:
            attempt = self.book.take(channel)
            if attempt is None:
                continue
            events = None
            try:
                exchange = self._exchange(call, body, channel, hold, resp)
                sent.going(channel.id)
                answer = await self.upstream.post(exchange, stream=True)
                events = self.upstream.events(answer)
                tally = self._tally(call, resp)
                sent.tally = tally
                opened = _Opened(channel, attempt, exchange, events, tally)
                # Keep-alive comments reset the socket's read timeout; the first chunk
                # itself must come within the channel's timeout.
                first_by = asyncio.get_running_loop().time() + (channel.timeout_s or self.upstream.timeout_s)
                while not opened.pending:
                    try:
                        async with asyncio.timeout_at(first_by):
                            opened.pending = await self._outputs(opened)
                    except TimeoutError:
                        raise UpstreamError(Failure.TIMEOUT, "upstream sent no chunk in time") from None
                    if opened.ended and not opened.pending:
                        raise UpstreamError(Failure.SERVER, "upstream closed the stream without a chunk")
                return opened
            except UpstreamError as e:
                sent.failed(e.kind)
                if events is not None:
                    await events.aclose()  # type: ignore[attr-defined]
                if not e.kind.retryable:
                    self.book.done(attempt)
                    raise _rejected(e) from None
                self.book.done(attempt, f"{e.kind.value}: {e.message}", auth_failure=e.kind is Failure.AUTH)
                log.warning("channel %s failed (%s); trying the next", channel.id, e.kind.value)
                failures.append(e)
            except BaseException:
                if events is not None:
                    await events.aclose()  # type: ignore[attr-defined]
                self.book.done(attempt)
                raise
        raise _final_error(failures, call.model)


@dataclass
class _Opened:
    """A stream that has produced its first output, on the channel that produced it."""

    channel: Channel
    attempt: Attempt
    exchange: Exchange
    events: AsyncIterator[bytes]
    tally: AnyTally
    pending: list[bytes] = field(default_factory=list)  # outputs read but not yet yielded
    ended: bool = False


def _capped(hold: Hold) -> int:
    """The completion budget when the balance, not the client or the model, set it; else 0."""
    return hold.completion_budget if hold.budget_capped else 0


@dataclass
class _Sent:
    """The attempt at a call that chatkore last sent upstream (what a client who leaves before
    the answer pays for), and the tokens earlier attempts may have cost the operator."""

    prompt_tokens: int
    channel_id: int = 0           # the channel the request went to; 0: none, or it failed
    tally: AnyTally | None = None  # what that upstream has streamed so far
    unbilled: int = 0

    def going(self, channel_id: int) -> None:
        self.channel_id, self.tally = channel_id, None

    def failed(self, kind: Failure) -> None:
        """The attempt failed upstream: free for the client. A timeout or a server failure
        may still be billed by the upstream; it is counted so the operator sees that risk."""
        if kind in (Failure.TIMEOUT, Failure.SERVER):
            tokens = self.prompt_tokens + (self.tally.completion_tokens() if self.tally is not None else 0)
            self.unbilled += tokens
            metrics.UNBILLED.labels(kind.value).inc(tokens)
        self.channel_id, self.tally = 0, None

    def broke(self, kind: Failure, known: Usage, charged: Usage) -> None:
        """The upstream broke the stream after it opened: the tokens it is known to have processed
        (`known`) beyond what the client is charged are the operator's risk, counted as unbilled."""
        tokens = known.prompt + known.completion - charged.prompt - charged.completion
        if tokens > 0:
            self.unbilled += tokens
            metrics.UNBILLED.labels(kind.value).inc(tokens)


def _settle(call: Call, usage: Usage, status: str, source: str, channel_id: int, unbilled: int = 0) -> Settle:
    return Settle(call.request_id, usage.prompt, usage.completion, status, source, channel_id, call.try_number,
                  usage.cached_prompt, usage.cache_write, usage.reasoning, unbilled, usage.audio_prompt,
                  usage.audio_completion)


def _chunk(payload: bytes, channel: Channel) -> dict[str, Any]:
    """One stream event as an object; an error event or garbage is a server failure."""
    try:
        obj = jsoncodec.loads(payload)
    except ValueError:
        raise UpstreamError(Failure.SERVER, "upstream sent a malformed chunk") from None
    if not isinstance(obj, dict):
        raise UpstreamError(Failure.SERVER, "upstream sent a malformed chunk")
    if obj.get("error") and not obj.get("choices"):
        # The upstream's own words may name its keys or hosts; they stay in our logs only.
        log.warning("upstream error event: %s", scrub(str(obj["error"]), channel)[:500])
        raise UpstreamError(Failure.SERVER, "upstream reported an error")
    return obj
