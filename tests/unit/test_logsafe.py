"""The process log keeps tracebacks' frames and drops exception messages."""

from __future__ import annotations

import io
import logging

from dbproxy.logsafe import WITHHELD, SafeFormatter, format_exception_safely

SECRET = "Key (email)=(sentinel-in-a-message@example.com) already exists."


def _raise_chain() -> None:
    try:
        raise KeyError(SECRET)
    except KeyError as exc:
        raise ValueError(f"while handling {SECRET}") from exc


def test_traceback_frames_without_messages() -> None:
    try:
        _raise_chain()
    except ValueError as exc:
        text = format_exception_safely(exc)
    assert SECRET not in text and "sentinel" not in text
    assert text.count("Traceback (most recent call last):") == 2
    assert "KeyError: " + WITHHELD in text and "ValueError: " + WITHHELD in text
    assert "direct cause of the following exception" in text
    assert "in _raise_chain" in text and "test_logsafe.py" in text
    assert text.index("KeyError") < text.index("ValueError")  # innermost first, as Python


def test_formatter_on_a_logger() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(SafeFormatter("%(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("dbproxy.test_logsafe")
    log.addHandler(handler)
    log.propagate = False
    try:
        try:
            raise RuntimeError(SECRET)
        except RuntimeError:
            log.exception("consumer failed on a batch of %d events", 3)
        try:
            try:
                raise OSError(SECRET)
            except OSError:
                raise TypeError(SECRET.upper()) from None  # context suppressed
        except TypeError:
            log.error("suppressed context", exc_info=True)
    finally:
        log.removeHandler(handler)
    text = out.getvalue()
    assert "ERROR dbproxy.test_logsafe: consumer failed on a batch of 3 events" in text
    assert SECRET not in text and SECRET.upper() not in text
    assert "RuntimeError: " + WITHHELD in text and "OSError" not in text
