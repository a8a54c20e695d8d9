"""Stop-sequence matching on streamed text.

The gateway matches stop sequences itself because OpenAI-style backends strip
the matched text without saying which sequence it was. Text that could be the
start of a stop sequence is held back until the next fragment decides it.
"""

from __future__ import annotations


class StopMatcher:
    """Feed text fragments; get back the text that is safe to emit."""

    def __init__(self, sequences: tuple[str, ...]) -> None:
        self.sequences = sequences
        self.pending = ""
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        """Text to emit now; sets ``matched`` (and drops the rest) on a match."""
        if self.matched is not None:
            return ""
        buf = self.pending + text
        best = -1
        for seq in self.sequences:
            at = buf.find(seq)
            if at != -1 and (best == -1 or at < best):
                best, self.matched = at, seq
        if best != -1:
            self.pending = ""
            return buf[:best]
        hold = 0
        for seq in self.sequences:
            # longest suffix of buf that is a proper prefix of seq
            for size in range(min(len(seq) - 1, len(buf)), hold, -1):
                if buf.endswith(seq[:size]):
                    hold = size
                    break
        self.pending = buf[len(buf) - hold:] if hold else ""
        return buf[:len(buf) - hold] if hold else buf

    def flush(self) -> str:
        """Held-back text once no more text will come."""
        text, self.pending = self.pending, ""
        return text
