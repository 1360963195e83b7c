"""A backend's event stream parses to the same events however its bytes are cut into reads."""

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storegate.backends import stream
from storegate.backends.stream import SSEDecoder
from storegate.errors import BackendFailed


def _events(pieces: list[bytes]) -> list[bytes]:
    decoder = SSEDecoder("b")
    out = [event for piece in pieces for event in decoder.feed(piece)]
    return out + decoder.end()


def _cut(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(raw) + 1) for c in cuts} | {0, len(raw)})
    return [raw[a:b] for a, b in itertools.pairwise(points) if b > a]


line_text = st.text(st.characters(exclude_characters="\r\n", codec="utf-8"), max_size=40)
event = st.tuples(
    st.lists(line_text, min_size=1, max_size=3),  # data lines
    st.booleans(),  # a comment line first
    st.booleans(),  # "data:" without the optional space
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(event, min_size=1, max_size=6), st.sampled_from(["\n", "\r\n"]), st.lists(st.integers(0, 10_000))
)
def test_events_are_the_same_however_the_stream_is_cut(
    events: list[tuple[list[str], bool, bool]], newline: str, cuts: list[int]
) -> None:
    text = ""
    for lines, comment, tight in events:
        if comment:
            text += ": keep-alive" + newline
        text += "".join(("data:" if tight else "data: ") + line + newline for line in lines) + newline
    raw = text.encode()
    # One space after "data:" is the separator (the SSE spec): a tight line starting with one loses it.
    expected = [
        b"\n".join((line[1:] if tight and line.startswith(" ") else line).encode() for line in lines)
        for lines, _, tight in events
    ]
    assert _events(_cut(raw, cuts)) == expected
    assert _events([raw[i : i + 1] for i in range(len(raw))]) == expected


def test_a_last_event_without_its_blank_line_is_still_delivered() -> None:
    assert _events([b'data: {"a": 1}\n\ndata: {"b"', b": 2}\n"]) == [b'{"a": 1}', b'{"b": 2}']


def test_a_line_longer_than_the_limit_fails_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "MAX_EVENT", 64)
    pieces: list[Any] = [b"data: " + b"x" * 40, b"x" * 40]
    with pytest.raises(BackendFailed, match="over 64 MiB"):
        _events(pieces)
    with pytest.raises(BackendFailed, match="over 64 MiB"):
        _events([b"data: {}\n\ndata: " + b"x" * 100])
