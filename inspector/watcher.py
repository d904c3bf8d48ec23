"""Drop-folder watching with watchdog, and the one rule that decides when a file is taken: it is *stable*.

Every source of "there is a file" feeds the same tracker (``CameraWatcher.observe``): inotify events (created,
modified, closed, moved in), polling events (network shares, where inotify sees nothing), the reconcile scan
(frames that arrived while the daemon was down, or whose events were lost) and the pipeline handing back a file
that is not whole yet (``not_ready``). A file is submitted once its ``lstat`` signature (inode, size, mtime, ctime)
has been unchanged for the camera's ``stable_s``; a close event alone never makes a file complete (a writer that
closes between chunks closes many times). The pipeline then also checks that the bytes are whole (format end
marker, declared sizes) and gives a prefix back here: it is submitted again when it changes and settles, or
once it has been unchanged for ``incomplete_after_s`` (then quarantined as incomplete). A file still changing is
therefore never taken, moved or quarantined.

Temp names and other extensions are ignored (``naming.is_candidate``); directories are ignored; links and other
non-regular entries are tracked like files and refused by the pipeline (``frame_file.read_frame``) without being
read. A handler exception is logged and counted, never propagated: it would kill the observer thread.
"""
from __future__ import annotations

import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from inspector.config import CameraConfig
from inspector.frame_file import FileSignature
from inspector.ingest import FrameJob
from inspector.logging_json import log_fields
from inspector.naming import is_candidate
from inspector.reconcile import scan_drop_folder

log = logging.getLogger("inspector.watcher")


