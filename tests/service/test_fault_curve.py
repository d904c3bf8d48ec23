"""Alarm bus security with the real daemon: CURVE encryption plus client-key authentication on the PUB and
replay sockets. A subscriber without the server key, or with a key that is not authorised, gets nothing; an
authorised one gets every alarm, live and replayed (also through ``inspector alarms tail``); a revoked key is
refused after a reload."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inspector.security import generate_certificates, secure_client
from service_harness import ROOT, wait_until


def test_curve_bus_serves_only_authorised_clients(station, bus_listener, tmp_path: Path) -> None:
    server_pub, server_sec = generate_certificates(tmp_path / "keys" / "server", "station")
    client_pub, client_sec = generate_certificates(tmp_path / "keys" / "clients", "plc-gateway")
    _, rogue_sec = generate_certificates(tmp_path / "keys" / "rogue", "rogue")
    st = station(extra={"bus": {"curve": {"enabled": True, "server_secret_key": str(server_sec),
                                          "authorized_clients_dir": str(client_pub.parent)}}})
    st.register_templates()
    st.start()

    def keyed(sock) -> None:
        secure_client(sock, server_pub, client_sec)

    good = bus_listener(st.publish_endpoint, setup=keyed)
    rogue = bus_listener(st.publish_endpoint, setup=lambda s: secure_client(s, server_pub, rogue_sec))
    plain = bus_listener(st.publish_endpoint)  # no CURVE at all
    wait_until(lambda: good.of_type("status.s1.heartbeat"), 10, what="the authorised subscriber's first heartbeat")
    for i in range(3):
        st.drop_frame(st.positions[i % 2], f"c{i}", defective=True, seed=800 + i)
    alarms = wait_until(lambda: len(good.of_type("alarm.")) >= 3 and good.of_type("alarm."), 30,
                        what="3 alarms at the authorised subscriber")
    assert [a["seq"] for a in alarms] == [1, 2, 3]
    time.sleep(0.5)
    assert rogue.messages == [] and plain.messages == [], "an unauthorised subscriber received bus traffic"

    session = str(alarms[0]["session"])
    header, replayed = st.replay(session, setup=keyed)
    assert header["count"] == 3 and [a["seq"] for a in replayed] == [1, 2, 3]
    with pytest.raises(AssertionError, match="did not answer"):
        st.replay(session, timeout_ms=1000)  # no keys: the handshake never completes

    tail = subprocess.run(
        [sys.executable, "-m", "inspector.cli", "alarms", "tail", "--publish", st.publish_endpoint,
         "--replay", st.replay_endpoint, "--server-key", str(server_pub), "--client-key", str(client_sec),
         "--after", "0", "--duration", "3", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert tail.returncode == 0, tail.stderr
    printed = [json.loads(line) for line in tail.stdout.splitlines() if line.startswith("{")]
    assert [a["seq"] for a in printed if a.get("type") == "alarm"] == [1, 2, 3]

    # Revoke the gateway: delete its public key, SIGHUP (systemctl reload). New connections with it are refused.
    client_pub.unlink()
    st.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: '"configuration reloaded"' in st.log_text(), 10, what="the reload")
    revoked = bus_listener(st.publish_endpoint, setup=keyed)
    time.sleep(1.0)
    assert revoked.messages == [], "a revoked client key still connects after reload"
    assert st.stop() == 0
