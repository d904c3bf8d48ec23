"""A frame is taken only whole and stable, whatever the observer and however the writer writes; links are never
followed. Real writers (threads writing, closing, pausing, rewriting, linking) into a real drop folder watched
by the real daemon; every assertion is made after the settle/incomplete times have passed."""
from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import time
from datetime import timezone
from pathlib import Path

import cv2
import numpy as np
import pytest
from sqlalchemy import select
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

import inspector.storage
from inspector.db import Frame
from inspector.frame_file import FileSignature, NotReady, Refused, read_frame
from inspector.quarantine import QuarantineReason
from inspector.storage import store_frame

CHUNK = 4096


def rows(daemon) -> list[Frame]:
    with daemon.factory() as db:
        return list(db.scalars(select(Frame).order_by(Frame.id)))


def encoded(frames, position: int, ext: str) -> bytes:
    jpeg, _ = frames.jpeg(position, False)
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return jpeg if ext == ".jpg" else cv2.imencode(ext, image)[1].tobytes()


def chunked_write(path: Path, data: bytes, chunk: int = CHUNK, every_s: float = 0.05,
                  pause_after: int | None = None, pause_s: float = 0.0) -> float:
    """Open, append one chunk, close; again every ``every_s`` (each close is an inotify CLOSE_WRITE). Optionally
    pause ``pause_s`` after ``pause_after`` bytes. Returns the (wall clock) time of the last write."""
    written, last = 0, time.time()
    while written < len(data):
        with open(path, "ab") as handle:
            handle.write(data[written:written + chunk])
        last = time.time()
        written += chunk
        if pause_after is not None and written >= pause_after and pause_s:
            time.sleep(pause_s)
            pause_s = 0.0
        else:
            time.sleep(every_s)
    return last


def camera(tmp_path: Path, **extra: object) -> dict:
    return {"id": "cam1", "drop_folder": str(tmp_path / "drop1"), **extra}


def assert_exactly_once_ok(daemon, sent: dict[str, bytes]) -> None:
    found = rows(daemon)
    assert sorted(r.name for r in found) == sorted(sent), [(r.name, r.status, r.reason) for r in found]
    for row in found:
        assert row.status == "ok", (row.name, row.reason)
        assert row.sha256 == hashlib.sha256(sent[row.name]).hexdigest(), row.name
        assert Path(row.stored_path).read_bytes() == sent[row.name], row.name
    assert not [p for p in daemon.cfg.dir_for("quarantine").rglob("*") if p.is_file()]


@pytest.mark.parametrize("observer", ["inotify", "polling"])
def test_a_writer_that_closes_between_chunks_loses_nothing(observer, make_config, start_daemon, frames, wait,
                                                           tmp_path):
    """4 KiB every 50 ms, the file closed after each chunk (the writer of issue 10: 6 of 42 frames lost)."""
    cfg = make_config(cameras=[camera(tmp_path, observer=observer, poll_interval_s=0.1, stable_s=0.5)])
    daemon = start_daemon(cfg)
    drop = cfg.cameras[0].drop_folder
    sent: dict[str, bytes] = {}
    for i, ext in enumerate([".png", ".bmp", ".tiff", ".png", ".bmp", ".tiff"]):
        sent[f"P0{i % 2}_chunk{i}{ext}"] = encoded(frames, i % 2, ext)
    writers = [threading.Thread(target=chunked_write, args=(drop / name, data)) for name, data in sent.items()]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    wait(lambda: len(rows(daemon)) >= len(sent) and daemon.wait_idle(0.1), timeout=20)
    time.sleep(cfg.cameras[0].stable_s * 2)  # anything left to be (wrongly) taken again would be by now
    assert_exactly_once_ok(daemon, sent)
    assert not list(drop.iterdir())


