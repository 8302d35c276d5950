"""The billing service as inference sees it: holds placed, and settled come what may."""
from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable
from dataclasses import dataclass

import grpc

from chatkore.v1 import billing_pb2, billing_pb2_grpc
from services.common import peers
from services.common.errors import reason_of
from services.common.logs import request_id_var
from services.common.mtls import GrpcTls

log = logging.getLogger(__name__)

_TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
RPC_TIMEOUT_S = 10.0
RELEASE_WAIT_S = 15.0  # how long a hold whose Reserve was cut short may take to appear


@dataclass(frozen=True)
class Hold:
    amount: int
    completion_budget: int
    budget_capped: bool
    completion_limit: int = 0  # per choice, what the client or the model allows
    ttl_s: int = 0             # seconds the hold lives without a keep_alive
    unit: str = ""             # the unit the call is priced by ("" = tokens): settle the things counted


@dataclass(frozen=True)
class Units:
    """A call priced per unit when its model's row prices that unit (billing.proto ReserveRequest)."""

    unit: str
    count: int
    required: bool = False
    param: str = ""


@dataclass(frozen=True)
class Settle:
    """A call's settlement. prompt_tokens counts every input token, cache reads and writes
    included; completion_tokens every output token, reasoning included (billing.proto TokenUsage)."""

    request_id: str
    prompt_tokens: int
    completion_tokens: int
    status: str
    usage_source: str
    channel_id: int
    try_number: int = 0  # the try at the call that holds the hold (billing.proto SettleRequest)
    cached_prompt_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    unbilled_tokens: int = 0  # what failed attempts may have cost the operator (free for the client)
    audio_prompt_tokens: int = 0      # audio among the (uncached) prompt tokens, at the audio price
    audio_completion_tokens: int = 0  # audio among the completion tokens, at the audio price


