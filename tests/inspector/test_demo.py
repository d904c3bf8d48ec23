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
