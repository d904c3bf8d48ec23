"""Reconcile a drop folder with the database: whatever frame files sit there are unfinished work.

Finished frames leave the drop folder right after their commit, so the folder itself is the to-do list: frames
that arrived while the daemon was down, whose events were lost, or whose move was interrupted by a crash.
Files modified in the last ``min_age_s`` are skipped (a writer may still be at them; their events will come).
The pipeline's (camera, name, sha256) lookup makes re-offering a finished frame harmless.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from inspector.config import CameraConfig
from inspector.naming import is_candidate


def scan_drop_folder(camera: CameraConfig, min_age_s: float = 0.0) -> list[Path]:
    """Candidate frame files in the folder, oldest first."""
    folder = Path(camera.drop_folder)
    if not folder.is_dir():
        return []
    now = time.time()
    found: list[tuple[float, Path]] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if not entry.is_file(follow_symlinks=False) or not is_candidate(entry.name, camera.extensions):
                continue
            try:
                mtime = entry.stat().st_mtime
            except FileNotFoundError:
                continue
            if now - mtime >= min_age_s:
                found.append((mtime, Path(entry.path)))
    return [p for _, p in sorted(found)]


def reconcile(camera: CameraConfig, offer: Callable[[str, Path, str], bool], min_age_s: float = 0.0) -> int:
    """Offer every finished-looking frame of the folder; returns how many were newly queued."""
    return sum(1 for path in scan_drop_folder(camera, min_age_s) if offer(camera.id, path, "reconcile"))
