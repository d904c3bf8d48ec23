"""Prometheus metrics: per-instance registries and a real scrape over loopback HTTP."""
from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from inspector.metrics import InspectorMetrics, sample_value


def test_two_instances_do_not_share_numbers() -> None:
    a, b = InspectorMetrics("station-a"), InspectorMetrics("station-b")
    a.frame_done("cam0", "ok")
    a.frame_done("cam0", "ok")
    b.frame_done("cam0", "quarantined")
    assert sample_value(a, "rddn_frames_total", {"camera": "cam0", "status": "ok"}) == 2
    assert sample_value(b, "rddn_frames_total", {"camera": "cam0", "status": "ok"}) is None
    assert sample_value(b, "rddn_frames_total", {"camera": "cam0", "status": "quarantined"}) == 1


def test_every_operational_series_is_exposed() -> None:
    m = InspectorMetrics("s1")
    m.observe_stage("detect", 0.012)
    with m.time_stage("db"):
        pass
    m.set_queue_depth(7)
    m.alarm_published("critical")
    m.backend_error("timeout")
    m.template_miss("cam0", "P3")
    m.heartbeat(1234.5)
    m.set_health("degraded")
    text = m.render().decode()
    assert 'rddn_stage_seconds_bucket{le="0.025",stage="detect"} 1.0' in text
    assert 'rddn_stage_seconds_count{stage="db"} 1.0' in text
    assert "rddn_queue_depth 7.0" in text
    assert 'rddn_alarms_total{severity="critical"} 1.0' in text
    assert 'rddn_backend_errors_total{kind="timeout"} 1.0' in text
    assert 'rddn_template_misses_total{camera="cam0",position="P3"} 1.0' in text
    assert "rddn_last_heartbeat_timestamp_seconds 1234.5" in text
    assert 'rddn_health{rddn_health="degraded"} 1.0' in text
    assert 'rddn_health{rddn_health="healthy"} 0.0' in text
    assert 'rddn_station_info{station="s1"} 1.0' in text


def test_scrape_over_loopback_on_a_free_port() -> None:
    m = InspectorMetrics("scrape")
    m.frame_done("cam1", "defective")
    server = m.serve(0)
    try:
        assert server.port > 0
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
        assert 'rddn_frames_total{camera="cam1",status="defective"} 1.0' in body
    finally:
        server.close()


def test_refuses_non_loopback_and_bad_input() -> None:
    m = InspectorMetrics("x")
    with pytest.raises(ValueError, match="not loopback"):
        m.serve(0, addr="0.0.0.0")
    with pytest.raises(ValueError, match="out of range"):
        m.serve(70000)
    with pytest.raises(ValueError, match="unknown health state"):
        m.set_health("sleepy")


def _status(port: int, method: str, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_only_metrics_is_served() -> None:
    server = InspectorMetrics("paths").serve(0)
    try:
        assert _status(server.port, "GET", "/metrics") == 200
        assert _status(server.port, "HEAD", "/metrics") == 200
        for path in ("/", "/favicon.ico", "/metrics/", "/metricsx", "/admin", "/../etc/passwd"):
            assert _status(server.port, "GET", path) == 404, path
        assert _status(server.port, "POST", "/metrics") == 405
    finally:
        server.close()


def test_idle_connections_cost_a_bounded_number_of_threads_and_are_dropped() -> None:
    server = InspectorMetrics("flood").serve(0, idle_timeout_s=0.5)
    before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(60)]  # connect, never speak
    try:
        for _ in range(5):
            time.sleep(0.1)
            assert threading.active_count() <= before, "a thread per connection"
        deadline = time.monotonic() + 10
        while True:  # idle ones time out (0.5 s each, SERVER_THREADS at a time): a scrape gets through
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=2).read()
                break
            except (urllib.error.URLError, ConnectionError, http.client.HTTPException):
                assert time.monotonic() < deadline, "the endpoint never recovered from idle connections"
                time.sleep(0.2)
        assert b"rddn_station_info" in body
        assert threading.active_count() <= before
    finally:
        for sock in idle:
            sock.close()
        server.close()
