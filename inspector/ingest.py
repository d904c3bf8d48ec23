"""The work queue between the watchers' stability trackers and the pipeline worker.

A file can be judged stable more than once (a retry after a database outage, a rewrite under the same name); the
queue keeps a path at most once between "offered" and "done" so a frame is not processed twice concurrently.
Cross-restart idempotency is the database's job (unique camera, name, sha256).
"""
from __future__ import annotations

import hashlib
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from inspector.frame_file import FileSignature


@dataclass(frozen=True)
class FrameJob:
    camera: str
    path: Path
    source: str  # "event" | "poll" | "reconcile" | "retry"
    # The version judged stable (None: taken as it is, e.g. a direct ``Pipeline.process`` call) and since when
    # (monotonic) it has been unchanged: the pipeline reads exactly that version, and calls a file incomplete
    # only once it has been unchanged for the camera's ``incomplete_after_s``.
    signature: FileSignature | None = None
    unchanged_since: float = field(default_factory=time.monotonic)
    offered_at: float = field(default_factory=time.perf_counter)
    received_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


class FrameQueue:
    def __init__(self, maxsize: int = 1000) -> None:
        self._queue: queue.Queue[FrameJob] = queue.Queue(maxsize)
        self._pending: set[Path] = set()
        self._lock = threading.Lock()
        self.dropped_full = 0  # offers refused because the queue was full (the tracker offers them again)

    def offer(self, job: FrameJob) -> bool:
        """Queue ``job``; False when its path is already pending (the offer comes again later: it may be a newer
        version of the file than the one in hand) or the queue is full."""
        with self._lock:
            if job.path in self._pending:
                return False
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                self.dropped_full += 1
                return False
            self._pending.add(job.path)
            return True

    def get(self, timeout: float) -> FrameJob | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def done(self, job: FrameJob) -> None:
        with self._lock:
            self._pending.discard(job.path)

    def pending(self, path: Path) -> bool:
        with self._lock:
            return Path(path) in self._pending

    def busy(self) -> int:
        """Frames offered and not yet done (queued + being analysed/committed)."""
        with self._lock:
            return len(self._pending)

    def __len__(self) -> int:
        return self._queue.qsize()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
