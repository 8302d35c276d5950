"""The Relay calls this process is serving (chat and media alike), so that a shutdown past its
grace cuts them itself.

Left to gRPC, a call still running when the grace runs out is cancelled as the server goes down,
after the process has stopped waiting for settlements and with the billing channel about to close:
its hold stays open until billing's sweeper releases it, for free. Cut here instead (`cut`), each
call ends while billing is still reachable; the relay settles it for what it had relayed
(relay.py), a media call as the server's failure, free (media.py); and the call ends with a
status (UNAVAILABLE) rather than a bare cancellation, on a plain gRPC call as on a multiplexed
stream.
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from services.common.errors import Unavailable


class InFlight:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[object]] = set()
        self._cut: set[asyncio.Task[object]] = set()
        self.stopping = False  # set once the grace is over: a call cancelled now was cut by the server

    def __len__(self) -> int:
        return len(self._tasks)

    @contextmanager
    def track(self) -> Iterator[None]:
        """Around a call's handler (which runs in one task from its start to its end)."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            yield
        except asyncio.CancelledError:
            if task not in self._cut:
                raise  # its client left (or its stream went): nobody waits for a status
            task.uncancel()
            raise Unavailable("The server stopped this call as it shut down. Please retry.") from None
        finally:
            self._tasks.discard(task)
            self._cut.discard(task)

    async def cut(self, timeout_s: float) -> int:
        """Cancel every call still running and wait, up to `timeout_s`, for them to end (a call
        ends once its settlement is acknowledged or handed to BillingPeer's retries). How many
        were cut."""
        self.stopping = True
        tasks = set(self._tasks)
        self._cut |= tasks
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)
        return len(tasks)
