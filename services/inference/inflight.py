"""The Relay calls this process is serving (chat and media alike), so that a shutdown past its
grace cuts them itself.

Left to gRPC, a call still running when the grace runs out is cancelled as the server goes down,
after the process has stopped waiting for settlements and with the billing channel about to close:
its hold stays open until billing's sweeper releases it, for free. Cut here instead (`cut`), each
call ends while billing is still reachable; the relay settles it for what it had relayed
(relay.py), a media call as the server's failure, free (media.py); and the call ends with a
status (UNAVAILABLE) rather than a bare cancellation, on a plain gRPC call as on a multiplexed
stream.

A streamed call's handler registers the stream it relays (`closing`): plain gRPC drives a
streaming handler as `async for event in handler: await write(event)`, so a call cut while it
waits in that write (a caller that stopped reading) is cancelled outside the relay's generator,
which would settle only whenever it is collected. `cut` closes every such stream itself.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from services.common.errors import Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")


class InFlight:
    def __init__(self) -> None:
        # Each call's task, with the streams its handler relays (closed by a cut if it cannot).
        self._tasks: dict[asyncio.Task[Any], list[AsyncGenerator[Any, None]]] = {}
        self._cut: set[asyncio.Task[Any]] = set()
        self._answered: set[asyncio.Task[Any]] = set()  # complete settlement sent: a cut lets them finish
        self.stopping = False  # set once the grace is over: a call cancelled now was cut by the server

    def __len__(self) -> int:
        return len(self._tasks)

    @contextmanager
    def track(self) -> Iterator[None]:
        """Around a call's handler (which runs in one task from its start to its end)."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks[task] = []
        try:
            yield
        except asyncio.CancelledError:
            if task not in self._cut:
                raise  # its client left (or its stream went): nobody waits for a status
            task.uncancel()
            raise Unavailable("The server stopped this call as it shut down. Please retry.") from None
        finally:
            self._tasks.pop(task, None)
            self._cut.discard(task)
            self._answered.discard(task)

    def answered(self) -> None:
        """Called just before the current call's `complete` settlement goes out (nothing awaited in
        between): the call is answered and charged, so a cut lets it finish. Cut after, it would
        answer UNAVAILABLE "please retry" and its retry would pay a second time. No-op for a task
        that is not a tracked call (a background response)."""
        task = asyncio.current_task()
        if task in self._tasks:
            self._answered.add(task)

    def closing(self, stream: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
        """The stream a tracked handler relays (it closes it itself in a `finally`): a cut closes it
        too, should the handler be cancelled where its `finally` does not run."""
        task = asyncio.current_task()
        assert task is not None and task in self._tasks, "closing() is for a tracked call"
        self._tasks[task].append(stream)
        return stream

    async def cut(self, timeout_s: float) -> int:
        """Cancel every call still running that is not answered yet, and wait, up to `timeout_s`,
        for all of them to end (a call
        ends once its settlement is acknowledged or handed to BillingPeer's retries), then close
        the streams of those that ended without closing them (which settles them). How many were
        cut."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        self.stopping = True
        calls = {task: list(streams) for task, streams in self._tasks.items()}
        cut = calls.keys() - self._answered  # an answered call is waited for, not cut
        self._cut |= cut
        for task in cut:
            task.cancel()
        if calls:
            await asyncio.wait(calls, timeout=timeout_s)
        # A stream still open whose task has ended was left at a `yield` (the task was cancelled
        # in gRPC's write): closed here, it settles as it closes -- unless its handler, collected
        # meanwhile, is closing it already: then that is waited for. One whose task still runs is
        # being run by it: not touched (gRPC cancels what is left).
        open_streams = [s for task, streams in calls.items() if task.done()
                        for s in streams if s.ag_frame is not None]
        if open_streams:
            log.info("closing %d cut stream(s) their handlers left open", len(open_streams))
            closings = [asyncio.ensure_future(_close(s)) for s in open_streams]
            done, _ = await asyncio.wait(closings, timeout=max(0.0, deadline - loop.time()))
            for closed in done:
                if not closed.cancelled() and closed.exception() is not None:
                    log.error("closing a cut stream failed", exc_info=closed.exception())
        for task in calls:
            if task.done():
                self._tasks.pop(task, None)  # its handler, left suspended, never reaches its `finally`
                self._cut.discard(task)
                self._answered.discard(task)
        return len(cut)


async def _close(stream: AsyncGenerator[Any, None]) -> None:
    while stream.ag_running:  # being closed by another task (its handler's finalizer): wait for it
        await asyncio.sleep(0.01)
    await stream.aclose()  # nothing once it is closed
