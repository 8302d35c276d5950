"""Responses run in the background (`background: true`): answered `queued`, finished server-side.

Each runs as a task of the inference process that took it; its stored row says how it stands
(queued, in_progress, then completed, failed or cancelled). A cancel marks the row `cancelled`
whichever replica receives it; the replica running the response sees that within a poll and
cancels its task, which ends the upstream call and settles it as a client that left would be
(the prompt and what the upstream had sent are paid for). A response the server stops (shutdown
past its grace) is a server failure: free to the client.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from services.inference.responses.book import ResponseBook

log = logging.getLogger(__name__)

POLL_S = 1.0  # how soon a cancel made through another replica stops the work


class Running:
    def __init__(self, book: ResponseBook, poll_s: float = POLL_S) -> None:
        self._book = book
        self._poll_s = poll_s
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self.cancelled: set[str] = set()  # ids cancelled by their user (not by a shutdown)
        self.stopping = False  # set at shutdown: a task cancelled now was stopped by the server

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, response_id: str, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(work)
        watcher = asyncio.create_task(self._watch(response_id, task))

        def done(_: asyncio.Task[Any]) -> None:
            self._tasks.pop(response_id, None)
            self.cancelled.discard(response_id)
            watcher.cancel()

        self._tasks[response_id] = task
        task.add_done_callback(done)

    def cancel(self, response_id: str) -> None:
        """Stop the response's work if it runs here (its row is already marked cancelled)."""
        task = self._tasks.get(response_id)
        if task is not None:
            self.cancelled.add(response_id)
            task.cancel()

    async def _watch(self, response_id: str, task: asyncio.Task[Any]) -> None:
        while not task.done():
            await asyncio.sleep(self._poll_s)
            try:
                status = await self._book.status(response_id)
            except Exception as exc:  # the database may be away a moment: look again next time
                log.warning("could not look at background response %s: %s", response_id, exc)
                continue
            if status == "cancelled":
                self.cancel(response_id)
                return

    def running(self, response_id: str) -> bool:
        return response_id in self._tasks

    async def stop(self, grace_s: float) -> None:
        """At shutdown: the responses still running get the grace period to finish; those that do
        not are ended by the server, not their user: marked failed and free to the client (what
        the upstream may bill is counted as unbilled)."""
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=grace_s)
        self.stopping = True
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=grace_s)
