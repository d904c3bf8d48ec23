"""``inspector opcua hash-password`` / ``inspector opcua certificate`` and check-config's OPC UA checks, as an
operator runs them."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from inspector.cli import main
from inspector.config import load_station_config
from inspector.outputs.opcua_security import thumbprint, verify_password
from opcua_client import make_identity


def station_file(tmp_path: Path, **opcua: object) -> Path:
    path = tmp_path / "line1.yaml"
    path.write_text(yaml.safe_dump({"station": "line1", "state_dir": "state",
                                    "cameras": [{"id": "top", "drop_folder": "drop"}],
                                    "opcua": {"enabled": True, "allow_anonymous": True, **opcua}}))
    return path


def test_hash_password_from_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    assert main(["opcua", "hash-password", "--stdin"]) == 0
    digest = capsys.readouterr().out.strip()
    assert verify_password("a long enough password", digest) and "password" not in digest
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["opcua", "hash-password", "--stdin"]) == 2
    assert "at least 8" in capsys.readouterr().err


def test_certificate_command_shows_the_server_certificate_and_the_trust_list(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = station_file(tmp_path)
    assert main(["opcua", "certificate", "--config", str(path)]) == 0
    first = capsys.readouterr().out
    pki = load_station_config(path).opcua_pki_dir
    cert = x509.load_der_x509_certificate((pki / "own" / "certs" / "server_cert.der").read_bytes())
    assert "(new)" in first and thumbprint(cert) in first and "trusted client certificates" in first
    plc = make_identity(tmp_path / "apps", "siemens-plc")
    (pki / "rejected" / "certs").mkdir(parents=True, exist_ok=True)
    (pki / "rejected" / "certs" / "siemens-plc.der").write_bytes(plc.der)
    assert main(["opcua", "certificate", "--config", str(path)]) == 0
    second = capsys.readouterr().out
    assert "(new)" not in second and thumbprint(cert) in second  # the same certificate, not a new one
    rejected = second.split("rejected client certificates")[1]
    assert thumbprint(x509.load_der_x509_certificate(plc.der)) in rejected and "siemens-plc" in rejected


def test_check_config_warns_about_missing_user_certificates(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = station_file(tmp_path, certificate_users={"mes": "users/mes.der"})
    assert main(["check-config", str(path)]) == 0
    assert "opcua.certificate_users.mes" in capsys.readouterr().err
    assert main(["check-config", "--strict", str(path)]) == 2
