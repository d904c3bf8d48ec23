"""Config values that become paths or listeners: nothing escapes its directory, overlaps the state directory,
or listens beyond loopback unauthenticated unless the config says so; check-config never prints a password."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from inspector.cli import main
from inspector.config import ConfigError, load_station_config, parse_station_config
from inspector.db.records import open_station_database
from inspector.security import check_exposure, redact_secrets
from inspector.templates import TemplateError, TemplateStore


def load(tmp_path: Path, text: str):
    path = tmp_path / "station.yaml"
    path.write_text(text)
    return load_station_config(path)


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, text)
    return str(exc.value)


BASE = "station: s\nstate_dir: st\n"


@pytest.mark.parametrize("camera_id", ["..", ".", ".hidden", "a/b", "x" * 65, ""])
def test_camera_id_that_is_not_one_path_component_is_refused(tmp_path, camera_id):
    text = refused(tmp_path, BASE + f"cameras: [{{id: '{camera_id}', drop_folder: d}}]\n")
    assert "cameras.0.id" in text


@pytest.mark.parametrize("station", ["..", ".s", "a/b"])
def test_station_name_that_is_not_one_path_component_is_refused(tmp_path, station):
    assert "station" in refused(tmp_path, f"station: '{station}'\ncameras: [{{id: c, drop_folder: d}}]\n")


def test_drop_folder_root_state_dir_and_overlaps_are_refused(tmp_path):
    assert "cameras.0.drop_folder: / is a file-system root" in refused(
        tmp_path, BASE + "cameras: [{id: c, drop_folder: /}]\n")
    text = refused(tmp_path, BASE + "cameras: [{id: c, drop_folder: st}]\n")
    assert "is the state directory or contains it" in text
    text = refused(tmp_path, BASE + "cameras: [{id: c, drop_folder: st/processed/c}]\n")
    assert "cameras.0.drop_folder" in text and "overlaps directories.processed" in text
    text = refused(tmp_path, BASE + "directories: {quarantine: drop/q}\ncameras: [{id: c, drop_folder: drop}]\n")
    assert "overlaps directories.quarantine" in text
    text = refused(tmp_path, BASE + "cameras: [{id: a, drop_folder: d}, {id: b, drop_folder: d/sub}]\n")
    assert "cameras.1.drop_folder" in text and "overlaps cameras.0.drop_folder" in text
    text = refused(tmp_path, BASE + "directories: {processed: out, annotated: out/ann}\ncameras: [{id: c, drop_folder: d}]\n")
    assert "directories.annotated" in text and "overlaps directories.processed" in text
    text = refused(tmp_path, BASE + "cameras: [{id: c, drop_folder: d, template_store: st/quarantine/t}]\n")
    assert "cameras.0.template_store" in text


def test_overlap_through_a_symbolic_link_is_refused(tmp_path):
    (tmp_path / "st" / "processed").mkdir(parents=True)
    (tmp_path / "innocent").symlink_to(tmp_path / "st" / "processed")
    # absolute paths are taken as written, links and all: the layout check resolves them
    text = refused(tmp_path, f"station: s\nstate_dir: {tmp_path / 'st'}\n"
                             f"cameras: [{{id: c, drop_folder: {tmp_path / 'innocent'}}}]\n")
    assert "overlaps directories.processed" in text


def test_usual_layouts_are_accepted(tmp_path):
    cfg = load(tmp_path, BASE + "cameras: [{id: a, drop_folder: st/drop/a}, {id: b, drop_folder: st/drop/b,"
                                " template_store: st/templates/b}]\n")
    assert [c.id for c in cfg.cameras] == ["a", "b"]
    load(tmp_path, BASE + "cameras: [{id: a, drop_folder: /srv/camera/a}]\n")


def test_template_position_cannot_leave_the_template_store(tmp_path):
    cfg = parse_station_config({"station": "s", "state_dir": str(tmp_path / "st"),
                                "cameras": [{"id": "c", "drop_folder": str(tmp_path / "d")}]}, "<t>", tmp_path)
    engine, factory, cams = open_station_database(cfg)
    store = TemplateStore(cfg, factory, cams)
    image = np.zeros((8, 8, 3), np.uint8)
    try:
        for position in ("../../x", "..", "a/b", "/abs"):
            with pytest.raises(TemplateError, match="template position"):
                store.add("c", position, image)
        assert not (tmp_path / "x").exists() and not any((tmp_path / "st").rglob("*.png"))
        assert store.add("c", "P1", image).version == 1
    finally:
        engine.dispose()


def test_templates_add_cli_refuses_a_traversing_position(tmp_path, capsys):
    import cv2

    path = tmp_path / "station.yaml"
    path.write_text(f"station: s\nstate_dir: {tmp_path / 'st'}\ncameras: [{{id: c, drop_folder: {tmp_path / 'd'}}}]\n")
    image = tmp_path / "t.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    assert main(["templates", "add", "--config", str(path), "--camera", "c", "--position", "../../x", str(image)]) == 2
    assert "template position '../../x'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_non_loopback_bus_without_curve_is_refused_unless_allowed(tmp_path, capsys):
    cams = "cameras: [{id: c, drop_folder: d}]\n"
    for endpoint in ("tcp://0.0.0.0:5556", "tcp://*:5556", "tcp://eth0:5556", "tcp://[::]:5556", "tcp://10.0.0.5:5556"):
        text = refused(tmp_path, BASE + f"bus: {{publish: '{endpoint}'}}\n" + cams)
        assert "bus.publish" in text and "bus.allow_plaintext: true" in text and "bus.curve" in text
    assert "bus.replay" in refused(tmp_path, BASE + "bus: {replay: 'tcp://0.0.0.0:5557'}\n" + cams)
    for endpoint in ("tcp://127.0.0.1:5556", "tcp://localhost:5556", "tcp://[::1]:5556", "ipc:///run/rddn/bus"):
        assert load(tmp_path, BASE + f"bus: {{publish: '{endpoint}'}}\n" + cams).exposure_warnings() == []
    allowed = load(tmp_path, BASE + "bus: {publish: 'tcp://0.0.0.0:5556', allow_plaintext: true}\n" + cams)
    [warning] = allowed.exposure_warnings()
    assert "bus.publish" in warning and "WITHOUT authentication" in warning
    path = tmp_path / "station.yaml"
    assert main(["check-config", str(path)]) == 0
    assert "WITHOUT authentication" in capsys.readouterr().err


def test_metrics_follow_the_same_rule(tmp_path):
    cams = "cameras: [{id: c, drop_folder: d}]\n"
    assert "metrics.address" in refused(tmp_path, BASE + "metrics: {port: 9464, address: 0.0.0.0}\n" + cams)
    cfg = load(tmp_path, BASE + "metrics: {port: 9464, address: 0.0.0.0, allow_plaintext: true}\n" + cams)
    assert any("metrics.address" in w for w in cfg.exposure_warnings())


def test_exposure_helper_is_one_rule_for_every_listener():
    kwargs = dict(allow_key="web.allow_plaintext", how_to_secure="Use TLS.")
    assert check_exposure("web.address", "127.0.0.1:8080", secured=False, allow_plaintext=False, **kwargs) is None
    assert check_exposure("web.address", "0.0.0.0:8080", secured=True, allow_plaintext=False, **kwargs) is None
    with pytest.raises(ValueError, match="web.address.*web.allow_plaintext: true"):
        check_exposure("web.address", "0.0.0.0:8080", secured=False, allow_plaintext=False, **kwargs)
    assert "Use TLS." in check_exposure("web.address", "192.168.1.2", secured=False, allow_plaintext=True, **kwargs)


@pytest.mark.parametrize("secret_text,secret", [
    ("postgresql+psycopg://inspector:S3cr%40t@db.plant.local:5432/inspection", "S3cr%40t"),
    ("postgresql://inspector:p@ss@db/inspection", "p@ss"),
    ("postgresql+psycopg://db.plant.local/inspection?user=inspector&password=hunter2&sslmode=require", "hunter2"),
    ("postgresql+psycopg:///inspection?host=db&password=hunter2", "hunter2"),
    ("host=db user=inspector password='two words' dbname=x", "two words"),
    ("host=db password=plain123 dbname=x", "plain123"),
    ("PGPASSWORD=envsecret psql", "envsecret"),
    ("api_token: tok123", "tok123"),
])
def test_every_password_form_is_masked(secret_text, secret):
    masked = redact_secrets(secret_text)
    assert secret not in masked and "***" in masked


def test_check_config_masks_the_database_password(tmp_path, capsys):
    path = tmp_path / "station.yaml"
    path.write_text(BASE + "database_url: 'postgresql+psycopg://u:topsecret@db/x?password=alsosecret'\n"
                           "cameras: [{id: c, drop_folder: d}]\n")
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr()
    assert "topsecret" not in out.out + out.err and "alsosecret" not in out.out + out.err
    assert "postgresql+psycopg://u:***@db/x?password=***" in out.out


def test_daemon_warns_at_every_start_about_an_allowed_plaintext_listener(make_config, caplog):
    from inspector.daemon import Daemon

    # 192.0.2.1 (TEST-NET-1) is on no interface here: the bind fails right after the warning, nothing listens
    cfg = make_config(bus={"publish": "tcp://192.0.2.1:5556", "replay": "tcp://127.0.0.1:*",
                           "allow_plaintext": True})
    caplog.set_level(logging.WARNING, logger="inspector.daemon")
    for _ in range(2):
        with pytest.raises(RuntimeError, match="cannot bind"):
            Daemon(cfg).start()
    warnings = [r for r in caplog.records if r.getMessage() == "listener reachable from the network without authentication"]
    assert len(warnings) == 2 and "bus.publish: tcp://192.0.2.1:5556" in warnings[0].fields["warning"]  # type: ignore[attr-defined]
