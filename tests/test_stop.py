"""StopStringMatcher: streamed output equals the non-streamed output, and no stop string leaks into a delta."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forwardpass.stop import StopStringMatcher


def reference(text: str, stops: tuple[str, ...], include: bool) -> tuple[str, str | None]:
    """Non-streamed result: cut at the stop occurrence that completes first (ties: the one starting first)."""
    best = None
    for stop in stops:
        start = text.find(stop)
        if start >= 0 and (best is None or (start + len(stop), start) < (best[0] + len(best[1]), best[0])):
            best = (start, stop)
    if best is None:
        return text, None
    start, stop = best
    return text[: start + len(stop)] if include else text[:start], stop


def stream(chunks: list[str], stops: tuple[str, ...], include: bool) -> tuple[list[str], bool, StopStringMatcher]:
    matcher = StopStringMatcher(stops, include)
    pieces: list[str] = []
    stopped = False
    for chunk in chunks:
        piece, stopped = matcher.feed(chunk)
        pieces.append(piece)
        if stopped:
            break
    pieces.append(matcher.flush())
    return pieces, stopped, matcher


def split(text: str, cuts: list[int]) -> list[str]:
    bounds = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


def test_stop_split_across_tokens_never_appears() -> None:
    chunks = ["Hello", " there", "\n", "Us", "er", ": more"]
    pieces, stopped, matcher = stream(chunks, ("\nUser:",), include=False)
    assert stopped and matcher.matched == "\nUser:"
    assert "".join(pieces) == "Hello there"
    assert all("\n" not in p for p in pieces)


def test_include_stop_in_output() -> None:
    pieces, stopped, _ = stream(["ab", "cS", "TOPxyz"], ("STOP",), include=True)
    assert stopped and "".join(pieces) == "abcSTOP"


def test_false_alarm_is_released() -> None:
    matcher = StopStringMatcher(("abc",), False)
    assert matcher.feed("xab") == ("x", False)  # "ab" could still become "abc"
    assert matcher.feed("d") == ("abd", False)
    assert matcher.feed("ab") == ("", False)
    assert matcher.flush() == "ab"


def test_earliest_completion_wins() -> None:
    # "c" completes before "bcd" does, so a token-by-token engine stops at "c".
    assert stream(["a", "b", "c", "d"], ("bcd", "c"), False)[0] == ["a", "", "b", ""]
    assert "".join(stream(["abcd"], ("bcd", "c"), False)[0]) == "ab"
    # Same end: the longer (earlier-starting) one is reported.
    _, _, matcher = stream(["xabc"], ("bc", "abc"), True)
    assert matcher.matched == "abc"


def test_no_stops_passes_through() -> None:
    matcher = StopStringMatcher((), False)
    assert matcher.feed("anything") == ("anything", False)
    assert matcher.flush() == ""


def test_after_stop_feed_returns_nothing() -> None:
    matcher = StopStringMatcher(("x",), False)
    assert matcher.feed("axb") == ("a", True)
    assert matcher.feed("more") == ("", True)
    assert matcher.flush() == ""


def test_rejects_empty_stop() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        StopStringMatcher(("ok", ""), False)


ALPHABET = "ab\nc"


@settings(max_examples=400, deadline=None)
@given(
    text=st.text(alphabet=ALPHABET, max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=20),
    stops=st.lists(st.text(alphabet=ALPHABET, min_size=1, max_size=4), max_size=4).map(tuple),
    include=st.booleans(),
)
def test_streamed_equals_reference(text: str, cuts: list[int], stops: tuple[str, ...], include: bool) -> None:
    chunks = split(text, cuts)
    pieces, stopped, matcher = stream(chunks, stops, include)
    expected, expected_stop = reference(text, stops, include)
    assert "".join(pieces) == expected
    assert stopped == (expected_stop is not None)
    assert matcher.matched == expected_stop
    # Every emission is final: what was emitted so far is always a prefix of the final text, so no delta ever
    # ends in a partial stop that later completes (and, without include, never contains any of the stop).
    emitted = ""
    for piece in pieces:
        emitted += piece
        assert expected.startswith(emitted)


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(st.text(alphabet=ALPHABET, max_size=6), max_size=15),
    stops=st.lists(st.text(alphabet=ALPHABET, min_size=1, max_size=5), min_size=1, max_size=3).map(tuple),
)
def test_holds_back_only_possible_stop_prefixes(chunks: list[str], stops: tuple[str, ...]) -> None:
    """Liveness: text that can no longer start a stop string is emitted at once, not at the end."""
    matcher = StopStringMatcher(stops, False)
    seen = ""
    emitted = ""
    for chunk in chunks:
        piece, stopped = matcher.feed(chunk)
        emitted += piece
        if stopped:
            return
        seen += chunk
        held = seen[len(emitted) :]
        assert seen.startswith(emitted)
        assert len(held) < max(map(len, stops))
        assert held == "" or any(s.startswith(held) for s in stops)
