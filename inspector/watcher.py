"""Drop-folder watching with watchdog: a frame is offered only once it is completely written.

- inotify (local disks): ``FileClosedEvent`` = close after write; ``FileMovedEvent`` = a writer's temp name
  renamed to the final one. A created file with no close event (renamed in from another directory, hard-linked)
  is taken once its size and mtime have been stable for ``INOTIFY_CREATED_GRACE_S``.
- polling (network shares, where inotify sees nothing): created/modified paths wait in ``pending`` until their
  size and mtime have been unchanged for ``stable_s``.
Temp names and other extensions are ignored (``naming.is_candidate``). A handler exception is logged and counted,
never propagated: an exception inside a watchdog handler would kill the observer thread.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from inspector.config import CameraConfig
from inspector.logging_json import log_fields
from inspector.naming import is_candidate

log = logging.getLogger("inspector.watcher")


class _BenignStopNoise(logging.Filter):
    """watchdog logs an ERROR when an inotify emitter is stopped mid-read; on our clean stop it is expected."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


def _install_noise_filter() -> None:
    emitter_log = logging.getLogger("watchdog.observers.inotify")
    if not any(isinstance(f, _BenignStopNoise) for f in emitter_log.filters):
        emitter_log.addFilter(_BenignStopNoise())
Submit = Callable[[str, Path, str], object]  # (camera id, path, source)
INOTIFY_CREATED_GRACE_S = 2.0


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

    def on_closed(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self.watcher.complete(Path(str(event.src_path)), "event")

    def on_moved(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self.watcher.complete(Path(str(event.dest_path)), "event")

    def on_created(self, event: FileSystemEvent) -> None:
        # inotify too: a file renamed in from another directory, or hard-linked, is only ever "created" (no
        # close event follows); it waits in ``pending`` and is taken once stable, or at once if a close comes.
        if not event.is_directory:
            self.watcher.maybe_growing(Path(str(event.src_path)))

    def on_modified(self, event: FileSystemEvent) -> None:
        if not event.is_directory and self.watcher.polling:
            self.watcher.maybe_growing(Path(str(event.src_path)))


class CameraWatcher:
    def __init__(self, camera: CameraConfig, submit: Submit) -> None:
        self.camera = camera
        self.submit = submit
        self.polling = camera.observer == "polling"
        self.folder = Path(camera.drop_folder)
        self.handler_errors = 0
        self.restarts = 0
        self._pending: dict[Path, tuple[int, float, float]] = {}  # path -> (size, mtime, unchanged since)
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

    # -- events --------------------------------------------------------------------------------------------
    def complete(self, path: Path, source: str) -> None:
        if path.parent == self.folder and is_candidate(path, self.camera.extensions):
            with self._pending_lock:
                self._pending.pop(path, None)
            self.submit(self.camera.id, path, source)

    def maybe_growing(self, path: Path) -> None:
        if path.parent != self.folder or not is_candidate(path, self.camera.extensions):
            return
        try:
            st = path.stat()
        except FileNotFoundError:
            return
        with self._pending_lock:
            old = self._pending.get(path)
            if old is None or old[:2] != (st.st_size, st.st_mtime):
                self._pending[path] = (st.st_size, st.st_mtime, time.monotonic())

    @property
    def stable_after_s(self) -> float:
        """Unchanged this long -> complete. With inotify only files that got no close event wait here (moved in
        from elsewhere, hard-linked), so a longer grace costs nothing on the normal path and protects a writer
        that pauses mid-file."""
        return self.camera.stable_s if self.polling else max(self.camera.stable_s, INOTIFY_CREATED_GRACE_S)

    def _stability_loop(self) -> None:
        period = max(0.05, min(self.camera.poll_interval_s, self.stable_after_s / 2 or 0.05))
        while not self._stop.wait(period):
            try:
                self.check_stable()
            except Exception:  # noqa: BLE001
                self.handler_errors += 1
                log.exception("stability check failed", **log_fields(camera=self.camera.id))

    def check_stable(self) -> None:
        now = time.monotonic()
        ready: list[Path] = []
        with self._pending_lock:
            for path, (size, mtime, since) in list(self._pending.items()):
                try:
                    st = path.stat()
                except FileNotFoundError:
                    del self._pending[path]
                    continue
                if (st.st_size, st.st_mtime) != (size, mtime):
                    self._pending[path] = (st.st_size, st.st_mtime, now)
                elif now - since >= self.stable_after_s:
                    ready.append(path)
                    del self._pending[path]
        for path in ready:
            self.submit(self.camera.id, path, "poll" if self.polling else "created")
