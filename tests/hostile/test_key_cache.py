"""The edge's key cache against the real auth service and its change feed: a key revoked while
its look-up is in flight must not stay remembered (edge/authn.py)."""
from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from chatkore.v1 import auth_pb2, auth_pb2_grpc
from edge.authn import KeyCache
from services.common.errors import reason_of
from tests.hostile import grpcpeer
from tests.world import World

ADDRESS = "127.0.0.1"


class SlowFirstLookup:
    """Auth, except that the first Authenticate, once answered, is held back until the change feed
    has delivered a change for its key: the revocation lands while the look-up is in flight."""

    def __init__(self, stub: auth_pb2_grpc.AuthStub, key_id: int) -> None:
        self._stub = stub
        self._key_id = key_id
        self.answered = asyncio.Event()     # auth has answered the first look-up (the key was valid)
        self.feed_named = asyncio.Event()   # the feed has named the key since
        self.lookups = 0
        self.polls = 0

    async def Authenticate(self, request: auth_pb2.AuthenticateRequest, **kwargs: Any) -> auth_pb2.KeyInfo:
        self.lookups += 1
        info = await self._stub.Authenticate(request, **kwargs)
        if self.lookups == 1:
            self.answered.set()
            await self.feed_named.wait()
        return info

    async def KeyChanges(self, request: auth_pb2.KeyChangesRequest, **kwargs: Any) -> auth_pb2.KeyChangesReply:
        reply = await self._stub.KeyChanges(request, **kwargs)
        self.polls += 1
        if self.answered.is_set() and any(c.key_id == self._key_id for c in reply.changes):
            # Delivered to the cache first (this returns), then the look-up may finish.
            asyncio.get_running_loop().call_soon(self.feed_named.set)
        return reply


async def _revoked_during_lookup(world: World) -> tuple[list[str], int]:
    t = world.tenant()
    channel = grpcpeer.channel(world, "auth")
    auth = SlowFirstLookup(auth_pb2_grpc.AuthStub(channel), t.key_id)
    cache = KeyCache(auth, ttl_s=300)  # type: ignore[arg-type]
    feed = asyncio.create_task(cache.follow_changes())
    outcomes: list[str] = []
    try:
        lookup = asyncio.create_task(cache.resolve(t.key, ADDRESS))
        await asyncio.wait_for(auth.answered.wait(), 30)
        await asyncio.to_thread(world.admin, "DELETE", f"/admin/v1/keys/{t.key_id}", None, 204)
        for attempt in (lookup, cache.resolve(t.key, ADDRESS)):  # the one in flight, then the next call
            try:
                info = await asyncio.wait_for(attempt, 30)
                outcomes.append(f"key {info.key_id}")
            except grpc.aio.AioRpcError as exc:
                outcomes.append(reason_of(exc))
        return outcomes, auth.lookups
    finally:
        feed.cancel()
        await channel.close()


def test_key_revoked_while_its_lookup_is_in_flight_is_not_remembered(world: World) -> None:
    outcomes, lookups = asyncio.run(_revoked_during_lookup(world))
    # Old behaviour: ["key N", "key N"], the revoked key served from the cache for CHATKORE_KEY_CACHE_S.
    assert outcomes == ["INVALID_API_KEY", "INVALID_API_KEY"], outcomes
    assert lookups >= 2  # asked auth again rather than trust an answer the feed had overtaken


@pytest.mark.parametrize("change", ["another key", "nothing"])
def test_unrelated_changes_leave_the_cache_working(world: World, change: str) -> None:
    async def run() -> int:
        t = world.tenant()
        other = world.tenant()
        channel = grpcpeer.channel(world, "auth")
        counted = SlowFirstLookup(auth_pb2_grpc.AuthStub(channel), other.key_id)
        counted.answered.set()
        counted.feed_named.set()  # no holding back: this only counts look-ups
        cache = KeyCache(counted, ttl_s=300)  # type: ignore[arg-type]
        feed = asyncio.create_task(cache.follow_changes())
        try:
            async with asyncio.timeout(30):
                while counted.polls < 2:  # the feed is current: cached answers are trusted
                    await asyncio.sleep(0.01)
            await cache.resolve(t.key, ADDRESS)
            if change == "another key":
                await asyncio.to_thread(world.admin, "DELETE", f"/admin/v1/keys/{other.key_id}", None, 204)
            for _ in range(3):
                assert (await cache.resolve(t.key, ADDRESS)).key_id == t.key_id
            return counted.lookups
        finally:
            feed.cancel()
            await channel.close()

    # The first call asks auth; the rest are answered from the cache once the feed is current.
    assert asyncio.run(run()) <= 2
