"""Stop sequences over streamed text (OpenAI's `stop`).

Generation ends at the first occurrence of any stop string, and neither the stop string nor
anything after it is part of the answer. A stream must never show a piece of a stop string
it later takes back, so `StopScanner` holds back the end of the text that could still be
the start of a stop string (at most the longest stop string less one character) until the
next delta settles it. Pure Python: the torch adapters feed it their decoded deltas.
"""

from __future__ import annotations


class StopScanner:
    """Feed text deltas in order; each call returns the text that is safe to show now.

    After a stop string is found (`hit`), everything later is dropped; `flush()` at the
    end releases what was held back when no stop string came."""

    def __init__(self, stops: tuple[str, ...] | list[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.hit = False
        self._held = ""

    def feed(self, delta: str) -> str:
        if self.hit or not delta:
            return ""
        if not self.stops:
            return delta
        text = self._held + delta
        found = [i for s in self.stops if (i := text.find(s)) >= 0]
        if found:
            self.hit = True
            self._held = ""
            return text[: min(found)]
        keep = self._partial_suffix(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """What is still held back, once the generation ended without a stop string."""
        out, self._held = ("" if self.hit else self._held), ""
        return out

    def _partial_suffix(self, text: str) -> int:
        """Length of the longest end of `text` that begins some stop string."""
        longest = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), longest, -1):
                if s.startswith(text[len(text) - n :]):
                    longest = n
                    break
        return longest
