"""Where the proxy puts events: a bounded buffer that never blocks the data path.

``put`` is called from the proxy's data callbacks, so it does the least it can: an
append, or a drop counted when the buffer is full.  Consumers (the aggregator, tests)
``drain`` it from their own task, off the hot path.
"""

from __future__ import annotations

from typing import Protocol

from dbproxy.protocol.emit import Emitter
from dbproxy.protocol.events import Event

#: Default number of events buffered between two drains.
DEFAULT_CAPACITY = 65_536


class EventSink(Protocol):
    def put(self, event: Event) -> None: ...


class QueueSink(Emitter):
    """A bounded FIFO of events with accepted/dropped counters; not thread-safe.  An
    :class:`Emitter`: sessions put their events here by a native call when compiled."""

    __slots__ = ("_items", "accepted", "capacity", "dropped")

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        # a list, not a deque: compiled, its append is native (a deque's is a generic call)
        self._items: list[Event] = []
        self.accepted = 0
        self.dropped = 0

    def put(self, event: Event) -> None:
        if len(self._items) >= self.capacity:
            self.dropped += 1
            return
        self._items.append(event)
        self.accepted += 1

    def drain(self, limit: int | None = None) -> list[Event]:
        items = self._items
        if limit is None or limit >= len(items):
            self._items = []
            return items
        out = items[:limit]
        del items[:limit]
        return out

    def __len__(self) -> int:
        return len(self._items)
