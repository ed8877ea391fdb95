"""BoundaryFinder against FrameReader: the end it finds is where the reader completes the
message, however the bytes are split."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from dbproxy.protocol.boundary import BoundaryFinder
from dbproxy.protocol.framing import FrameReader


def _frame(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


@given(
    st.lists(st.binary(max_size=40), min_size=2, max_size=6),
    st.integers(0, 10_000),
    st.lists(st.integers(1, 17), min_size=1, max_size=30),
)
def test_the_end_found_is_the_end_of_the_message_in_progress(
    bodies: list[bytes], cut_seed: int, steps: list[int]
) -> None:
    stream = b"".join(_frame(b"D", body) for body in bodies)
    first_end = 5 + len(bodies[0])
    cut = cut_seed % len(stream)  # the reader has seen stream[:cut]
    reader = FrameReader.for_backend()
    reader.feed(stream[:cut])
    remaining, header = reader.rest_of_frame()
    finder = BoundaryFinder(remaining, header)
    # where the message in progress at `cut` ends
    ends, pos = [], 0
    for body in bodies:
        pos += 5 + len(body)
        ends.append(pos)
    expected = next(e for e in ends if e >= cut) if cut else 0
    if (remaining, header) == (0, b""):
        assert cut in (0, *ends)
        assert finder.feed(stream[cut:]) == 0
        return
    assert first_end <= expected or cut < first_end
    pos, i = cut, 0
    while True:
        step = steps[i % len(steps)]
        i += 1
        chunk = stream[pos : pos + step]
        end = finder.feed(chunk)
        if end is not None:
            assert pos + end == expected
            return
        pos += len(chunk)
        assert pos < expected


def test_a_header_split_across_reads() -> None:
    finder = BoundaryFinder(0, b"D\x00")
    assert finder.feed(b"\x00") is None
    assert finder.feed(b"\x00\x09ab") is None  # length 9: 5 body bytes, 2 seen
    assert finder.feed(b"cdeZ\x00") == 3
