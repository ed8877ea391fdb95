"""Which events of a drained batch the span builder has to look at (compiled).

With tracing configured but untraced statements not sampled (the default), a statement
gets a span only when its text carries a sqlcommenter ``traceparent`` (and it was sent
in the batch that ran it) or, with ``trace_slow_ms``, when it was slow.  Most
statements are neither.  The span builder (``export/otel.py``, interpreted, run in a
worker thread) costs ~3,000 instructions per statement just to decide that, and holds
the GIL against the event loop meanwhile; this test costs ~150, on the loop, and when it
picks nothing the thread is not woken at all.

The selection is a superset of what the builder acts on: it also gets the session
events it keeps client addresses from.
"""

from __future__ import annotations

from dbproxy.protocol.events import (
    Event,
    SessionClosed,
    SessionOpened,
    StatementEvent,
    StatementFailed,
    StatementFinished,
)

__all__ = ["NEVER_SLOW", "span_candidates"]

#: ``slow_ns`` when there is no slow threshold
NEVER_SLOW = -1


def span_candidates(events: list[Event], every_statement: bool, slow_ns: int) -> list[int]:
    """Indices in ``events`` of what the span builder must see: every statement when
    ``every_statement`` (root spans are sampled), else the statements that carry a
    ``traceparent`` comment or took ``slow_ns`` or longer (``NEVER_SLOW``: none); and
    every session opened/closed event."""
    picked: list[int] = []
    finished, failed = StatementFinished, StatementFailed
    opened, closed = SessionOpened, SessionClosed
    for i, ev in enumerate(events):
        cls = type(ev)
        if cls is finished or cls is failed:
            if every_statement:
                picked.append(i)
            else:
                st: StatementEvent = ev  # type: ignore[assignment]  # checked just above
                if (st.text_in_batch and "traceparent" in st.text) or (
                    slow_ns >= 0 and st.duration_ns >= slow_ns
                ):
                    picked.append(i)
        elif cls is opened or cls is closed:
            picked.append(i)
    return picked
