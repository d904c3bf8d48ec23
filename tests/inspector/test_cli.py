"""The ``inspector`` command line: templates, history, alarms tail, and ``run`` as a real process (JSON logs,
SIGHUP reload, SIGTERM -> death message and exit 0)."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2

from inspector.alarms_tail import AlarmTail
from inspector.cli import main
from inspector.demo.runner import free_port

ROOT = Path(__file__).resolve().parents[2]


def save_png(path: Path, rgb) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def test_templates_and_history_commands(write_config, start_daemon, frames, wait, tmp_path, capsys):
    from inspector.config import load_station_config

    path = write_config()
    for name, image in frames.templates.items():
        assert main(["templates", "add", "--config", str(path), "--camera", "cam1", "--position", name,
                     str(save_png(tmp_path / f"{name}.png", image))]) == 0
    assert main(["templates", "add", "--config", str(path), "--camera", "cam1", "--position", "P00",
                 str(tmp_path / "missing.png")]) == 2
    assert "not a readable image" in capsys.readouterr().err

    daemon = start_daemon(load_station_config(path), templates=False)
    frames.drop(daemon.cfg.cameras[0].drop_folder, "P00_g1.jpg", 0)
    frames.drop(daemon.cfg.cameras[0].drop_folder, "P01_d1.jpg", 1, defective=True)
    wait(lambda: daemon.pipeline.counts["ok"] + daemon.pipeline.counts["defective"] == 2 and daemon.wait_idle(0.1))
    daemon.stop()
    capsys.readouterr()

    assert main(["history", "--config", str(path), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    good = next(r for r in rows if r["frame"] == "P00_g1.jpg")
    assert good["status"] == "ok" and any(r["frame"] == "P01_d1.jpg" and r["class"] == "defect" for r in rows)
    assert main(["history", "--config", str(path), "--summary", "both", "--format", "json", "--since", "1h"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["per_class"][0]["class"] == "defect" and summary["per_day"][0]["frames"] == 2
    assert main(["history", "--config", str(path), "--format", "csv", "--class", "defect"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("frame_id,processed_at,captured_at,camera")

    assert main(["templates", "add", "--config", str(path), "--from-frame", str(good["frame_id"])]) == 0
    capsys.readouterr()
    assert main(["templates", "list", "--config", str(path), "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    p00 = [t for t in listed if t["position"] == "P00"]
    assert [(t["version"], t["active"]) for t in p00] == [(1, False), (2, True)]
    assert p00[1]["source"] == f"frame:{good['frame_id']}"


def test_run_process_reloads_on_sighup_and_stops_cleanly_on_sigterm(write_config, frames, tmp_path, capsys):
    pub, rep = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    path = write_config(bus={"publish": pub, "replay": rep, "heartbeat_s": 0.2})
    assert main(["templates", "add", "--config", str(path), "--camera", "cam1", "--position", "P00",
                 str(save_png(tmp_path / "P00.png", frames.templates["P00"]))]) == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "inspector.cli", "run", "--config", str(path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    alarms: list[dict] = []
    statuses: list[dict] = []
    tail = AlarmTail(pub, rep, "teststation", alarms.append, statuses.append, after=0)

    def until(predicate, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not predicate():
            tail.poll(50)
            assert proc.poll() is None or predicate(), (proc.returncode, proc.stderr.read())
        return predicate()

    try:
        assert until(lambda: any("inspection started" in line for line in lines))
        frames.drop(tmp_path / "drop1", "P00_live.jpg", 0, defective=True)
        assert until(lambda: len(alarms) == 1)
        assert alarms[0]["seq"] == 1 and alarms[0]["frame"] == "P00_live.jpg"
        proc.send_signal(signal.SIGHUP)
        assert until(lambda: any("configuration reloaded" in line for line in lines))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert until(lambda: any(s["type"] == "death" for s in statuses), timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
        tail.close()
    reader.join(5)
    records = [json.loads(line) for line in lines if line.strip()]  # every stdout line is one JSON object
    assert records[-1]["msg"] == "inspection stopped" and records[-1]["last_seq"] == 1
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)

    assert main(["alarms", "tail", "--config", str(path), "--after", "0", "--duration", "0.5"]) == 0
    capsys.readouterr()  # daemon is down: nothing to tail, and no hang


def test_start_failure_names_the_endpoint_and_releases_everything(write_config, start_daemon, capsys):
    from inspector.config import load_station_config
    from inspector.daemon import Daemon, HealthState

    pub, rep = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    path = write_config(bus={"publish": pub, "replay": rep})
    start_daemon(load_station_config(path))  # holds the ports
    second = Daemon(load_station_config(path))
    try:
        second.start()
        raise AssertionError("a second daemon on the same ports must not start")
    except RuntimeError as exc:
        assert pub in str(exc)
    assert second.state == HealthState.STOPPED and second.watchers == {}
    logger = logging.getLogger("inspector")
    handlers, propagate, sigterm = list(logger.handlers), logger.propagate, signal.getsignal(signal.SIGTERM)
    try:
        code = main(["run", "--config", str(path)])
    finally:
        logger.handlers[:], logger.propagate = handlers, propagate
    assert signal.getsignal(signal.SIGTERM) is sigterm  # handlers restored after the failed start
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1 and any(r["msg"] == "inspection failed to start" and pub in r["error"] for r in records)
