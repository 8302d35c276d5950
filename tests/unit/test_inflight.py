"""InFlight: what a shutdown past its grace cuts, and what it lets finish."""
from __future__ import annotations

import asyncio

import pytest

from services.common.errors import Unavailable
from services.inference.inflight import InFlight


async def test_a_cut_lets_an_answered_call_finish_and_ends_the_others_unavailable() -> None:
    calls = InFlight()
    release = asyncio.Event()

    async def answered() -> str:
        with calls.track():
            calls.answered()  # its complete settlement goes out: charged in full
            await release.wait()  # settle_soon's turn, a Response stored, initial metadata sent
            return "the reply"

    async def unanswered() -> None:
        with calls.track():
            await asyncio.Event().wait()  # the upstream still working

    paid, waiting = asyncio.create_task(answered()), asyncio.create_task(unanswered())
    await asyncio.sleep(0)
    cutting = asyncio.create_task(calls.cut(5))
    await asyncio.sleep(0.05)
    assert waiting.done() and not paid.done()  # the answered call is waited for, not cancelled
    with pytest.raises(Unavailable):
        waiting.result()  # the retry is free: nothing was charged
    release.set()
    assert await cutting == 1
    assert await paid == "the reply"  # not UNAVAILABLE "please retry": a retry would pay twice
    assert len(calls) == 0


async def test_a_cut_closes_a_stream_its_handler_left_at_a_yield() -> None:
    """As plain gRPC leaves a streaming handler cancelled while it waited in its write."""
    calls = InFlight()
    closed: list[str] = []

    async def relayed():
        try:
            yield b"chunk"
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # the settlement
            closed.append("settled")

    async def handler():
        with calls.track():
            stream = calls.closing(relayed())
            try:
                async for item in stream:
                    yield item
            finally:
                await stream.aclose()

    kept: list = []

    async def grpc_driver() -> None:
        gen = handler()
        kept.append(gen)  # not collected: only the cut can close what it relays
        async for _ in gen:
            await asyncio.Event().wait()  # the write to a caller that stopped reading

    driver = asyncio.create_task(grpc_driver())
    await asyncio.sleep(0.01)
    assert await calls.cut(5) == 1
    assert driver.cancelled() and closed == ["settled"]
