"""Prometheus metrics: per-instance registries and a real scrape over loopback HTTP."""
from __future__ import annotations

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
