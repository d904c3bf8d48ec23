"""Where a frame goes once its result is committed: ``processed/<camera>/<YYYY-MM-DD>/`` (or deleted per
retention), or ``quarantine/<camera>/<YYYY-MM-DD>/`` with a ``.reason.json`` beside it. The drop folder only ever
holds frames not yet committed, which is what makes the start-up reconcile simple: everything there is work.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

DATE_FORMAT = "%Y-%m-%d"
REASON_SUFFIX = ".reason.json"


def dated_dir(root: Path, camera: str, when: datetime) -> Path:
    return Path(root) / camera / when.astimezone(timezone.utc).strftime(DATE_FORMAT)


def unique_destination(directory: Path, name: str, sha256: str) -> Path:
    """``directory/name``, or ``name`` with the hash prefix appended when another file already holds it."""
    dest = directory / name
    if dest.exists():
        stem, suffix = os.path.splitext(name)
        dest = directory / f"{stem}-{sha256[:12]}{suffix}"
    return dest


def move_file(src: Path, dest: Path) -> Path:
    """Atomic rename within a filesystem, copy+fsync+rename+unlink across filesystems (processed/ may be a share).

    The cross-filesystem copy goes to a hidden temp name first and is renamed onto ``dest`` only when complete:
    a copy cut short (disk full, share gone) must never leave a truncated ``dest`` that a retry would take for
    the stored frame (and then delete the only good copy)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dest)
        return dest
    except OSError:
        pass
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        shutil.copy2(src, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.unlink(src)
    return dest


def write_reason(frame_path: Path, reason: dict[str, object]) -> Path:
    path = frame_path.with_name(frame_path.name + REASON_SUFFIX)
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(json.dumps(reason, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def quarantine_file(src: Path, dest: Path, reason: dict[str, object]) -> Path:
    """Move ``src`` to ``dest`` (if it still exists) and write the reason beside it."""
    if src.exists():
        move_file(src, dest)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
    write_reason(dest, reason)
    return dest


def purge_older_than(root: Path, days: int | None, now: datetime | None = None) -> int:
    """Delete ``root/<camera>/<date>/`` folders older than ``days``; returns how many folders were removed."""
    if days is None or not Path(root).is_dir():
        return 0
    cutoff = (now or datetime.now(timezone.utc)).date() - timedelta(days=days)
    removed = 0
    for camera_dir in Path(root).iterdir():
        if not camera_dir.is_dir():
            continue
        for day_dir in camera_dir.iterdir():
            try:
                day = datetime.strptime(day_dir.name, DATE_FORMAT).date()
            except ValueError:
                continue  # not ours
            if day_dir.is_dir() and day < cutoff:
                shutil.rmtree(day_dir, ignore_errors=True)
                removed += 1
    return removed


def file_age_s(path: Path) -> float:
    return time.time() - path.stat().st_mtime
