"""Reconcile a drop folder: whatever frame entries sit there are unfinished work.

Finished frames leave the drop folder right after their commit, so the folder itself is the to-do list: frames
that arrived while the daemon was down, whose events were lost, or whose move was interrupted by a crash. The
scan only lists entries; they go through the watcher's stability tracker like any event (a file a writer is
still at is not taken before it settles). The pipeline's (camera, name, sha256) lookup makes re-offering a
finished frame harmless. Links and other non-regular entries are listed too (``lstat``, never followed): the
pipeline refuses them; directories are not frames and are left alone.
"""
from __future__ import annotations

import os
from pathlib import Path

from inspector.config import CameraConfig
from inspector.naming import is_candidate


def scan_drop_folder(camera: CameraConfig) -> list[Path]:
    """Candidate frame entries in the folder (anything but directories), oldest first."""
    folder = Path(camera.drop_folder)
    if not folder.is_dir():
        return []
    found: list[tuple[int, Path]] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if not is_candidate(entry.name, camera.extensions):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    continue
                mtime = entry.stat(follow_symlinks=False).st_mtime_ns
            except FileNotFoundError:
                continue
            found.append((mtime, Path(entry.path)))
    return [p for _, p in sorted(found)]
