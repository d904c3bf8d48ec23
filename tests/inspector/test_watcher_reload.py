"""Watching edge cases: polling + stability, handler exceptions, dead observers, lost events; config reload."""
from __future__ import annotations

import os
import time

from sqlalchemy import select

from inspector.config import CameraConfig
from inspector.daemon import HealthState
from inspector.db import Frame
from inspector.ingest import FrameJob
from inspector.watcher import CameraWatcher


def statuses(daemon) -> dict[str, str]:
    with daemon.factory() as db:
        return {f.name: f.status for f in db.scalars(select(Frame))}


def test_polling_waits_until_the_file_is_stable(make_config, start_daemon, frames, wait, tmp_path):
    cfg = make_config(cameras=[{"id": "share", "drop_folder": str(tmp_path / "share"), "observer": "polling",
                                "poll_interval_s": 0.1, "stable_s": 0.4}])
    daemon = start_daemon(cfg)
    data, _ = frames.jpeg(0, False)
    path = tmp_path / "share" / "P00_slow.jpg"
    with open(path, "wb") as handle:  # a slow network writer: 4 chunks, 0.15 s apart (< stable_s)
        for i in range(4):
            handle.write(data[i * len(data) // 4:(i + 1) * len(data) // 4])
            handle.flush()
            time.sleep(0.15)
    wait(lambda: statuses(daemon).get("P00_slow.jpg"))
    assert statuses(daemon) == {"P00_slow.jpg": "ok"}  # taken whole, not as a truncated (quarantined) frame


def test_handler_exceptions_do_not_kill_the_observer(tmp_path, frames, wait):
    seen: list[str] = []

    def submit(job: FrameJob) -> bool:
        if job.path.name.startswith("P00_boom"):
            raise RuntimeError("handler bug")
        seen.append(job.path.name)
        return True

    watcher = CameraWatcher(CameraConfig(id="c", drop_folder=tmp_path / "d"), submit)
    watcher.start()
    try:
        frames.drop(tmp_path / "d", "P00_boom.jpg")
        wait(lambda: watcher.handler_errors >= 1)
        frames.drop(tmp_path / "d", "P00_after.jpg", via_rename=True)
        wait(lambda: "P00_after.jpg" in seen)
        assert watcher.is_alive()
    finally:
        watcher.stop()


def test_dead_observer_is_restarted_and_lost_events_are_reconciled(make_config, start_daemon, frames, wait):
    cfg = make_config()
    daemon = start_daemon(cfg)
    watcher = daemon.watchers["cam1"]
    watcher._observer.stop()  # the observer thread dies (as when its folder is unmounted)
    watcher._observer.join(5)
    wait(lambda: watcher.restarts == 1 and watcher.is_alive())
    assert daemon.health()["errors"]["observer_restarts"] == 1 and daemon.state == HealthState.DEGRADED
    frames.drop(cfg.cameras[0].drop_folder, "P01_afterrestart.jpg", 1)
    # events lost while the observer is down: the restarted observer or the periodic reconcile finds the frame
    watcher._observer.stop()
    watcher._observer.join(5)
    frames.drop(cfg.cameras[0].drop_folder, "P00_unseen.jpg", 0)
    wait(lambda: len(statuses(daemon)) == 2, timeout=15)
    with daemon.factory() as db:
        reasons = {f.name: f.reason for f in db.scalars(select(Frame))}
    assert statuses(daemon) == {"P01_afterrestart.jpg": "ok", "P00_unseen.jpg": "ok"}, reasons


def test_reload_applies_new_thresholds_and_rejects_bad_config(write_config, start_daemon, frames, wait):
    from inspector.config import load_station_config

    path = write_config()
    daemon = start_daemon(load_station_config(path), config_path=path)
    drop = daemon.cfg.cameras[0].drop_folder
    frames.drop(drop, "P00_before.jpg", 0, defective=True)
    wait(lambda: statuses(daemon).get("P00_before.jpg"))

    write_config(thresholds={"default": 1.0})  # nothing can pass a threshold of 1.0
    daemon.request_reload()  # what SIGHUP does
    wait(lambda: daemon.cfg.thresholds.default == 1.0)
    frames.drop(drop, "P00_after.jpg", 0, defective=True)
    wait(lambda: statuses(daemon).get("P00_after.jpg"))
    assert statuses(daemon) == {"P00_before.jpg": "defective", "P00_after.jpg": "ok"}

    path.write_text("station: teststation\nthresholds: {defualt: 0.1}\n")
    assert daemon.reload() is False and daemon.errors["reload"] == 1
    assert daemon.cfg.thresholds.default == 1.0  # running config kept


def test_files_moved_in_from_elsewhere_or_linked_are_taken(make_config, start_daemon, frames, wait):
    """A rename from another directory (or a hard link) only makes a "created" event, no close."""
    cfg = make_config(reconcile_interval_s=600)  # so only the watcher can find them
    daemon = start_daemon(cfg)
    staging = cfg.state_dir / "staging"
    frames.drop(staging, "P00_moved.jpg", 0)
    frames.drop(staging, "P01_linked.jpg", 1)
    os.rename(staging / "P00_moved.jpg", cfg.cameras[0].drop_folder / "P00_moved.jpg")
    os.link(staging / "P01_linked.jpg", cfg.cameras[0].drop_folder / "P01_linked.jpg")
    wait(lambda: len(statuses(daemon)) == 2, timeout=8)  # the grace period, not the 30 s reconcile
    assert statuses(daemon) == {"P00_moved.jpg": "ok", "P01_linked.jpg": "ok"}
