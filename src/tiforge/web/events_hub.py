"""Server-sent events: every page that listens gets every job event, from whichever thread heard it."""

from __future__ import annotations

import asyncio
import json
import threading

KEEPALIVE_S = 15.0


class EventHub:
    def __init__(self):
        self._lock = threading.Lock()
        self._listeners: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = []

    def publish(self, event: dict) -> None:
        """Called from any thread; a page that falls far behind misses events (it re-reads the job)."""
        with self._lock:
            listeners = list(self._listeners)
        for loop, queue in listeners:
            try:
                loop.call_soon_threadsafe(_put, queue, event)
            except RuntimeError:  # that page's loop has closed
                self._drop(queue)

    def close(self) -> None:
        """Server exit: every open stream ends (they would otherwise hold the shutdown up)."""
        with self._lock:
            listeners, self._listeners = self._listeners, []
        for loop, queue in listeners:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, None)
            except RuntimeError:
                pass

    def _drop(self, queue: asyncio.Queue) -> None:
        with self._lock:
            self._listeners = [(lp, q) for lp, q in self._listeners if q is not queue]

    async def stream(self):
        """The text/event-stream body: `data: {...}` per event, a comment now and then to keep it open."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=1000)
        with self._lock:
            self._listeners.append((asyncio.get_running_loop(), queue))
        try:
            yield ": connected\n\n"
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except asyncio.TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if event is None:
                    return
                yield f"data: {json.dumps(event)}\n\n"
        finally:
            self._drop(queue)


def _put(queue: asyncio.Queue, event: dict) -> None:
    if queue.qsize() < queue.maxsize - 1:  # the last place is kept for close()'s end mark
        queue.put_nowait(event)
