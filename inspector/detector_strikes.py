"""Which frames hang the detector: strikes per frame content, shared by all analysis threads.

A hang only counts against a frame when the detector answered other frames since that frame's previous hang:
then the frame is the cause, not the victim of a stalled runtime, and after ``max_strikes`` it is quarantined
instead of hanging the line forever. ``Pipeline.analyze`` runs on several threads at once, so the bookkeeping is
a read-modify-write under one lock: unguarded, two threads hanging on the same content both read the same
strikes, both decide "quarantine", and the second ``del`` raises KeyError out of the analysis.
"""
from __future__ import annotations

import threading


class DetectorStrikes:
    """Thread-safe strike book: ``success`` after each detector answer, ``timeout`` after each hang."""

    def __init__(self, max_strikes: int) -> None:
        self.max_strikes = max_strikes
        self.successes = 0  # detector answers so far (any frame)
        self.hangs: dict[str, tuple[int, int]] = {}  # sha256 -> (strikes, successes at its last hang)
        self._lock = threading.Lock()

    def success(self, digest: str) -> None:
        """The detector answered ``digest``: count it and forget that frame's strikes."""
        with self._lock:
            self.successes += 1
            self.hangs.pop(digest, None)

    def timeout(self, digest: str) -> int | None:
        """The detector hung on ``digest``. Returns its strike count when it is to be quarantined now (the
        record is then cleared), None when the frame should be kept and retried."""
        with self._lock:
            strikes, seen = self.hangs.get(digest, (0, -1))
            if seen < self.successes:  # first hang, or the detector worked for others since the last one
                strikes += 1
            if strikes < self.max_strikes:
                self.hangs[digest] = (strikes, self.successes)
                return None
            self.hangs.pop(digest, None)
            return strikes
