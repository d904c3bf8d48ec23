"""File-descriptor headroom: the daemon raises its limit and refuses one that cannot hold its connection caps;
a frame that fails for lack of descriptors is kept (never quarantined) and health says why until it recovers."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from inspector.resources import RECOMMENDED_FDS, ensure_fd_headroom, fd_budget, open_fd_count

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def restore_fd_limit():
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield limits
    resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def test_soft_limit_is_raised_to_the_hard_limit(make_config, restore_fd_limit):
    soft, hard = restore_fd_limit
    if hard == resource.RLIM_INFINITY or hard < 2048:
        pytest.skip(f"needs a finite hard limit >= 2048 to lower the soft one below it (hard={hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    limit, warnings = ensure_fd_headroom(make_config())
    assert limit == hard == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert (warnings != []) == (hard < RECOMMENDED_FDS)


def test_a_limit_below_the_connection_caps_is_refused(write_config, make_config):
    """``inspector run`` under a hard limit it cannot raise (``LimitNOFILE=`` too low) exits 1 naming the fix."""
    overrides = {"bus": {"publish": "tcp://127.0.0.1:*", "replay": "tcp://127.0.0.1:*",
                         "connections": {"max_connections": 1000}}}
    need = fd_budget(make_config(**overrides)).required
    limit = need - 1

    def low_limit() -> None:  # in the child only: a lowered hard limit cannot be raised again
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    run = subprocess.run([sys.executable, "-m", "inspector.cli", "run", "--config", str(write_config(**overrides))],
                         cwd=ROOT, preexec_fn=low_limit, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    said = run.stdout + run.stderr  # the JSON log is on stdout (native stderr wrapped into it)
    assert run.returncode == 1, said
    assert f"file-descriptor limit {limit} is below the {need} this station needs" in said
    assert "LimitNOFILE" in said and "bus.connections.max_connections" in said


def test_frames_failing_for_lack_of_descriptors_are_kept_and_health_says_why(
        make_config, start_daemon, frames, wait, tmp_path: Path, restore_fd_limit):
    cfg = make_config()
    daemon = start_daemon(cfg)
    stage = tmp_path / "stage"
    frames.drop(stage, "P00_1.jpg", 0)  # written now; renamed into the drop folder once descriptors are gone
    soft, hard = restore_fd_limit
    fillers: list[int] = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_fd_count() + 16, hard))
        while True:
            try:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                break
        os.rename(stage / "P00_1.jpg", cfg.cameras[0].drop_folder / "P00_1.jpg")
        wait(lambda: "resources" in daemon.station_health.problems, timeout=15)
        reason = daemon.station_health.problems["resources"]
        assert "Too many open files" in reason and "descriptor limit" in reason
        assert daemon.health()["state"] == "degraded" and daemon.errors["resources"] >= 1
        assert daemon.health_summary()["problems"]["resources"] == reason  # what every heartbeat carries
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    wait(lambda: daemon.pipeline.counts["ok"] == 1, timeout=15)  # retried, inspected, not quarantined
    wait(lambda: "resources" not in daemon.station_health.problems)
    assert daemon.pipeline.counts["quarantined"] == 0 and daemon.health()["state"] == "healthy"
