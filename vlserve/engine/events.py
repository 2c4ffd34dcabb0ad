"""A tiny publish/subscribe hub: the worker publishes model-loading events, each SSE client
of /admin/models/events reads its own bounded queue (a slow reader loses old events, it
never blocks the engine thread)."""

from __future__ import annotations

import queue
import threading
import time


class EventHub:
    def __init__(self, backlog: int = 256):
        self._subscribers: set[queue.Queue] = set()
        self._lock = threading.Lock()
        self._backlog = backlog
        self.last: dict | None = None    # the latest event, for late subscribers

    def publish(self, event: dict) -> None:
        event = {**event, "time": round(time.time(), 3)}
        with self._lock:
            self.last = event
            subscribers = list(self._subscribers)
        for q in subscribers:
            try:
                q.put_nowait(event)
            except queue.Full:          # drop the oldest: progress is only worth the latest
                try:
                    q.get_nowait()
                    q.put_nowait(event)
                except (queue.Empty, queue.Full):
                    pass

    def subscribe(self) -> queue.Queue:
        q: queue.Queue = queue.Queue(maxsize=self._backlog)
        with self._lock:
            self._subscribers.add(q)
        return q

    def unsubscribe(self, q: queue.Queue) -> None:
        with self._lock:
            self._subscribers.discard(q)
