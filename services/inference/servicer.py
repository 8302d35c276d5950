"""Inference's gRPC face: protobuf in, a call on Relay or ChannelBook, protobuf out."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from chatkore.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from services.common import jsoncodec, metrics
from services.inference import probe
from services.inference.channels import ChannelBook
from services.inference.media import ContentType, Media
from services.inference.payloads import MEDIA, Endpoint
from services.inference.relay import Call, Capped, Outcome, Relay
from services.inference.responses.book import ResponseBook
from services.inference.store import ChannelRow

# The completion budget a call was cut to because the balance could not pay for more: sent
# as initial metadata, and by the edge as the response header of the same name.
MAX_TOKENS_HEADER = "x-chatkore-max-tokens"

_ENDPOINTS = {
    inference_pb2.CHAT_COMPLETIONS: Endpoint.CHAT,
    inference_pb2.COMPLETIONS: Endpoint.COMPLETIONS,
    inference_pb2.EMBEDDINGS: Endpoint.EMBEDDINGS,
    inference_pb2.RESPONSES: Endpoint.RESPONSES,
    inference_pb2.MESSAGES: Endpoint.MESSAGES,
    inference_pb2.IMAGES_GENERATIONS: Endpoint.IMAGES_GENERATIONS,
    inference_pb2.IMAGES_EDITS: Endpoint.IMAGES_EDITS,
    inference_pb2.IMAGES_VARIATIONS: Endpoint.IMAGES_VARIATIONS,
    inference_pb2.AUDIO_SPEECH: Endpoint.AUDIO_SPEECH,
    inference_pb2.AUDIO_TRANSCRIPTIONS: Endpoint.AUDIO_TRANSCRIPTIONS,
    inference_pb2.AUDIO_TRANSLATIONS: Endpoint.AUDIO_TRANSLATIONS,
    inference_pb2.MODERATIONS: Endpoint.MODERATIONS,
}
# The reply's media type, when it is not JSON: sent as initial metadata (the edge's Content-Type).
CONTENT_TYPE_HEADER = "x-chatkore-content-type"

# Channel fields an UpdateChannelRequest may name.
_CHANNEL_FIELDS = ("name", "type", "base_url", "api_key", "models", "model_map", "priority", "weight", "enabled",
                   "settings")


def _call(request: inference_pb2.RelayRequest) -> Call:
    caller = request.caller
    return Call(
        request_id=caller.request_id, user_id=caller.user_id, key_id=caller.key_id,
        credit_limit=caller.credit_limit, allowed=tuple(caller.models),
        endpoint=_ENDPOINTS.get(request.endpoint, Endpoint.CHAT), model=request.model, body=request.body,
        stream=request.stream, include_usage=request.include_usage, max_tokens=request.max_tokens,
        n=max(1, request.n), try_number=request.try_number,
        forward_headers=tuple(sorted(request.forward_headers.items())), content_type=request.content_type,
    )


def _count(model: str, prompt: int, completion: int) -> None:
    metrics.TOKENS.labels(model, "prompt").inc(prompt)
    metrics.TOKENS.labels(model, "completion").inc(completion)


def _usage(prompt: int, completion: int) -> common_pb2.Usage:
    return common_pb2.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _channel_values(channel: inference_pb2.Channel, fields: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in fields:
        if name == "models":
            values[name] = list(channel.models)
        elif name == "model_map":
            values[name] = dict(channel.model_map)
        elif name == "settings":
            values[name] = json_format.MessageToDict(channel.settings)
        else:
            values[name] = getattr(channel, name)
    return values


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(self, relay: Relay, book: ChannelBook, responses: ResponseBook, media: Media) -> None:
        self.relay = relay
        self.book = book
        self.responses = responses
        self.media = media

    async def Relay(self, request: inference_pb2.RelayRequest,
                    context: grpc.aio.ServicerContext) -> inference_pb2.RelayReply:
        with self.relay.calls.track():  # cut, and settled, by a shutdown past its grace
            call = _call(request)
            if call.endpoint in MEDIA:
                media = await self.media.unary(call)
                _count(request.model, media.prompt_tokens, 0)
                return inference_pb2.RelayReply(body=media.body, usage=_usage(media.prompt_tokens, 0),
                                                content_type=media.content_type)
            reply = await self.relay.unary(call)
            if reply.capped_max_tokens:
                await context.send_initial_metadata(((MAX_TOKENS_HEADER, str(reply.capped_max_tokens)),))
            _count(request.model, reply.prompt_tokens, reply.completion_tokens)
            return inference_pb2.RelayReply(body=reply.body, usage=_usage(reply.prompt_tokens, reply.completion_tokens))

    async def RelayStream(self, request: inference_pb2.RelayRequest,
                          context: grpc.aio.ServicerContext) -> AsyncIterator[inference_pb2.RelayEvent]:
        # The stream relayed is closed here, now, however the call ends (its closing settles it);
        # and by the cut should this generator be left at a `yield` (plain gRPC cancels a call
        # waiting to write to a caller that stopped reading outside of it: InFlight.closing).
        with self.relay.calls.track():  # cut, and settled, by a shutdown past its grace
            call = _call(request)
            if call.endpoint in MEDIA:
                pieces = self.relay.calls.closing(self.media.stream(call))
                try:
                    async for piece in pieces:
                        if isinstance(piece, ContentType):
                            await context.send_initial_metadata(((CONTENT_TYPE_HEADER, piece.value),))
                        elif isinstance(piece, tuple):
                            _count(request.model, piece[0], 0)
                            yield inference_pb2.RelayEvent(outcome=inference_pb2.Outcome(
                                usage=_usage(piece[0], 0), status="complete"))
                        else:
                            yield inference_pb2.RelayEvent(chunk=piece)
                finally:
                    await pieces.aclose()
                return
            items = self.relay.calls.closing(self.relay.stream(call))
            try:
                async for item in items:
                    if isinstance(item, Capped):
                        await context.send_initial_metadata(((MAX_TOKENS_HEADER, str(item.max_tokens)),))
                    elif isinstance(item, Outcome):
                        _count(request.model, item.prompt_tokens, item.completion_tokens)
                        yield inference_pb2.RelayEvent(outcome=inference_pb2.Outcome(
                            usage=_usage(item.prompt_tokens, item.completion_tokens), status=item.status))
                    else:
                        yield inference_pb2.RelayEvent(chunk=item)
            finally:
                await items.aclose()

    async def CountTokens(self, request: inference_pb2.RelayRequest,
                          context: grpc.aio.ServicerContext) -> inference_pb2.TokenCount:
        return inference_pb2.TokenCount(input_tokens=await self.relay.count(_call(request)))

    async def ListModels(self, request: inference_pb2.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> inference_pb2.ModelList:
        allowed = set(request.allowed)
        models = [
            inference_pb2.Model(id=model, created=created, owned_by="chatkore")
            for model, created in sorted(self.book.models().items())
            if not allowed or model in allowed
        ]
        return inference_pb2.ModelList(models=models)

    async def GetResponse(self, request: inference_pb2.StoredResponseRequest,
                          context: grpc.aio.ServicerContext) -> inference_pb2.StoredResponse:
        found = await self.responses.get(request.user_id, request.id)
        return inference_pb2.StoredResponse(body=jsoncodec.dumps(found))

    async def DeleteResponse(self, request: inference_pb2.StoredResponseRequest,
                             context: grpc.aio.ServicerContext) -> inference_pb2.StoredResponse:
        gone = await self.responses.delete(request.user_id, request.id)
        return inference_pb2.StoredResponse(body=jsoncodec.dumps(gone))

    async def CancelResponse(self, request: inference_pb2.StoredResponseRequest,
                             context: grpc.aio.ServicerContext) -> inference_pb2.StoredResponse:
        cancelled = await self.relay.cancel_response(request.user_id, request.id)
        return inference_pb2.StoredResponse(body=jsoncodec.dumps(cancelled))

    async def ListInputItems(self, request: inference_pb2.ListInputItemsRequest,
                             context: grpc.aio.ServicerContext) -> inference_pb2.StoredResponse:
        page = await self.responses.input_items(request.user_id, request.id, after=request.after,
                                                limit=request.limit, ascending=request.ascending)
        return inference_pb2.StoredResponse(body=jsoncodec.dumps(page))

    def _channel(self, row: ChannelRow) -> inference_pb2.Channel:
        settings = struct_pb2.Struct()
        settings.update(row.settings)
        return inference_pb2.Channel(
            id=row.id, name=row.name, type=row.type, base_url=row.base_url, api_key=row.key_hint,
            models=row.models, model_map=row.model_map, priority=row.priority, weight=row.weight,
            enabled=row.enabled, created=row.created, health=self.book.health_of(row.id), settings=settings,
        )

    async def SetAlias(self, request: inference_pb2.ModelAlias,
                       context: grpc.aio.ServicerContext) -> inference_pb2.ModelAlias:
        await self.book.set_alias(request.name, request.target)
        return request

    async def ListAliases(self, request: inference_pb2.ListAliasesRequest,
                          context: grpc.aio.ServicerContext) -> inference_pb2.AliasList:
        return inference_pb2.AliasList(aliases=[inference_pb2.ModelAlias(name=n, target=t)
                                                for n, t in (await self.book.aliases()).items()])

    async def DeleteAlias(self, request: inference_pb2.DeleteAliasRequest,
                          context: grpc.aio.ServicerContext) -> inference_pb2.DeleteAliasReply:
        await self.book.delete_alias(request.name)
        return inference_pb2.DeleteAliasReply()

    async def CreateChannel(self, request: inference_pb2.Channel,
                            context: grpc.aio.ServicerContext) -> inference_pb2.Channel:
        values = _channel_values(request, list(_CHANNEL_FIELDS))
        if not request.HasField("settings"):
            values.pop("settings")
        return self._channel(await self.book.create(values))

    async def ListChannels(self, request: inference_pb2.ListChannelsRequest,
                           context: grpc.aio.ServicerContext) -> inference_pb2.ChannelList:
        return inference_pb2.ChannelList(channels=[self._channel(r) for r in await self.book.rows()])

    async def UpdateChannel(self, request: inference_pb2.UpdateChannelRequest,
                            context: grpc.aio.ServicerContext) -> inference_pb2.Channel:
        fields = [f for f in request.fields if f in _CHANNEL_FIELDS]
        return self._channel(await self.book.update(request.id, _channel_values(request.channel, fields)))

    async def GetStats(self, request: inference_pb2.GetStatsRequest,
                       context: grpc.aio.ServicerContext) -> inference_pb2.Stats:
        return inference_pb2.Stats(tasks=len(asyncio.all_tasks()),
                                   relays_in_flight=self.relay.in_flight + self.media.in_flight,
                                   channel_calls_in_flight=self.book.calls_in_flight(),
                                   settlements_pending=self.relay.billing.pending)

    async def DeleteChannel(self, request: inference_pb2.DeleteChannelRequest,
                            context: grpc.aio.ServicerContext) -> inference_pb2.DeleteChannelReply:
        await self.book.delete(request.id)
        return inference_pb2.DeleteChannelReply()

    async def TestChannel(self, request: inference_pb2.TestChannelRequest,
                          context: grpc.aio.ServicerContext) -> inference_pb2.ChannelTest:
        result = await probe.test_channel(self.book, self.relay.upstream, request.id, request.model)
        return inference_pb2.ChannelTest(ok=result.ok, model=result.model, latency_ms=result.latency_ms,
                                         status=result.status, error=result.error, reply=result.reply,
                                         health=result.health)
