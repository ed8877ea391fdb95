"""The drain hands large batches to the consumers in slices; notes follow their events."""

from __future__ import annotations

from dbproxy.app import _slice_notes
from dbproxy.observe.aggregator import StatementNote


def test_notes_are_rekeyed_by_index_in_their_slice() -> None:
    notes = {i: StatementNote(None, f"{i:032x}", f"{i:016x}") for i in (0, 5, 511, 512, 1000)}
    first = _slice_notes(notes, 0, 512)
    second = _slice_notes(notes, 512, 1024)
    assert first is not None and second is not None
    assert sorted(first) == [0, 5, 511] and first[511].trace_id == f"{511:032x}"
    assert sorted(second) == [0, 488] and second[488].trace_id == f"{1000:032x}"
    assert _slice_notes(notes, 1024, 1536) == {}
    assert _slice_notes(None, 0, 512) is None
    small = {3: notes[5]}
    assert _slice_notes(small, 0, 512) is small  # one slice: the dict as it is
