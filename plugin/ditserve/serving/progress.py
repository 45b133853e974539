"""Progress of a running request, carried from the engine's thread to the event loop that streams it.

The engine reports each step from the scheduler's worker thread; gRPC's `GenerateStream` and HTTP's
event stream both yield every update, in order, until the request's future is done and no update is
left behind it. The relay is that one loop, shared by both transports.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator


class ProgressRelay:
    """A queue of progress updates, filled from any thread, drained by the event loop that created it."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._updates: asyncio.Queue = asyncio.Queue()

    def on_progress(self, update) -> None:
        """The engine's progress callback; safe to call from any thread."""
        self._loop.call_soon_threadsafe(self._updates.put_nowait, update)

    async def until_done(self, future: asyncio.Future) -> AsyncIterator:
        """Each update as it arrives, until `future` is done and every update sent before it was yielded."""
        while not (future.done() and self._updates.empty()):
            getter = asyncio.ensure_future(self._updates.get())
            done, _ = await asyncio.wait({getter, future}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                continue
            yield getter.result()
