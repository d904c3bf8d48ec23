"""The daemon under a service manager's eyes: sd_notify on a real datagram socket owned by the test (READY,
STATUS, WATCHDOG, EXTEND_TIMEOUT, STOPPING), the Prometheus endpoint, and detector supervision: a hanging
detector marks the station degraded on the bus, WATCHDOG=1 stops while nothing moves, and both recover."""
from __future__ import annotations

import socket
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from inspector.sdnotify import socket_address
from service_harness import free_port, wait_until

HERE = Path(__file__).resolve().parent


class NotifyReceiver:
    """Plays systemd's side: an abstract AF_UNIX datagram socket, every message recorded with its time."""

    def __init__(self) -> None:
        self.name = f"@rddn-notify-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(socket_address(self.name))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append((time.monotonic(), fields))

    def with_key(self, key: str, since: float = 0.0) -> list[tuple[float, dict[str, str]]]:
        return [(t, m) for t, m in list(self.messages) if key in m and t >= since]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def _scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def test_daemon_notifies_systemd_and_serves_metrics(station) -> None:
    port = free_port()
    st = station(extra={"metrics": {"port": port}})
    st.register_templates()
    rx = NotifyReceiver()
    try:
        st.start(env={"NOTIFY_SOCKET": rx.name, "WATCHDOG_USEC": "400000"})  # ping every 0.2 s
        (t_ready, ready), = wait_until(lambda: rx.with_key("READY"), 20, what="READY=1")
        assert ready["READY"] == "1" and ready["MAINPID"] == str(st.proc.pid) and "queue 0" in ready["STATUS"]
        extend = rx.with_key("EXTEND_TIMEOUT_USEC")
        assert extend and extend[0][0] <= t_ready and int(extend[0][1]["EXTEND_TIMEOUT_USEC"]) > 0
        wait_until(lambda: len(rx.with_key("WATCHDOG", since=t_ready)) >= 3, 10, what="WATCHDOG=1 pings while idle")

        for i in range(3):
            st.drop_frame(st.positions[i % 2], f"m{i}", defective=i == 1, seed=900 + i)
        wait_until(lambda: len(st.frames()) == 3, 20, what="3 frames")
        wait_until(lambda: any("3 frames (1 defective" in m["STATUS"] for _, m in rx.with_key("STATUS")), 10,
                   what="a STATUS line with the frame counts")

        text = _scrape(port)
        assert 'rddn_frames_total{camera="cam0",status="ok"} 2.0' in text
        assert 'rddn_frames_total{camera="cam0",status="defective"} 1.0' in text
        assert 'rddn_stage_seconds_count{stage="detect"} 3.0' in text
        assert 'rddn_alarms_total{severity="critical"} 1.0' in text
        assert 'rddn_health{rddn_health="healthy"} 1.0' in text
        assert "rddn_queue_depth 0.0" in text
        beat = [line for line in text.splitlines() if line.startswith("rddn_last_heartbeat_timestamp_seconds ")]
        assert beat and abs(float(beat[0].split()[1]) - time.time()) < 30
        detect_sum = [line for line in text.splitlines() if line.startswith('rddn_stage_seconds_sum{stage="detect"}')]
        assert 3e-4 < float(detect_sum[0].split()[1]) < 3.0, "stage latencies must be recorded in seconds"

        assert st.stop() == 0
        (t_stop, _), = rx.with_key("STOPPING")
        assert not rx.with_key("WATCHDOG", since=t_stop), "no WATCHDOG=1 after STOPPING=1"
    finally:
        rx.close()


