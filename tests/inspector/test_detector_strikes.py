"""Detector-hang strikes: the rule (a hang counts only after the detector answered others) and its thread safety."""
from __future__ import annotations

import threading

from inspector.detector_strikes import DetectorStrikes


def test_a_hang_counts_only_after_the_detector_answered_other_frames() -> None:
    book = DetectorStrikes(max_strikes=2)
    assert book.timeout("a") is None  # first strike
    assert book.timeout("a") is None  # detector answered nobody since: the runtime stalled, not the frame
    book.success("b")
    assert book.timeout("a") == 2  # hung again after the detector worked for others: quarantine
    assert "a" not in book.hangs
    assert book.timeout("c") is None
    book.success("c")  # answered at last: its strikes are forgotten
    assert "c" not in book.hangs and book.successes == 2


class _BothReadFirst(dict):
    """A strike dict whose ``get`` waits (briefly) until a second thread has also read: without the book's lock
    both threads see the same strikes before either writes, the lost-update interleaving."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.barrier = threading.Barrier(2, timeout=0.5)

    def get(self, *args: object):  # type: ignore[override]
        value = super().get(*args)
        try:
            self.barrier.wait()  # hold the value read until the other thread has read too
        except threading.BrokenBarrierError:
            pass  # the other thread is held off by the lock: carry on alone
        return value


def test_concurrent_hangs_on_the_same_frame_quarantine_it_once() -> None:
    book = DetectorStrikes(max_strikes=2)
    book.timeout("same")
    book.success("other")
    book.hangs = _BothReadFirst(book.hangs)
    results: list[int | None] = []
    errors: list[BaseException] = []

    def hang() -> None:
        try:
            results.append(book.timeout("same"))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=hang) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert errors == []
    assert sorted(results, key=lambda r: r or 0) == [None, 2]  # one quarantine, the other is kept and retried