class _BenignStopNoise(logging.Filter):
    """watchdog logs an ERROR when an inotify emitter is stopped mid-read; on our clean stop it is expected."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


def _install_noise_filter() -> None:
    emitter_log = logging.getLogger("watchdog.observers.inotify")
    if not any(isinstance(f, _BenignStopNoise) for f in emitter_log.filters):
        emitter_log.addFilter(_BenignStopNoise())


Submit = Callable[[FrameJob], bool]  # False: not accepted now (queue full, path in hand), offer it again later


@dataclass
class _Candidate:
    signature: FileSignature
    changed_at: float  # monotonic: when the signature was last seen changing (or first seen)
    due: float  # monotonic: when to submit it if nothing changes
    source: str


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: "CameraWatcher") -> None:
        self.watcher = watcher

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            super().dispatch(event)
        except Exception:  # noqa: BLE001 - never let an exception reach (and kill) the observer thread
            self.watcher.handler_errors += 1
            log.exception("drop-folder event handler failed", **log_fields(camera=self.watcher.camera.id,
                                                                            event=event.event_type))

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type in ("opened", "closed_no_write"):
            return
        if event.event_type == "moved":
            self.watcher.observe(Path(os.fsdecode(event.dest_path)), self.watcher.event_source)
        if event.event_type != "deleted":
            self.watcher.observe(Path(os.fsdecode(event.src_path)), self.watcher.event_source)


class CameraWatcher:
    def __init__(self, camera: CameraConfig, submit: Submit) -> None:
        self.camera = camera
        self.submit = submit
        self.polling = camera.observer == "polling"
        self.folder = Path(camera.drop_folder)
        self.handler_errors = 0
        self.restarts = 0
        self._pending: dict[Path, _Candidate] = {}
        self._pending_lock = threading.Lock()
        self._stop = threading.Event()
        self._observer: Observer | PollingObserver | None = None
        self._checker: threading.Thread | None = None
        self._folder_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the folder being watched

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        _install_noise_filter()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._folder_id = self._current_folder_id()
        self._stop.clear()
        self._start_observer()
        self._checker = threading.Thread(target=self._stability_loop, name=f"stable-{self.camera.id}", daemon=True)
        self._checker.start()

    def _start_observer(self) -> None:
        observer = (PollingObserver(timeout=self.camera.poll_interval_s) if self.polling else Observer())
        observer.schedule(_Handler(self), str(self.folder), recursive=False)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout)
            self._observer = None
        if self._checker is not None:
            self._checker.join(timeout)
            self._checker = None

    def _current_folder_id(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.folder)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def is_alive(self) -> bool:
        """The observer threads run *and* still watch the folder: an inotify watch dies silently with its
        directory (deleted, or deleted and recreated: a new inode), while the observer thread lives on."""
        observer_ok = self._observer is not None and self._observer.is_alive()
        checker_ok = self._checker is not None and self._checker.is_alive()
        folder_ok = self._folder_id is not None and self._current_folder_id() == self._folder_id
        return observer_ok and checker_ok and folder_ok

    def ensure_alive(self) -> bool:
        """Restart a dead observer (e.g. the folder vanished and came back); True if it had to."""
        if self._stop.is_set() or self.is_alive():
            return False
        reason = "folder missing" if self._current_folder_id() is None else (
            "folder replaced" if self._current_folder_id() != self._folder_id else "observer thread died")
        log.error("drop-folder observer died; restarting",
                  **log_fields(camera=self.camera.id, folder=str(self.folder), reason=reason))
        self.restarts += 1
        self.stop()
        self.start()
        return True

    # -- the stability tracker ---------------------------------------------------------------------------
    @property
    def event_source(self) -> str:
        return "poll" if self.polling else "event"

    def observe(self, path: Path, source: str) -> None:
        """There is (or was) an entry at ``path``: track it until it is stable. Cheap: one ``lstat``."""
        if path.parent != self.folder or not is_candidate(path, self.camera.extensions):
            return
        signature = FileSignature.at(path)
        with self._pending_lock:
            if signature is None or signature.kind == stat.S_IFDIR:
                self._pending.pop(path, None)
                return
            old = self._pending.get(path)
            if old is None or old.signature != signature:
                now = time.monotonic()
                self._pending[path] = _Candidate(signature, now, now + self.camera.stable_s,
                                                 old.source if old else source)

    def not_ready(self, job: FrameJob) -> None:
        """The pipeline found ``job``'s file not whole (or changed): wait for it to change and settle again, or
        hand it back once it has been unchanged for ``incomplete_after_s`` (then it is quarantined)."""
        if job.signature is None:
            self.observe(job.path, job.source)
            return
        with self._pending_lock:
            if job.path not in self._pending:
                self._pending[job.path] = _Candidate(job.signature, job.unchanged_since,
                                                     job.unchanged_since + self.camera.incomplete_after_s,
                                                     job.source)

    def rescan(self) -> int:
        """Observe every entry of the folder (the reconcile: what arrived unseen); returns how many there are."""
        paths = scan_drop_folder(self.camera)
        for path in paths:
            self.observe(path, "reconcile")
        return len(paths)

    def pending_count(self) -> int:
        with self._pending_lock:
            return len(self._pending)

    def _stability_loop(self) -> None:
        period = max(0.02, min(self.camera.poll_interval_s, self.camera.stable_s / 4))
        while not self._stop.wait(period):
            try:
                self.check_stable()
            except Exception:  # noqa: BLE001
                self.handler_errors += 1
                log.exception("stability check failed", **log_fields(camera=self.camera.id))

    def check_stable(self) -> None:
        """Re-``lstat`` every tracked entry: changed -> wait ``stable_s`` from now; unchanged until due -> submit."""
        now = time.monotonic()
        ready: list[tuple[Path, _Candidate]] = []
        with self._pending_lock:
            for path, cand in list(self._pending.items()):
                signature = FileSignature.at(path)
                if signature is None or signature.kind == stat.S_IFDIR:
                    del self._pending[path]
                elif signature != cand.signature:
                    self._pending[path] = _Candidate(signature, now, now + self.camera.stable_s, cand.source)
                elif now >= cand.due:
                    ready.append((path, cand))
                    del self._pending[path]
        for path, cand in ready:
            job = FrameJob(self.camera.id, path, cand.source, signature=cand.signature,
                           unchanged_since=cand.changed_at)
            try:
                accepted = self.submit(job)
            except Exception:  # noqa: BLE001 - one bad submission must not cost the others their turn
                self.handler_errors += 1
                log.exception("submitting a frame failed", **log_fields(camera=self.camera.id, frame=str(path)))
                continue
            if not accepted:
                with self._pending_lock:  # not accepted now: keep it, try again in a while
                    self._pending.setdefault(path, _Candidate(cand.signature, cand.changed_at,
                                                              time.monotonic() + self.camera.stable_s, cand.source))
