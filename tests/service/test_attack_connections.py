"""Attack: 2,000 idle TCP connections to the PUB port (no ZMTP greeting, before any authentication) against a
daemon held to 1,024 file descriptors, the default soft limit outside systemd. Without connection caps libzmq
accepts them all, every descriptor is gone and every frame fails with "too many open files". With them, the
connections beyond the cap are shut at once, the silent ones are closed after the handshake deadline, and
frames keep flowing, heartbeats keep coming, and no frame is quarantined. Loopback only, bounded in time."""
from __future__ import annotations

import errno
import resource
import select
import socket
import sys
import time

import pytest

from service_harness import wait_until

FLOOD = 2000
DAEMON_FDS = 1024


def _flood(port: int, n: int, deadline_s: float = 60.0) -> list[socket.socket]:
    """Open ``n`` TCP connections and never speak; non-blocking connects, so a full accept queue only delays."""
    socks: list[socket.socket] = []
    pending: list[socket.socket] = []
    deadline = time.monotonic() + deadline_s
    while len(socks) < n and time.monotonic() < deadline:
        while len(socks) + len(pending) < n and len(pending) < 256:
            s = socket.socket()
            s.setblocking(False)
            err = s.connect_ex(("127.0.0.1", port))
            if err not in (0, errno.EINPROGRESS):
                s.close()
                break
            pending.append(s)
        poller = select.poll()  # not select(): descriptors above 1024
        for s in pending:
            poller.register(s, select.POLLOUT)
        writable = {fd for fd, _ in poller.poll(500)}
        for s in [s for s in pending if s.fileno() in writable]:
            pending.remove(s)
            socks.append(s)
    for s in pending:
        s.close()
    return socks


@pytest.fixture
def own_fd_headroom():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = FLOOD + 512
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"this process may open at most {hard} descriptors; the attack needs {need}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_idle_connection_flood_does_not_stop_inspection(station, bus_listener, own_fd_headroom) -> None:
    st = station(extra={"bus": {"connections": {"max_connections": 256, "handshake_timeout_s": 2.0}}})
    st.register_templates()
    # The daemon as a plain `inspector run` would be started from a shell with the usual soft limit.
    st.start(command=["prlimit", f"--nofile={DAEMON_FDS}:{DAEMON_FDS}", sys.executable, "-m", "inspector.cli",
                      "run", "--config"])
    listener = bus_listener(st.publish_endpoint)  # a PLC gateway connected before the attack
    wait_until(lambda: listener.of_type("status.s1.heartbeat"), 15, what="the gateway's first heartbeat")
    port = int(st.publish_endpoint.rsplit(":", 1)[1])
    flood = _flood(port, FLOOD)
    try:
        assert len(flood) >= FLOOD * 0.9, f"only {len(flood)} attack connections were accepted by the kernel"
        beats_before = len(listener.of_type("status.s1.heartbeat"))
        names = []
        for i in range(12):  # frames keep arriving while the connections are held open
            names.append(st.drop_frame(st.positions[i % 2], f"f{i}", defective=i % 3 == 0, seed=900 + i)[0])
            time.sleep(0.25)
        wait_until(lambda: len(st.frames()) == len(names), 60, what="every frame dropped during the flood")
        statuses = [f["status"] for f in st.frames()]
        assert "quarantined" not in statuses and set(statuses) <= {"ok", "defective"}, st.frames()
        wait_until(lambda: st.drop_files() == [], 20, what="the drop folder to empty")
        assert len(listener.of_type("status.s1.heartbeat")) > beats_before + 5, "heartbeats stopped during the flood"
        assert len(listener.of_type("alarm.")) == statuses.count("defective")
        assert "too many open files" not in st.log_text().lower()
        assert '"bus connection refused: connection cap reached"' in st.log_text()
    finally:
        for s in flood:
            s.close()
    assert st.proc is not None and st.proc.poll() is None, "the daemon died under the flood"
    late = bus_listener(st.publish_endpoint)  # after the flood a new subscriber gets in
    wait_until(lambda: late.of_type("status.s1.heartbeat"), 15, what="a heartbeat at a subscriber joining after")
    assert st.stop() == 0
