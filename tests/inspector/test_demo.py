"""The README's first command runs ``inspector demo``: it must show alarms and a history summary."""
from __future__ import annotations

import logging
import re

from inspector.cli import main


def test_demo_runs_a_station_and_prints_alarms_and_history(tmp_path, capsys):
    logger = logging.getLogger("inspector")
    handlers, propagate, level = list(logger.handlers), logger.propagate, logger.level
    try:
        code = main(["demo", "--state", str(tmp_path / "demo"), "--duration", "3", "--rate", "6", "--size", "128",
                     "--defect-rate", "0.6", "--backend", "difference", "--seed", "1"])
    finally:
        logger.handlers[:], logger.propagate, logger.level = handlers, propagate, level
    out = capsys.readouterr()
    assert code == 0
    assert "WARNING" in out.out or "CRITICAL" in out.out  # live alarm lines from the tail
    assert re.search(r"^\[[0-9a-f]{8}:1 +\] ALARM ", out.out, re.M)  # keyed on (session, seq)
    assert "== per class ==" in out.out and "defect" in out.out and "== per day ==" in out.out
    assert (tmp_path / "demo" / "station.yaml").is_file() and (tmp_path / "demo" / "inspector.db").is_file()
    assert main(["check-config", str(tmp_path / "demo" / "station.yaml")]) == 0
    assert list((tmp_path / "demo" / "drop" / "cam1").iterdir()) == []  # everything dropped was processed


def test_demo_backend_choice_and_clear_fallback(tmp_path, tiny_artifact, capsys):
    from inspector.demo.runner import choose_backend

    detector, size = choose_backend("auto", tmp_path / "missing")
    assert detector["backend"] == "difference" and size is None
    assert "no demo model installed" in capsys.readouterr().err
    art = tiny_artifact(tmp_path / "model", with_template=True)
    detector, size = choose_backend("auto", art)
    assert detector == {"backend": "onnxruntime", "artifact": str(art.resolve())} and size == 32
    assert choose_backend("difference", art)[0]["backend"] == "difference"


def test_demo_serves_the_review_page_while_it_runs(tmp_path):
    """As a newcomer runs it: the printed URL answers with the page and the frames the demo produced."""
    import json
    import os
    import re
    import subprocess
    import sys
    import time
    import urllib.request

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "inspector.cli", "demo", "--state", str(tmp_path / "demo"),
                             "--duration", "25", "--rate", "4", "--size", "128", "--defect-rate", "0.6",
                             "--backend", "difference"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "demo ended before printing the review page URL"
            found = re.search(r"review page on (http://127\.0\.0\.1:\d+/)", line)
            url = found.group(1) if found else None
        assert url, "no review page URL printed"
        frames: list = []
        while not frames and time.monotonic() < deadline:
            with urllib.request.urlopen(url + "api/frames?kind=defective", timeout=10) as response:
                frames = json.load(response)["frames"]
            time.sleep(0.5)
        assert frames and all(f["status"] == "defective" for f in frames)
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200 and b"rddn-inspector" in response.read()
    finally:
        proc.terminate()
        proc.wait(60)
