"""Where a session machine puts its events.

:class:`Emitter` is the interface; the proxy's event buffer
(:class:`dbproxy.observe.sink.QueueSink`) derives from it, so in the compiled build the
session's ``put`` is a native method call (a Python callable cost ~200 instructions per
event: the call protocol, then the wrapper parsing its arguments).  Anything else that
takes events (a test's ``list.append``) is wrapped in a :class:`CallbackEmitter`.
"""

from __future__ import annotations

from collections.abc import Callable

from dbproxy.protocol.events import Event

__all__ = ["CallbackEmitter", "EmitFn", "Emitter", "emitter"]

EmitFn = Callable[[Event], None]


class Emitter:
    """Takes the events of one or more sessions, in order; must not block."""

    __slots__ = ()

    def put(self, event: Event) -> None:
        raise NotImplementedError


class CallbackEmitter(Emitter):
    """An :class:`Emitter` that calls a function with every event."""

    __slots__ = ("_fn",)

    def __init__(self, fn: EmitFn) -> None:
        self._fn = fn

    def put(self, event: Event) -> None:
        self._fn(event)


def emitter(emit: EmitFn | Emitter) -> Emitter:
    """``emit`` as an :class:`Emitter` (wrapped when it is a plain callable)."""
    return emit if isinstance(emit, Emitter) else CallbackEmitter(emit)