class BillingPeer:
    def __init__(self, target: str, tls: GrpcTls, retry_for_s: float) -> None:
        # A call's Reserve, its cancellation, its release and its Settle go to one billing replica,
        # in order, on one stream (mux affinity).
        self._channel = peers.channel(target, "billing", tls, affinity=True)
        self._stub = billing_pb2_grpc.BillingStub(self._channel)
        self._retry_for_s = retry_for_s
        self._later: set[asyncio.Future[object]] = set()

    async def close(self) -> None:
        await self._channel.close()

    async def reserve(self, *, request_id: str, user_id: int, key_id: int, credit_limit: int, model: str,
                      prompt_tokens: int, max_tokens: int, choices: int, try_number: int, service_tier: str = "",
                      features: tuple[str, ...] = (), units: Units | None = None, input_only: bool = False) -> Hold:
        request = billing_pb2.ReserveRequest(
            request_id=request_id, user_id=user_id, key_id=key_id, credit_limit=credit_limit, model=model,
            prompt_tokens=prompt_tokens, max_completion_tokens=max_tokens, choices=choices, try_number=try_number,
            service_tier=service_tier, features=list(features), input_only=input_only,
        )
        if units is not None:
            request.unit, request.units = units.unit, units.count
            request.unit_required, request.unit_param = units.required, units.param
        # Not retried here: a Reserve lost on the way fails the call, and the edge makes the
        # call again on another replica as the next try (edge/retry.py), which takes over or
        # places the hold.
        try:
            hold = await self._stub.Reserve(request, timeout=RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _TRANSIENT:
                self._release_if_held(request_id, try_number)
            raise
        except asyncio.CancelledError:
            # The caller left (its client went away) while the hold was being placed. The
            # cancellation reaches billing with the call: a hold its writer was committing
            # meanwhile is released there (batcher.py). One release from here covers a hold
            # committed just before the cancellation arrived (its answer is what was lost):
            # sent after the cancellation on the same stream to the same replica (the channel's
            # affinity), it cannot overtake the hold. (With CHATKORE_GRPC_MUX=0 and several
            # billing replicas it may go to another one and find nothing yet: that hold is then
            # the sweeper's, after CHATKORE_HOLD_TTL_S.)
            self._release_if_held(request_id, try_number, wait_s=0.0)
            raise
        return Hold(hold.amount, hold.completion_budget, hold.budget_capped, hold.completion_limit, hold.ttl_s,
                    hold.unit)

    async def settle(self, s: Settle) -> int | None:
        """Settle now; if billing is away, keep trying in the background. The credits charged, or None.

        The settlement outlives its caller: a client that leaves at this very moment
        cancels the wait, not the settlement.
        """
        task = asyncio.ensure_future(self._settle_once(s))
        self._later.add(task)
        task.add_done_callback(self._later.discard)
        return await asyncio.shield(task)

    async def _settle_once(self, s: Settle, call: Awaitable[billing_pb2.Settlement] | None = None) -> int | None:
        try:
            result = await (call or self._stub.Settle(self._request(s), timeout=RPC_TIMEOUT_S))
            return result.charged
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _TRANSIENT:
                self.settle_later(s)
            else:
                log.error("settle of %s refused: %s (%s)", s.request_id, exc.details(), reason_of(exc))
            return None

    async def settle_soon(self, s: Settle) -> None:
        """Settle in the background: the reply goes to the client without waiting for it
        (issue 16). Tracked until it lands (drained at shutdown); billing away means retries,
        and the sweeper is the backstop. Returns after one loop turn, in which the call has
        gone out: billing has the Settle before the reply reaches the client, so a balance the
        client asks for next shows the charge (billing's reads wait for what it has queued)."""
        call = self._stub.Settle(self._request(s), timeout=RPC_TIMEOUT_S)
        self._track(asyncio.ensure_future(self._settle_once(s, call)))
        await asyncio.sleep(0)  # the call's own task sends it now, before the caller's reply

    def _track(self, task: asyncio.Task[None] | asyncio.Task[int | None]) -> None:
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    def settle_later(self, s: Settle) -> None:
        """Settle in the background (the caller may be cancelled), retrying until it lands."""
        task = asyncio.create_task(self._settle_until_done(s))
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    def _release_if_held(self, request_id: str, try_number: int, wait_s: float = RELEASE_WAIT_S) -> None:
        """Release a hold whose Reserve was cut short, if it was placed after all — and is still
        this try's: a retry of the call on another replica may have taken it over. A hold not
        found is waited for `wait_s` (a Reserve whose fate is unknown, billing gone mid-call,
        may still land); 0: one look."""
        task = asyncio.create_task(self._settle_until_done(Settle(request_id, 0, 0, "client_gone", "", 0, try_number),
                                                           release=True, missing_for_s=wait_s))
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    async def _settle_until_done(self, s: Settle, release: bool = False, missing_for_s: float = 0.0) -> None:
        """Retry a settlement through billing's absences. A release finds nothing held when the
        Reserve never landed; while `missing_for_s` runs, it looks again (a Reserve still in
        flight may place the hold)."""
        request_id_var.set(s.request_id)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._retry_for_s
        stop_waiting = loop.time() + missing_for_s
        delay = 0.1
        while True:
            try:
                await self._stub.Settle(self._request(s), timeout=RPC_TIMEOUT_S)
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND and release:
                    if loop.time() >= stop_waiting:
                        return  # the Reserve never landed: nothing is held
                elif exc.code() not in _TRANSIENT or loop.time() > give_up:
                    log.error("settle of %s failed for good: %s (%s); the sweeper will release the hold",
                              s.request_id, exc.details(), reason_of(exc))
                    return
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, peers.SETTLE_RETRY_MAX_PAUSE_S)

    @staticmethod
    def _request(s: Settle) -> billing_pb2.SettleRequest:
        return billing_pb2.SettleRequest(
            request_id=s.request_id, status=s.status, usage_source=s.usage_source, channel_id=s.channel_id,
            try_number=s.try_number, unbilled_tokens=s.unbilled_tokens,
            usage=billing_pb2.TokenUsage(prompt=s.prompt_tokens, completion=s.completion_tokens,
                                         cached_prompt=s.cached_prompt_tokens, cache_write=s.cache_write_tokens,
                                         reasoning=s.reasoning_tokens, audio_prompt=s.audio_prompt_tokens,
                                         audio_completion=s.audio_completion_tokens),
        )

    async def keep_alive(self, request_id: str, try_number: int) -> bool:
        """Push a live call's hold deadline forward; False when the hold is closed. A failure
        to reach billing counts as alive (the next beat tries again)."""
        try:
            request = billing_pb2.KeepAliveRequest(request_id=request_id, try_number=try_number)
            reply = await self._stub.KeepAlive(request, timeout=RPC_TIMEOUT_S)
            return reply.alive
        except grpc.aio.AioRpcError as exc:
            log.warning("keep-alive of %s failed: %s", request_id, exc.code().name)
            return True

    @property
    def pending(self) -> int:
        return len(self._later)

    async def drain(self, timeout_s: float) -> None:
        """Wait for every settlement in flight, including those a failed one handed on to a
        background retry meanwhile, until none is left or `timeout_s` has passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._later and (left := deadline - loop.time()) > 0:
            await asyncio.wait(set(self._later), timeout=left)
