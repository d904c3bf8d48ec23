"""Artifacts you can trust: metadata cannot point outside its directory, a signed artifact is verified against
the station's public key (tampered, re-signed or unsigned: refused), and a model loaded with
``verify_hash: false`` is recorded as unverified (models row, history, log)."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from engines.artifact import ArtifactMetadata
from engines.signing import SignatureError, key_id, load_public_key, sign_artifact, verify_artifact
from inspector.backends.onnxruntime import OnnxRuntimeBackend
from inspector.cli import main
from inspector.db import Frame
from inspector.db.models import ModelRecord
from inspector.history import HistoryFilter, query_history


def ed25519_keys(directory: Path, name: str = "release") -> tuple[Path, Path]:
    """The documented way, ``openssl genpkey -algorithm ed25519`` + ``openssl pkey -pubout`` (the same PEM files
    through ``cryptography`` where openssl is not installed)."""
    directory.mkdir(parents=True, exist_ok=True)
    private, public = directory / f"{name}.pem", directory / f"{name}.pub.pem"
    if shutil.which("openssl"):
        old = os.umask(0o077)
        try:
            subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(private)], check=True,
                           capture_output=True)
        finally:
            os.umask(old)
        subprocess.run(["openssl", "pkey", "-in", str(private), "-pubout", "-out", str(public)], check=True,
                       capture_output=True)
        return private, public
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return ed25519_keys(tmp_path / "keys")


def rewrite_metadata(artifact: Path, **changes: object) -> None:
    path = artifact / "metadata.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_metadata_cannot_point_the_backend_outside_the_artifact(tmp_path, tiny_artifact):
    art = tiny_artifact(tmp_path / "art", with_template=False)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(art / "model.onnx", outside / "evil.onnx")
    for name in ("../outside/evil.onnx", str(outside / "evil.onnx"), "sub/../../outside/evil.onnx", "a\\b.onnx"):
        rewrite_metadata(art, model_file=name)
        with pytest.raises(ValueError, match="model_file.*inside the artifact directory"):
            ArtifactMetadata.load(art)
        with pytest.raises(ValueError, match="inside the artifact directory"):
            OnnxRuntimeBackend(art)
    rewrite_metadata(art, model_file="linked.onnx")  # a plain name, but a link that leaves the directory
    (art / "linked.onnx").symlink_to(outside / "evil.onnx")
    with pytest.raises(ValueError, match="outside the artifact directory"):
        OnnxRuntimeBackend(art)


def test_signed_artifact_verifies_and_every_tampering_is_refused(tmp_path, tiny_artifact, keys):
    private, public = keys
    art = tiny_artifact(tmp_path / "art", with_template=False)
    sign_artifact(art, private)
    verified = verify_artifact(art, public)
    assert verified.key_id == key_id(load_public_key(public)) and set(verified.files) == {"metadata.json", "model.onnx"}

    def refused(match: str) -> None:
        with pytest.raises(SignatureError, match=match):
            verify_artifact(art, public)

    original = (art / "model.onnx").read_bytes()
    (art / "model.onnx").write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # one bit of the model
    refused("model.onnx: content differs")
    (art / "model.onnx").write_bytes(original)
    meta = (art / "metadata.json").read_text()
    rewrite_metadata(art, class_names=["scratch", "ok"])  # the hash in metadata stays right: only a signature sees it
    refused("metadata.json: content differs")
    (art / "metadata.json").write_text(meta)
    signed = json.loads((art / "signature.json").read_text())
    signed["files"]["model.onnx"] = "0" * 64
    (art / "signature.json").write_text(json.dumps(signed))
    refused("signature does not match")
    sign_artifact(art, private)
    other_private, _ = ed25519_keys(tmp_path / "other", "mallory")
    sign_artifact(art, other_private)  # a valid signature, by a key the station does not trust
    refused("the station trusts")
    sign_artifact(art, private)
    (art / "extra.onnx").symlink_to(art / "model.onnx")
    refused("symbolic links")
    (art / "extra.onnx").unlink()
    shutil.copy(art / "model.onnx", art / "planted.onnx")
    rewrite_metadata(art, model_file="planted.onnx")
    refused("metadata.json: content differs")
    (art / "metadata.json").write_text(meta)
    # A file metadata.json names that did not exist at signing (the ONNX a TensorRT engine is rebuilt from),
    # planted afterwards: metadata and every signed file are intact, the plant is still refused.
    rewrite_metadata(art, onnx_file="rebuild.onnx")
    sign_artifact(art, private)
    shutil.copy(art / "model.onnx", art / "rebuild.onnx")
    refused("rebuild.onnx: referenced by metadata.json but not covered by the signature")
    (art / "rebuild.onnx").unlink()
    (art / "metadata.json").write_text(meta)
    sign_artifact(art, private)
    verify_artifact(art, public)
    (art / "signature.json").unlink()
    refused("not signed")


def test_signing_key_readable_by_others_is_refused(tmp_path, tiny_artifact, keys):
    private, _ = keys
    art = tiny_artifact(tmp_path / "art", with_template=False)
    private.chmod(0o644)
    with pytest.raises(ValueError, match="too open"):
        sign_artifact(art, private)
    private.chmod(0o600)
    if os.geteuid() == 0:  # only root can hand the file to someone else
        os.chown(private, 12345, -1)
        with pytest.raises(ValueError, match="owned by uid 12345"):
            sign_artifact(art, private)


def station(tmp_path: Path, art: Path, **detector: object) -> Path:
    import yaml

    path = tmp_path / "station.yaml"
    path.write_text(yaml.safe_dump({
        "station": "trust", "state_dir": str(tmp_path / "state"),
        "bus": {"publish": "tcp://127.0.0.1:*", "replay": "tcp://127.0.0.1:*"},
        "detector": {"backend": "onnxruntime", "artifact": str(art), **detector},
        "thresholds": {"default": 0.99},
        "cameras": [{"id": "cam1", "drop_folder": str(tmp_path / "drop")}]}))
    return path


def test_daemon_runs_only_the_artifact_its_key_signed(tmp_path, tiny_artifact, keys, start_daemon, capsys):
    from inspector.config import load_station_config

    private, public = keys
    art = tiny_artifact(tmp_path / "art", with_template=False)
    config = station(tmp_path, art, signing_public_key=str(public))
    with pytest.raises(ValueError, match="not signed"):
        start_daemon(load_station_config(config), templates=False)
    assert main(["check-config", "--strict", str(config)]) == 2
    assert "the daemon would refuse this artifact" in capsys.readouterr().err
    sign_artifact(art, private)
    daemon = start_daemon(load_station_config(config), templates=False)
    with daemon.factory() as db:
        assert db.scalars(select(ModelRecord.verification)).all() == ["signature"]
    daemon.stop()
    original = (art / "model.onnx").read_bytes()
    (art / "model.onnx").write_bytes(original + b"\0")  # swapped after signing, metadata hash fixed up too
    from engines.artifact import sha256_file

    rewrite_metadata(art, model_sha256=sha256_file(art / "model.onnx"))
    with pytest.raises(ValueError, match="content differs from the signed artifact"):
        start_daemon(load_station_config(config), templates=False)


def test_unverified_model_is_recorded_as_unverified(tmp_path, tiny_artifact, start_daemon, frames, wait, caplog):
    from inspector.config import load_station_config

    art = tiny_artifact(tmp_path / "art", with_template=False)
    rewrite_metadata(art, model_sha256="f" * 64)  # a claim nobody checks with verify_hash: false
    with pytest.raises(ValueError, match="sha256 does not match"):
        start_daemon(load_station_config(station(tmp_path, art)), templates=False)
    caplog.set_level(logging.WARNING, logger="inspector.daemon")
    cfg = load_station_config(station(tmp_path, art, options={"verify_hash": False}))
    daemon = start_daemon(cfg, templates=False)
    frames.drop(cfg.cameras[0].drop_folder, "P00_1.jpg", 0)
    wait(lambda: daemon.pipeline.counts["ok"] + daemon.pipeline.counts["defective"] == 1)
    with daemon.factory() as db:
        [model] = db.scalars(select(ModelRecord)).all()
        assert (model.verification, model.sha256) == ("unverified", "f" * 64)
        assert db.scalar(select(Frame.model_id)) == model.id
        assert [r.model_verification for r in query_history(db, HistoryFilter())] == ["unverified"]
    assert any("WITHOUT verification" in r.getMessage() for r in caplog.records)
    with pytest.raises(Exception, match="verify_hash: false contradicts"):
        load_station_config(station(tmp_path, art, options={"verify_hash": False}, signing_public_key="k.pem"))