def test_hanging_detector_degrades_withholds_watchdog_and_recovers(station, bus_listener, tmp_path: Path) -> None:
    gate = tmp_path / "detector-hangs"
    st = station(extra={"supervision": {"detect_timeout_s": 0.5, "max_restarts": 1, "restart_window_s": 3.0,
                                        "stall_s": 1.0}})
    st.register_templates()
    rx = NotifyReceiver()
    try:
        st.start(env={"NOTIFY_SOCKET": rx.name, "WATCHDOG_USEC": "400000"},
                 command=[sys.executable, str(HERE / "gated_daemon.py"), str(gate)])
        bus = bus_listener(st.publish_endpoint, topics=(b"status.",))
        wait_until(lambda: bus.of_type("status.s1.heartbeat"), 10, what="a heartbeat")
        wait_until(lambda: len(rx.with_key("WATCHDOG")) >= 2, 10, what="WATCHDOG=1 while idle")

        gate.touch()  # from now on every inference hangs
        names = {st.drop_frame(st.positions[i], f"h{i}", defective=i == 0, seed=950 + i)[0] for i in range(2)}
        degraded = wait_until(lambda: bus.of_type("status.s1.degraded"), 20, what="'degraded' on the bus")
        assert degraded[0]["inspection"] == "unavailable" and "detector" in degraded[0]["problems"]

        def silent_for(seconds: float) -> bool:
            pings = rx.with_key("WATCHDOG")
            return bool(pings) and time.monotonic() - pings[-1][0] >= seconds

        wait_until(lambda: silent_for(1.5), 15, what="WATCHDOG=1 to stop while the pipeline is wedged")
        assert st.frames() == [] and set(st.drop_files()) >= names, "hung frames must wait, not be quarantined"
        assert st.proc is not None and st.proc.poll() is None

        t_open = time.monotonic()
        gate.unlink()  # the runtime comes back: a restart within the budget gets a working backend
        wait_until(lambda: {r["name"] for r in st.frames()} == names and not st.drop_files(), 30,
                   what="the waiting frames to be inspected after recovery")
        assert all(r["status"] in ("ok", "defective") for r in st.frames())
        wait_until(lambda: bus.of_type_after("status.s1.degraded", "status.s1.healthy"), 10,
                   what="'healthy' on the bus")
        wait_until(lambda: rx.with_key("WATCHDOG", since=t_open), 10, what="WATCHDOG=1 to resume")
        assert "restarting detector backend" in st.log_text()
        assert st.stop() == 0
    finally:
        rx.close()


def test_frame_that_always_hangs_the_detector_is_quarantined(station, bus_listener, tmp_path: Path) -> None:
    """A poison frame hangs every fresh backend: after two hangs it is quarantined with that reason, the good
    frames around it are inspected, and the station ends healthy."""
    from service_harness import encode, make_frame

    st = station(extra={"supervision": {"detect_timeout_s": 0.5, "max_restarts": 5, "restart_window_s": 60.0}})
    st.register_templates()
    st.start(command=[sys.executable, str(HERE / "gated_daemon.py"), str(tmp_path / "no-gate")])
    bus = bus_listener(st.publish_endpoint, topics=(b"status.",))
    wait_until(lambda: bus.of_type("status.s1.heartbeat"), 10, what="a heartbeat")
    poison = make_frame("P1", False, 990)
    poison[0, 0] = (1, 2, 3)  # gated_daemon.POISON
    st.drop_bytes("P1_poison.png", encode(poison, ".png"))
    good = {st.drop_frame(st.positions[i % 2], f"ok{i}", defective=False, seed=991 + i)[0] for i in range(3)}
    wait_until(lambda: len(st.frames()) == 4 and not st.drop_files(), 40, what="all 4 frames to be settled")
    rows = {r["name"]: r for r in st.frames()}
    assert rows["P1_poison.png"]["status"] == "quarantined"
    assert str(rows["P1_poison.png"]["reason"]).startswith("detector_timeout")
    assert all(rows[n]["status"] == "ok" for n in good)
    wait_until(lambda: bus.of_type_after("status.s1.degraded", "status.s1.healthy"), 10,
               what="'healthy' after the poison frame is gone")
    assert st.stop() == 0
