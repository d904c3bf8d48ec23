"""Where a frame goes once its result is committed: ``processed/<camera>/<YYYY-MM-DD>/`` (or deleted per
retention), or ``quarantine/<camera>/<YYYY-MM-DD>/`` with a ``.reason.json`` beside it. The drop folder only ever
holds frames not yet committed, which is what makes the start-up reconcile simple: everything there is work.

What is stored is always the version of the file that was read and hashed (``store_frame``), never whatever
sits under the name at move time, and nothing stored is ever a link (``dispose_unread``).
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from inspector.frame_file import FileSignature, FrameRead, same_version
from inspector.logging_json import log_fields

log = logging.getLogger("inspector.storage")
DATE_FORMAT = "%Y-%m-%d"
REASON_SUFFIX = ".reason.json"


def dated_dir(root: Path, camera: str, when: datetime) -> Path:
    return Path(root) / camera / when.astimezone(timezone.utc).strftime(DATE_FORMAT)


NAME_MAX = 255  # bytes per file name on Linux file systems
# The longest stored name: room for the "-<sha256[:12]>" of unique_destination and the reason file's temp name
# (".<name>.reason.json.tmp"); a longer frame name is shortened (the full name stays in the row and the reason).
MAX_STORED_NAME = NAME_MAX - len("-") - 12 - len(".") - len(REASON_SUFFIX) - len(".tmp")


def bounded_name(name: str) -> str:
    """``name``, or for a name too long to store beside its reason file, its stem cut at a character boundary
    plus ``~<hash>`` and the suffix (the hash of the full name keeps two long names apart)."""
    if len(os.fsencode(name)) <= MAX_STORED_NAME:
        return name
    stem, suffix = os.path.splitext(name)
    suffix = suffix if len(os.fsencode(suffix)) <= 16 else ""
    tag = "~" + hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
    budget = MAX_STORED_NAME - len(os.fsencode(tag + suffix))
    while len(os.fsencode(stem)) > budget:
        stem = stem[:-1]
    return stem + tag + suffix


def unique_destination(directory: Path, name: str, sha256: str | None) -> Path:
    """``directory/name`` (bounded), or with the hash prefix appended when another entry already holds it."""
    name = bounded_name(name)
    dest = directory / name
    if os.path.lexists(dest) or os.path.lexists(dest.with_name(dest.name + REASON_SUFFIX)):
        stem, suffix = os.path.splitext(name)
        tag = (sha256 or hashlib.sha256(str(time.time_ns()).encode()).hexdigest())[:12]
        dest = directory / f"{stem}-{tag}{suffix}"
    return dest


def write_bytes_atomic(dest: Path, data: bytes) -> Path:
    """Write ``data`` to a hidden temp name, fsync, rename onto ``dest``: a write cut short (disk full, share gone)
    never leaves a truncated ``dest`` that a retry would take for the stored frame."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _same_inode(a: FileSignature | None, b: FileSignature) -> bool:
    """Same file and content version (a rename changes ctime, so ctime is not compared)."""
    return a is not None and (a.dev, a.ino, a.size, a.mtime_ns) == (b.dev, b.ino, b.size, b.mtime_ns)


def remove_if_same(src: Path, entry: FileSignature) -> bool:
    """Unlink ``src`` only if it is still the version we looked at (a writer may have put a new one there)."""
    if same_version(FileSignature.at(src), entry):
        src.unlink(missing_ok=True)
        return True
    return False


def store_frame(src: Path, dest: Path | None, read: FrameRead) -> Path | None:
    """Put the version of ``src`` that was read at ``dest`` (None: just take it out of the drop folder).

    The file is renamed (atomic, no copy) only when it is still exactly the version read and has a single link.
    Otherwise the bytes read are written to ``dest`` (which then always matches the row's sha256): a file with
    other hard links is copied, never moved (nothing under the state directory shares an inode with a file
    elsewhere); a file rewritten since it was read stays in the drop folder as the new frame it is; a file on
    another file system is copied and the original removed. A file swapped in between the check and the rename
    is put back under its name."""
    ours = same_version(FileSignature.at(src), read.signature)
    if dest is None:
        if ours:
            remove_if_same(src, read.signature)
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)
    if ours and read.signature.links == 1:
        try:
            os.rename(src, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        else:
            if _same_inode(FileSignature.at(dest), read.signature):
                return dest
            _put_back(dest, src)
    write_bytes_atomic(dest, read.data)
    if ours:
        remove_if_same(src, read.signature)
    return dest


def _put_back(moved: Path, src: Path) -> None:
    """``moved`` is a newer version that replaced ``src`` just before our rename: give it its name back."""
    try:
        os.link(moved, src, follow_symlinks=False)
    except FileExistsError:
        keep = moved.with_name(f"{moved.name}.{time.time_ns()}.unclaimed")
        os.rename(moved, keep)
        log.error("a newer version of a frame was moved by mistake and its name is taken again; kept aside",
                  **log_fields(frame=str(src), kept=str(keep)))
        return
    os.unlink(moved)


def dispose_unread(src: Path, dest: Path, entry: FileSignature) -> Path | None:
    """A refused entry whose content was never read: a symbolic link (or a file with several hard links) is
    removed, never moved, so no link ever lands under the state directory; other entries (a FIFO, a too-big
    file) are renamed to ``dest`` as evidence. Nothing happens when the entry changed meanwhile."""
    if entry.kind == stat.S_IFLNK or entry.links > 1:
        remove_if_same(src, entry)
        return None
    if not same_version(FileSignature.at(src), entry):
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        log.error("refused entry left in the drop folder: quarantine is on another file system",
                  **log_fields(frame=str(src)))
        return None
    return dest


def write_reason(frame_path: Path, reason: dict[str, object]) -> Path:
    path = frame_path.with_name(frame_path.name + REASON_SUFFIX)
    write_bytes_atomic(path, (json.dumps(reason, indent=2, default=str) + "\n").encode())
    return path


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

