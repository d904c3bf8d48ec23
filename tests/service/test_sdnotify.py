"""sd_notify on a real datagram socket owned by the test (path and abstract), and the progress-gated watchdog."""
from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from inspector.sdnotify import (
    PipelineSnapshot,
    ProgressMonitor,
    SdNotifier,
    WatchdogPinger,
    format_message,
    socket_address,
    watchdog_interval,
)


def _receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2.0)
    return sock


def _fields(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().splitlines())


def test_noop_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = SdNotifier()
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False


def test_path_socket_receives_ready_status_watchdog_stopping(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with _receiver(path) as rx:
        notifier = SdNotifier(path)
        assert notifier.ready(status="up")
        got = _fields(rx.recv(4096))
        assert got["READY"] == "1" and got["STATUS"] == "up" and got["MAINPID"] == str(os.getpid())
        notifier.status("frames=3 queue=0")
        assert _fields(rx.recv(4096)) == {"STATUS": "frames=3 queue=0"}
        notifier.watchdog()
        assert _fields(rx.recv(4096)) == {"WATCHDOG": "1"}
        notifier.extend_timeout(90)
        assert _fields(rx.recv(4096)) == {"EXTEND_TIMEOUT_USEC": "90000000"}
        notifier.stopping()
        assert _fields(rx.recv(4096)) == {"STOPPING": "1"}
        notifier.close()


def test_abstract_socket_names_are_handled() -> None:
    name = f"@rddn-test-{uuid.uuid4().hex}"
    assert socket_address(name) == b"\0" + name[1:].encode()
    with _receiver(socket_address(name)) as rx:
        SdNotifier(name).watchdog()
        assert rx.recv(64) == b"WATCHDOG=1"


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="NOTIFY_SOCKET"):
        socket_address("relative/path")
    with pytest.raises(ValueError, match="STATUS"):
        format_message({"STATUS": "two\nlines"})
    with pytest.raises(ValueError, match="WATCHDOG_USEC"):
        watchdog_interval({"WATCHDOG_USEC": "soon"})


def test_send_to_vanished_socket_does_not_raise(tmp_path: Path) -> None:
    notifier = SdNotifier(str(tmp_path / "gone.sock"))
    assert notifier.watchdog() is False


def test_watchdog_interval_is_half_of_watchdogsec_and_respects_pid() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "20000000"}) == 10.0
    assert watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}) == 10.0
    assert watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert watchdog_interval({}) is None


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Pipeline:
    """A counter-and-queue stand-in for the daemon's pipeline state (the monitor only reads numbers)."""

    def __init__(self) -> None:
        self.done, self.queued, self.alive, self.busy = 0, 0, True, False

    def snapshot(self) -> PipelineSnapshot:
        return PipelineSnapshot(self.done, self.queued, self.alive, self.busy)


def test_progress_monitor_detects_wedge_and_recovery() -> None:
    clock, pipe = _Clock(), _Pipeline()
    monitor = ProgressMonitor(pipe.snapshot, stall_seconds=5.0, clock=clock)
    assert monitor.check() and monitor.reason == "idle"
    clock.now += 60  # idle for a minute: still healthy
    assert monitor.check()
    pipe.queued, pipe.busy = 3, True
    clock.now += 4
    assert monitor.check() and monitor.reason == "progressing"  # within grace
    clock.now += 2
    assert not monitor.check() and "3 queued" in monitor.reason  # wedged: work waiting, nothing completes
    pipe.done += 1
    clock.now += 1
    assert monitor.check()  # progress again
    pipe.alive = False
    assert not monitor.check() and monitor.reason == "observer not alive"


def test_pinger_stops_pinging_when_wedged(tmp_path: Path) -> None:
    path = str(tmp_path / "wd.sock")
    clock, pipe = _Clock(), _Pipeline()
    monitor = ProgressMonitor(pipe.snapshot, stall_seconds=1.0, clock=clock)
    with _receiver(path) as rx:
        rx.settimeout(0.2)
        pinger = WatchdogPinger(SdNotifier(path), monitor.check, interval=1.0, status=lambda: f"frames={pipe.done}")
        assert pinger.tick()
        assert _fields(rx.recv(256)) == {"STATUS": "frames=0"}
        assert rx.recv(256) == b"WATCHDOG=1"
        pipe.queued = 2
        clock.now += 5
        assert not pinger.tick()
        assert rx.recv(256) == b"STATUS=frames=0"
        with pytest.raises(TimeoutError):
            rx.recv(256)  # no WATCHDOG=1 while wedged
        assert pinger.missed == 1


def test_pinger_thread_pings_periodically(tmp_path: Path) -> None:
    path = str(tmp_path / "thread.sock")
    with _receiver(path) as rx:
        pinger = WatchdogPinger(SdNotifier(path), lambda: True, interval=0.05).start()
        try:
            assert rx.recv(64) == b"WATCHDOG=1"
            assert rx.recv(64) == b"WATCHDOG=1"
        finally:
            pinger.stop()
        assert pinger.pings >= 2


def test_broken_probe_counts_as_unhealthy(tmp_path: Path) -> None:
    def probe() -> bool:
        raise RuntimeError("db handle closed")

    pinger = WatchdogPinger(SdNotifier(str(tmp_path / "none.sock")), probe, interval=1.0)
    assert pinger.tick() is False
