"""Reading a frame file without being fooled: never through a link, never a non-regular file, and knowing exactly
which version of the file the bytes came from.

- The entry is ``lstat``-ed first: a symbolic link, FIFO, socket or device node is refused without being opened
  (opening a FIFO blocks, opening a device can act on it). It is then opened with ``O_NOFOLLOW | O_NONBLOCK``
  and ``fstat``-ed: what is checked is the file actually open, so an entry swapped for a link between the two
  steps is refused too (ELOOP), not followed.
- A file with more than one hard link is read (docs/operations.md argues it: under the kernel's
  ``fs.protected_hardlinks=1`` a link can only be made by someone who may read and write the file anyway; with
  the protection off it is refused unread, ``hardlink``), but it is never moved: storage writes a copy of the bytes read, so nothing under the state directory shares an inode
  with a file outside the drop folder, and later writes through the other name cannot change a stored frame.
- ``FileSignature`` (device, inode, size, mtime, ctime) identifies one version of the file. The bytes are read
  through the descriptor and ``fstat`` is compared before and after: a file that changed while being read is
  "not ready", never half-taken. Storage compares the signature again before it moves the file.
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from inspector.quarantine import Quarantine, QuarantineReason

PROTECTED_HARDLINKS = Path("/proc/sys/fs/protected_hardlinks")


@dataclass(frozen=True)
class FileSignature:
    """One version of a directory entry (from ``lstat`` or ``fstat``)."""

    dev: int
    ino: int
    kind: int  # stat.S_IFMT of st_mode
    size: int
    mtime_ns: int
    ctime_ns: int
    links: int  # st_nlink (not part of the version: linking elsewhere does not change the content)

    @classmethod
    def of(cls, st: os.stat_result) -> "FileSignature":
        return cls(st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                   st.st_nlink)

    @classmethod
    def at(cls, path: Path) -> "FileSignature | None":
        """The entry's signature without following a link; None when it is gone."""
        try:
            return cls.of(os.lstat(path))
        except FileNotFoundError:
            return None


@dataclass(frozen=True)
class FrameRead:
    """The bytes of one version of a frame file, and which version it was."""

    data: bytes
    signature: FileSignature


class Refused(Quarantine):
    """An entry refused before its content was read; ``entry`` is what it was (for its disposal)."""

    def __init__(self, kind: QuarantineReason, message: str, entry: FileSignature) -> None:
        super().__init__(kind, message)
        self.entry = entry


class NotReady(Exception):
    """The file changed while (or since) it was judged stable: it is still being written."""


def hardlinks_protected() -> bool:
    """The kernel refuses hard links to files the linking user may not read and write (``fs.protected_hardlinks``,
    on by default since Linux 3.6 and in every systemd distribution)."""
    try:
        return PROTECTED_HARDLINKS.read_text().strip() == "1"
    except OSError:
        return False


def read_frame(path: Path, max_bytes: int, expected: FileSignature | None = None,
               links_protected: bool = True) -> FrameRead:
    """Read ``path`` safely. Raises ``FileNotFoundError`` (gone), ``NotReady`` (changed since ``expected``, or
    while reading) or ``Quarantine`` (symlink, not a regular file, too big, unreadable multi-link file)."""
    entry = FileSignature.of(os.lstat(path))
    if entry.kind == stat.S_IFLNK:
        raise Refused(QuarantineReason.SYMLINK, "symbolic link: not followed, target not read", entry)
    if entry.kind != stat.S_IFREG:
        raise Refused(QuarantineReason.NOT_REGULAR, f"not a regular file ({_kind_name(entry.kind)}): not opened",
                      entry)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # swapped for a link after the lstat
            raise NotReady("replaced by a symbolic link") from None
        raise
    try:
        before = os.fstat(fd)
        signature = FileSignature.of(before)
        if signature.kind != stat.S_IFREG:  # swapped for something else after the lstat
            raise NotReady("replaced by a non-regular file")
        if expected is not None and _version(signature) != _version(expected):
            raise NotReady("changed since it was judged stable")
        if signature.links > 1 and not links_protected:
            raise Refused(QuarantineReason.HARDLINK, f"{signature.links} hard links and the kernel does not "
                          "protect hard links (fs.protected_hardlinks=0): not read", signature)
        if signature.size > max_bytes:
            raise Refused(QuarantineReason.TOO_LARGE, f"file is {signature.size:,} bytes (limit {max_bytes:,}); "
                          "not read", signature)
        data = _read_all(fd, before.st_size, max_bytes)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if len(data) != before.st_size or _version(FileSignature.of(after)) != _version(signature):
        raise NotReady("changed while being read")
    return FrameRead(data, signature)


def _read_all(fd: int, size: int, max_bytes: int) -> bytes:
    chunks, total = [], 0
    while True:
        chunk = os.read(fd, max(size - total, 0) + 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise NotReady("grew while being read")


def _version(sig: FileSignature) -> tuple[int, int, int, int, int]:
    return sig.dev, sig.ino, sig.size, sig.mtime_ns, sig.ctime_ns


def same_version(a: FileSignature | None, b: FileSignature | None) -> bool:
    return a is not None and b is not None and _version(a) == _version(b)


def _kind_name(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "directory")):
        if test(mode):
            return name
    return "unknown type"
