"""Stop strings over streamed text: emit what is safe now, hold back what might become a stop string.

Generation stops as soon as any stop string is complete, i.e. at the occurrence that *ends* first (among those
ending at the same place, the one starting first). That is what a token-by-token engine sees, and it makes the
result independent of how the text is cut into deltas: the concatenation of everything ``feed`` and ``flush``
return equals the non-streamed output, and no stop string (with ``include_in_output=False``) ever shows up in a
delta, even when it is split across tokens.
"""

from __future__ import annotations


class StopStringMatcher:
    """Incremental stop-string matching for one output stream.

    ``feed(delta)`` returns ``(text_to_emit, stopped)``. It holds back the longest suffix of the text seen so far
    that is a prefix of some stop string, since the next delta may complete it. On a match it returns the text
    up to the stop string (plus the stop string when ``include_in_output``) and ``stopped=True``; later calls
    return ``("", True)``. ``flush()`` returns the held-back text when generation ends for another reason.
    """

    def __init__(self, stops: tuple[str, ...], include_in_output: bool = False) -> None:
        if any(not isinstance(s, str) or not s for s in stops):
            raise ValueError(f"stop strings must be non-empty strings, got {stops!r}")
        self.stops = tuple(stops)
        self.include_in_output = include_in_output
        self.matched: str | None = None  # the stop string that ended generation (vLLM's stop_reason)
        self._held = ""
        self._first_chars = frozenset(s[0] for s in self.stops)
        self._max_len = max((len(s) for s in self.stops), default=0)

    @property
    def stopped(self) -> bool:
        return self.matched is not None

    def feed(self, delta: str) -> tuple[str, bool]:
        """Add ``delta`` to the stream; return the text safe to emit now and whether a stop string matched."""
        if self.stopped:
            return "", True
        text = self._held + delta
        match = self._first_match(text)
        if match is not None:
            start, stop = match
            self.matched, self._held = stop, ""
            return text[: start + len(stop)] if self.include_in_output else text[:start], True
        keep = self._partial_suffix_start(text)
        self._held = text[keep:]
        return text[:keep], False

    def flush(self) -> str:
        """Return the held-back text at the end of generation (empty after a stop string matched)."""
        held, self._held = self._held, ""
        return held

    def _first_match(self, text: str) -> tuple[int, str] | None:
        """The occurrence in ``text`` that ends first (ties: starts first), as (start, stop string)."""
        best: tuple[int, int, str] | None = None  # (end, start, stop)
        for stop in self.stops:
            start = text.find(stop)
            if start >= 0:
                candidate = (start + len(stop), start, stop)
                if best is None or candidate[:2] < best[:2]:
                    best = candidate
        return None if best is None else (best[1], best[2])

    def _partial_suffix_start(self, text: str) -> int:
        """Index where the longest suffix of ``text`` that is a proper prefix of a stop string begins.

        Only the last ``max_len - 1`` characters can start such a suffix, so this costs O(max_len) prefix
        checks per call, whatever the length of the output.
        """
        for i in range(max(0, len(text) - self._max_len + 1), len(text)):
            if text[i] in self._first_chars and any(s.startswith(text[i:]) for s in self.stops):
                return i
        return len(text)
