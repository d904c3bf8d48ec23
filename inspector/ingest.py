"""The work queue between watchers/reconciler and the pipeline worker.

Events arrive more than once (close + move, an event and the reconciler seeing the same file); the queue keeps
a path at most once between "offered" and "done" so a frame is not processed twice concurrently. Cross-restart
idempotency is the database's job (unique camera, name, sha256).
"""
from __future__ import annotations

import hashlib
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path


@dataclass(frozen=True)
class FrameJob:
    camera: str
    path: Path
    source: str  # "event" | "reconcile" | "poll"
    offered_at: float = field(default_factory=time.perf_counter)
    received_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


class FrameQueue:
    def __init__(self, maxsize: int = 1000) -> None:
        self._queue: queue.Queue[FrameJob] = queue.Queue(maxsize)
        self._pending: set[Path] = set()
        self._lock = threading.Lock()
        self.dropped_full = 0  # offers refused because the queue was full (reconcile picks them up later)

    def offer(self, camera: str, path: Path, source: str) -> bool:
        """Queue ``path`` unless it is already pending; False when duplicate or full."""
        path = Path(path)
        with self._lock:
            if path in self._pending:
                return False
            try:
                self._queue.put_nowait(FrameJob(camera, path, source))
            except queue.Full:
                self.dropped_full += 1
                return False
            self._pending.add(path)
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
