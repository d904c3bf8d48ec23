"""The environment misbehaves: the processed/ disk is full, the alarm subscriber vanishes, the camera folder is
deleted and recreated. Each gives clear log lines, no crash, and recovery once the condition clears."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import zmq

from service_harness import wait_until


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root/CAP_SYS_ADMIN): {done.stderr.strip()}")


@pytest.mark.slow
def test_processed_disk_full_then_freed(station) -> None:
    """processed/ is a real, tiny tmpfs filled to the last byte: every move fails with ENOSPC (a copy across
    filesystems, as with a network share). Results still commit; files wait in the drop folder; once space is
    freed they are moved intact (no truncated copy is ever taken for the stored frame)."""
    st = station(extra={"reconcile_interval_s": 1.0})
    processed = st.state / "processed"
    _mount_tmpfs(processed, "512k")
    try:
        filler = processed / "filler.bin"
        with open(filler, "wb") as handle:
            try:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
            except OSError:
                pass  # ENOSPC: full
        st.register_templates()
        st.start()
        sent = {}
        for i in range(4):
            name, data = st.drop_frame(st.positions[i % 2], f"full{i}", defective=False, seed=500 + i)
            sent[name] = hashlib.sha256(data).hexdigest()
        wait_until(lambda: len(st.frames()) == 4, 30, what="results committed despite the full disk")
        wait_until(lambda: "cannot move frame" in st.log_text(), 10, what="a log line about the failed move")
        time.sleep(1.5)  # a reconcile round passes while still full: files stay, no duplicate rows
        assert set(st.drop_files()) == set(sent), "frames must wait in the drop folder while the disk is full"
        assert st.proc is not None and st.proc.poll() is None

        filler.unlink()  # space comes back
        wait_until(lambda: not st.drop_files(), 30, what="the waiting frames to be moved once space is back")
        rows = st.frames()
        assert Counter(r["name"] for r in rows) == Counter(sent.keys())
        for r in rows:
            stored = Path(str(r["stored_path"]))
            assert stored.is_file(), r
            assert hashlib.sha256(stored.read_bytes()).hexdigest() == sent[str(r["name"])], f"{stored} is damaged"
        assert st.stop() == 0
    finally:
        if st.proc is not None and st.proc.poll() is None:
            st.proc.kill()
            st.proc.wait(10)
        subprocess.run(["umount", "-l", str(processed)], capture_output=True)


def test_alarm_subscriber_gone_mid_burst(station) -> None:
    """A PLC gateway disconnects (its process dies) in the middle of a burst: the daemon neither blocks nor
    fails; a gateway that comes back replays exactly what it missed."""
    st = station()
    st.register_templates()
    st.start()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(st.publish_endpoint)
    assert sub.poll(10_000), "no heartbeat: the subscription never reached the PUB socket"
    seen: list[dict] = []
    for i in range(7):
        st.drop_frame(st.positions[i % 2], f"x{i}", defective=True, seed=600 + i)
    deadline = time.monotonic() + 20
    while len(seen) < 2 and time.monotonic() < deadline:
        if sub.poll(100):
            topic, body = sub.recv_multipart()
            if topic.startswith(b"alarm."):
                seen.append(json.loads(body))
    assert seen, "the subscriber got nothing before it vanished"
    sub.close(linger=0)  # gone, without unsubscribing
    ctx.term()
    for i in range(7, 13):
        st.drop_frame(st.positions[i % 2], f"x{i}", defective=True, seed=600 + i)
    wait_until(lambda: len(st.frames()) == 13 and not st.drop_files(), 30, what="every frame after the gateway left")
    assert st.proc is not None and st.proc.poll() is None
    session = str(seen[0]["session"])
    header, missed = st.replay(session, after=int(seen[-1]["seq"]))
    all_seqs = sorted(int(a["seq"]) for a in st.alarms() if a["session"] == session)
    assert [int(p["seq"]) for p in missed] == [s for s in all_seqs if s > int(seen[-1]["seq"])]
    assert all_seqs == list(range(1, len(all_seqs) + 1)) and len(all_seqs) == 13
    assert st.stop() == 0


def test_camera_folder_deleted_and_recreated(station) -> None:
    """The camera PC wipes its export folder and makes it again. Reconcile is slowed down (600 s) so only a
    recovered folder watcher can pick the new frames up quickly."""
    st = station(extra={"reconcile_interval_s": 600.0})
    st.register_templates()
    st.start()
    st.drop_frame("P1", "before", defective=False, seed=700)
    wait_until(lambda: len(st.frames()) == 1 and not st.drop_files(), 20, what="a first frame")
    shutil.rmtree(st.drop)
    time.sleep(1.5)
    assert st.proc is not None and st.proc.poll() is None
    st.drop.mkdir(parents=True, exist_ok=True)
    time.sleep(1.0)
    for i in range(3):
        st.drop_frame(st.positions[i % 2], f"after{i}", defective=i == 0, seed=710 + i)
    wait_until(lambda: len(st.frames()) == 4 and not st.drop_files(), 30,
               what="frames dropped into the recreated folder")
    assert "drop-folder" in st.log_text() or "observer" in st.log_text(), "no log line about the vanished folder"
    assert st.stop() == 0
