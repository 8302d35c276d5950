"""InFlight: what a shutdown past its grace cuts, and what it lets finish."""
from __future__ import annotations

import asyncio

from services.inference.inflight import InFlight


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
