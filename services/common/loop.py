"""The event loop every process runs on: uvloop where it is installed (Linux, macOS), else asyncio's own."""
from __future__ import annotations

import asyncio


def install() -> str:
    """Make new event loops uvloop's; returns the loop's name. Call before asyncio.run or run_app."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"