@pytest.mark.parametrize("observer", ["inotify", "polling"])
def test_a_writer_pausing_longer_than_the_settle_time_is_waited_for(observer, make_config, start_daemon, frames,
                                                                   wait, tmp_path):
    """The file is stable (unchanged for stable_s) but not whole: it is not taken, moved or quarantined; the
    rest comes, and the frame is taken whole, once."""
    cfg = make_config(cameras=[camera(tmp_path, observer=observer, poll_interval_s=0.1, stable_s=0.3,
                                      incomplete_after_s=6.0)])
    daemon = start_daemon(cfg)
    drop = cfg.cameras[0].drop_folder
    data = encoded(frames, 0, ".png")
    path = drop / "P00_paused.png"
    chunked_write(path, data, pause_after=len(data) // 2, pause_s=1.5)  # 5x the settle time
    wait(lambda: rows(daemon) and daemon.wait_idle(0.1), timeout=15)
    time.sleep(0.6)
    assert_exactly_once_ok(daemon, {path.name: data})


def test_a_file_that_stops_growing_is_incomplete_only_after_the_timeout(make_config, start_daemon, frames, wait,
                                                                       tmp_path):
    cfg = make_config(cameras=[camera(tmp_path, stable_s=0.2, incomplete_after_s=2.0)])
    daemon = start_daemon(cfg)
    drop = cfg.cameras[0].drop_folder
    half = encoded(frames, 0, ".png")
    half = half[: len(half) // 2]
    empty_at = time.time()
    (drop / "P00_empty.png").write_bytes(b"")
    last_write = chunked_write(drop / "P00_crashed.png", half)  # the writer dies half way
    wait(lambda: len(rows(daemon)) == 2 and daemon.wait_idle(0.1), timeout=15)  # rows commit before the move
    found = {r.name: r for r in rows(daemon)}
    assert found["P00_crashed.png"].reason_code == QuarantineReason.INCOMPLETE
    assert found["P00_empty.png"].reason_code == QuarantineReason.EMPTY
    # never before the file had been unchanged for incomplete_after_s
    for name, since in (("P00_crashed.png", last_write), ("P00_empty.png", empty_at)):
        decided = found[name].processed_at.replace(tzinfo=timezone.utc).timestamp()
        assert decided - since >= 2.0, f"{name} quarantined {decided - since:.2f} s after its last change"
    stored = Path(found["P00_crashed.png"].stored_path)
    assert stored.read_bytes() == half and found["P00_crashed.png"].sha256 == hashlib.sha256(half).hexdigest()
    assert json.loads(stored.with_name(stored.name + ".reason.json").read_text())["kind"] == "incomplete"


def test_a_writer_that_rewrites_the_same_name(make_config, start_daemon, frames, wait, tmp_path):
    """Rewritten before it settled: only the last version is taken. Rewritten after it was taken: a new frame."""
    cfg = make_config(cameras=[camera(tmp_path, stable_s=0.4)])
    daemon = start_daemon(cfg)
    drop = cfg.cameras[0].drop_folder
    first, second, third = (encoded(frames, 0, ".png") for _ in range(3))
    path = drop / "P00_same.png"
    path.write_bytes(first)
    time.sleep(0.1)
    path.write_bytes(second)  # truncate + rewrite in place, within the settle time
    wait(lambda: rows(daemon) and daemon.wait_idle(0.1), timeout=10)
    time.sleep(0.5)
    assert [r.sha256 for r in rows(daemon)] == [hashlib.sha256(second).hexdigest()]
    tmp = drop / ".P00_same.png.tmp"
    tmp.write_bytes(third)
    os.replace(tmp, path)  # the same name again, a new file
    wait(lambda: len(rows(daemon)) == 2 and daemon.wait_idle(0.1), timeout=10)
    found = rows(daemon)
    assert [r.sha256 for r in found] == [hashlib.sha256(d).hexdigest() for d in (second, third)]
    assert [Path(r.stored_path).read_bytes() for r in found] == [second, third]


def test_the_stored_frame_is_the_version_read_even_if_rewritten_meanwhile(tmp_path):
    """Between read (hash) and move a writer rewrites the file: the stored file is the version read (it matches
    the row's sha256), and the new version stays in the drop folder to be taken as the frame it is."""
    src = tmp_path / "drop" / "P00_x.png"
    src.parent.mkdir()
    src.write_bytes(b"version one")
    read = read_frame(src, 1 << 20)
    time.sleep(0.01)
    src.write_bytes(b"version two, longer")
    dest = store_frame(src, tmp_path / "processed" / "P00_x.png", read)
    assert dest is not None and dest.read_bytes() == b"version one"
    assert src.read_bytes() == b"version two, longer"
    with pytest.raises(NotReady):  # and reading it against the old signature says "changed"
        read_frame(src, 1 << 20, expected=read.signature)


def test_a_file_swapped_in_just_before_the_rename_gets_its_name_back(tmp_path, monkeypatch):
    """The writer replaces the file between the identity check and the rename: the newer version is not stored
    under the older row; it is put back under its name, and the version read is written to the destination."""
    src = tmp_path / "drop" / "P00_x.png"
    src.parent.mkdir()
    src.write_bytes(b"version one")
    read = read_frame(src, 1 << 20)
    real_rename = os.rename

    def racing_rename(a, b) -> None:
        if Path(a) == src:
            newer = src.with_name(".P00_x.png.tmp")
            newer.write_bytes(b"version two")
            real_rename(newer, src)
        real_rename(a, b)

    monkeypatch.setattr(inspector.storage.os, "rename", racing_rename)
    dest = store_frame(src, tmp_path / "processed" / "P00_x.png", read)
    monkeypatch.undo()
    assert dest is not None and dest.read_bytes() == b"version one"
    assert src.read_bytes() == b"version two" and os.stat(src).st_nlink == 1


class _OpenSpy(FileSystemEventHandler):
    """inotify on a folder outside the drop folder: records every open/read of the files there."""

    def __init__(self) -> None:
        self.touched: list[str] = []

    def on_any_event(self, event) -> None:
        if event.event_type in ("opened", "closed", "closed_no_write", "modified"):
            self.touched.append(f"{event.event_type}:{Path(os.fsdecode(event.src_path)).name}")


def test_links_are_never_followed_and_never_kept(make_config, start_daemon, frames, wait, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret, good = outside / "secret.txt", outside / "good.png"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    good.write_bytes(encoded(frames, 0, ".png"))
    cfg = make_config(cameras=[camera(tmp_path, stable_s=0.2)], reconcile_interval_s=0.5)
    drop = cfg.cameras[0].drop_folder
    drop.mkdir(parents=True)
    os.symlink(secret, drop / "P00_before.png")  # there before the daemon starts: found by the reconcile scan
    spy, observer = _OpenSpy(), Observer()
    observer.schedule(spy, str(outside))
    observer.start()
    try:
        daemon = start_daemon(cfg)
        os.symlink(secret, drop / "P00_secret.png")
        os.symlink(good, drop / "P00_goodlink.png")
        os.symlink("/etc/passwd", drop / "P01_passwd.png")
        os.symlink(outside, drop / "P01_dir.png")  # a link to a directory, named like a frame
        real = encoded(frames, 1, ".png")
        (drop / "P01_real.png").write_bytes(real)
        wait(lambda: len(rows(daemon)) == 6 and daemon.wait_idle(0.1), timeout=15)
        time.sleep(1.0)  # past settle time and a reconcile round: nothing is taken again
        touched_by_daemon = list(spy.touched)
        secret.read_text()  # control: the spy does see a read
        wait(lambda: spy.touched, timeout=5)
    finally:
        observer.stop()
        observer.join(5)
    assert touched_by_daemon == [], f"a file outside the drop folder was opened: {touched_by_daemon}"
    found = {r.name: r for r in rows(daemon)}
    assert found.pop("P01_real.png").status == "ok"
    assert set(found) == {"P00_before.png", "P00_secret.png", "P00_goodlink.png", "P01_passwd.png", "P01_dir.png"}
    for name, row in found.items():
        assert row.status == "quarantined" and row.reason_code == QuarantineReason.SYMLINK, (name, row.reason)
        assert row.sha256 is None and row.stored_path is None, name  # never read, nothing kept
        reason_file = next(cfg.dir_for("quarantine").rglob(name + ".reason.json"))
        reason = json.loads(reason_file.read_text())
        assert reason["kind"] == "symlink" and reason["kept"] is False and reason["link_target"]
    assert secret.read_text().startswith("root:") and good.is_file()
    assert list(drop.iterdir()) == []
    links = [p for p in cfg.state_dir.rglob("*") if p.is_symlink()]
    assert links == [], f"links under the state directory: {links}"


def test_a_hard_link_is_stored_as_a_copy_never_as_the_shared_inode(make_config, start_daemon, frames, wait,
                                                                   tmp_path):
    cfg = make_config(cameras=[camera(tmp_path, stable_s=0.2)])
    daemon = start_daemon(cfg)
    drop = cfg.cameras[0].drop_folder
    outside = tmp_path / "archive" / "frame.png"
    outside.parent.mkdir()
    data = encoded(frames, 0, ".png")
    outside.write_bytes(data)
    os.link(outside, drop / "P00_linked.png")
    wait(lambda: rows(daemon) and daemon.wait_idle(0.1), timeout=10)
    (row,) = rows(daemon)
    assert row.status == "ok" and row.sha256 == hashlib.sha256(data).hexdigest()
    stored = Path(row.stored_path)
    assert stored.read_bytes() == data
    assert os.stat(stored).st_ino != os.stat(outside).st_ino  # a copy: later writes to the archive cannot touch it
    assert os.stat(outside).st_nlink == 1 and outside.read_bytes() == data  # the drop name went, the archive stays
    assert not (drop / "P00_linked.png").exists()


def test_unprotected_hard_links_are_refused_unread(tmp_path):
    target = tmp_path / "elsewhere.png"
    target.write_bytes(b"\x89PNG\r\n\x1a\n")
    os.link(target, tmp_path / "P00_l.png")
    with pytest.raises(Refused) as refused:
        read_frame(tmp_path / "P00_l.png", 1 << 20, links_protected=False)
    assert refused.value.kind == QuarantineReason.HARDLINK
    assert read_frame(tmp_path / "P00_l.png", 1 << 20, links_protected=True).data == target.read_bytes()


def test_fifos_are_refused_without_being_opened(make_config, start_daemon, frames, wait, tmp_path):
    cfg = make_config(cameras=[camera(tmp_path, stable_s=0.2)])
    daemon = start_daemon(cfg)
    drop = cfg.cameras[0].drop_folder
    os.mkfifo(drop / "P00_fifo.png")  # opening it for reading would block the worker forever
    after = encoded(frames, 0, ".png")
    (drop / "P00_after.png").write_bytes(after)
    wait(lambda: len(rows(daemon)) == 2 and daemon.wait_idle(0.1), timeout=10)
    found = {r.name: r for r in rows(daemon)}
    assert found["P00_after.png"].status == "ok"
    fifo = found["P00_fifo.png"]
    assert fifo.reason_code == QuarantineReason.NOT_REGULAR and fifo.sha256 is None
    assert stat.S_ISFIFO(os.lstat(fifo.stored_path).st_mode)  # moved aside as evidence, never opened


def test_read_frame_checks_the_open_file_not_the_name(tmp_path):
    """O_NOFOLLOW + fstat: an entry that is a link at open time is never followed, whatever lstat said before."""
    target = tmp_path / "t.png"
    target.write_bytes(b"data")
    link = tmp_path / "P00_l.png"
    os.symlink(target, link)
    with pytest.raises(Refused) as refused:
        read_frame(link, 1 << 20)
    assert refused.value.kind == QuarantineReason.SYMLINK and refused.value.entry.kind == stat.S_IFLNK
    regular = tmp_path / "P00_r.png"
    regular.write_bytes(b"data")
    seen = FileSignature.at(regular)
    regular.unlink()
    os.symlink(target, regular)  # swapped for a link after it was judged stable
    with pytest.raises((Refused, NotReady)):
        read_frame(regular, 1 << 20, expected=seen)
