"""Station configuration: examples validate; errors name the file and the key."""
from __future__ import annotations

from pathlib import Path

import pytest

from inspector.cli import main
from inspector.config import ConfigError, load_station_config

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "station_configs").glob("*.yaml"))


def test_examples_exist_and_validate():
    assert {p.name for p in EXAMPLES} >= {"single_camera.yaml", "two_cameras.yaml", "postgresql.yaml"}
    for path in EXAMPLES:
        cfg = load_station_config(path)
        assert cfg.cameras and cfg.station
    pg = load_station_config(next(p for p in EXAMPLES if p.name == "postgresql.yaml"))
    assert pg.db_url.startswith("postgresql+psycopg://")
    two = load_station_config(next(p for p in EXAMPLES if p.name == "two_cameras.yaml"))
    assert [c.observer for c in two.cameras] == ["inotify", "polling"]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "station.yaml"
    path.write_text(text)
    return path


def test_unknown_key_is_named_with_file(tmp_path):
    path = write(tmp_path, "station: s1\ncameras:\n  - id: c1\n    drop_folder: d\n    obsrver: polling\n")
    with pytest.raises(ConfigError) as exc:
        load_station_config(path)
    assert str(path) in str(exc.value) and "cameras.0.obsrver" in str(exc.value) and "unknown key" in str(exc.value)


def test_bad_values_are_named(tmp_path):
    path = write(tmp_path, "station: s1\nthresholds: {default: 2}\ncameras:\n"
                           "  - {id: c1, drop_folder: d, pattern: '^(?P<serial>\\d+)\\.jpg$'}\n")
    with pytest.raises(ConfigError) as exc:
        load_station_config(path)
    text = str(exc.value)
    assert "thresholds.default" in text and "cameras.0.pattern" in text and "position" in text


def test_backend_needs_artifact_and_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="detector.*artifact is required"):
        load_station_config(write(tmp_path, "station: s\ndetector: {backend: onnxruntime}\n"
                                            "cameras: [{id: c, drop_folder: d}]\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_station_config(write(tmp_path, "station: [unclosed\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_station_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="duplicate camera"):
        load_station_config(write(tmp_path, "station: s\ncameras: [{id: c, drop_folder: a}, {id: c, drop_folder: b}]\n"))


def test_relative_paths_resolve_against_the_file_and_defaults(tmp_path):
    cfg = load_station_config(write(tmp_path, "station: s\nstate_dir: st\ncameras: [{id: c, drop_folder: drop}]\n"))
    assert cfg.state_dir == tmp_path / "st" and cfg.cameras[0].drop_folder == tmp_path / "drop"
    assert cfg.db_url == f"sqlite:///{tmp_path / 'st' / 'inspector.db'}"
    assert cfg.dir_for("quarantine") == tmp_path / "st" / "quarantine"
    assert cfg.template_dir(cfg.cameras[0]) == tmp_path / "st" / "templates" / "c"


def test_alarm_rules_pick_the_highest_severity(make_config):
    cfg = make_config()
    assert cfg.severity_for("defect", 0.9, 400) == "critical"
    assert cfg.severity_for("defect", 0.9, 100) == "warning"
    assert cfg.severity_for("defect", 0.3, 400) is None


def test_the_rule_that_fired_is_the_first_of_the_highest_severity(make_config):
    """The result message names the rule (index into alarm_rules) that set the frame's severity."""
    cfg = make_config(alarm_rules=[{"class": "*", "severity": "info"},
                                   {"class": "short", "severity": "warning", "min_score": 0.6},
                                   {"class": "*", "severity": "warning", "min_area": 50},
                                   {"class": "short", "severity": "critical", "min_area": 500}])
    assert cfg.alarm_rule_for("short", 0.9, 100) == 1  # warning by rules 1 and 2: the first one
    assert cfg.alarm_rule_for("open", 0.9, 100) == 2
    assert cfg.alarm_rule_for("short", 0.5, 10) == 0
    assert cfg.alarm_rule_for("short", 0.9, 600) == 3
    assert make_config(alarm_rules=[]).alarm_rule_for("short", 0.9, 600) is None


def test_check_config_cli_exit_codes(tmp_path, capsys):
    good = write(tmp_path, "station: s\ncameras: [{id: c, drop_folder: d}]\n")
    assert main(["check-config", str(good)]) == 0
    out = capsys.readouterr()
    assert "OK" in out.out and "cameras.0.drop_folder" in out.err  # a warning only
    assert main(["check-config", "--strict", str(good)]) == 2
    (tmp_path / "d").mkdir()
    assert main(["check-config", "--strict", str(good)]) == 0
    art = write(tmp_path, "station: s\ndetector: {backend: onnxruntime, artifact: nowhere}\n"
                          "cameras: [{id: c, drop_folder: d}]\n")
    assert main(["check-config", "--strict", str(art)]) == 2
    assert "detector.artifact: no metadata.json" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("station: s\ncamera: []\n")
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "camera" in err and "cameras" in err


def test_check_config_names_the_installed_runtimes_and_backend_mismatches(tmp_path, capsys, tiny_artifact,
                                                                         monkeypatch):
    import importlib.metadata

    from inspector import backends

    art = tiny_artifact(tmp_path / "art", with_template=False)
    (tmp_path / "d").mkdir()
    cfg = write(tmp_path, f"station: s\ndetector: {{backend: openvino, artifact: {art}}}\n"
                          "cameras: [{id: c, drop_folder: d}]\n")
    assert main(["check-config", "--strict", str(cfg)]) == 0  # openvino runs an onnxruntime artifact's ONNX
    out = capsys.readouterr().out
    assert "backend openvino" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("runtimes: "))
    for name in ("onnxruntime", "openvino"):
        assert f"{name} {importlib.metadata.version(name)}" in line
    assert "tensorrt" in line and "torch" in line
    # a runtime that is not installed: a warning naming the package
    monkeypatch.setitem(backends.RUNTIMES, "openvino", "openvino-not-installed-here")
    assert main(["check-config", str(cfg)]) == 0
    captured = capsys.readouterr()
    assert "openvino not installed" in captured.out
    assert "'openvino-not-installed-here' package is not installed" in captured.err
    assert main(["check-config", "--strict", str(cfg)]) == 2
    monkeypatch.undo()
    # an artifact this backend cannot run
    from engines.artifact import ArtifactMetadata

    ArtifactMetadata.load(art).model_copy(update={"target": "tensorrt"}).save(art)
    assert main(["check-config", "--strict", str(cfg)]) == 2
    assert "is a 'tensorrt' artifact; backend openvino runs openvino or onnxruntime artifacts" in capsys.readouterr().err
