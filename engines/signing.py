"""Ed25519 signatures of artifact directories: ``rddn compile --sign-key`` signs, the daemon verifies.

Why sign when ``metadata.json`` already carries the model's sha256: the hash only proves the model file matches
the metadata next to it; whoever can replace the model can replace the metadata too. A signature made with a
key that never leaves the release machine, checked against the public key in the station config
(``detector.signing_public_key``), proves the whole directory is what the release produced.

What is signed: ``signature.json`` lists the sha256 of every file of the artifact (``metadata.json``, the
model, the ONNX a TensorRT engine is rebuilt from, plugin libraries) and carries an Ed25519 signature over the
canonical JSON of that list. Verification checks the signature, then every listed file's hash, and that every
file ``metadata.json`` refers to is listed; a symbolic link anywhere in the artifact is refused (it could point
anywhere at load time). Keys are standard PEM or OpenSSH files::

    openssl genpkey -algorithm ed25519 -out release-signing.pem          # private: keep it on the release host
    openssl pkey -in release-signing.pem -pubout -out release-signing.pub.pem   # public: goes to every station

``ssh-keygen -t ed25519 -f release-signing`` keys work too. A passphrase-protected private key reads its
passphrase from ``RDDN_SIGN_KEY_PASSPHRASE``. The key-file permission rule (:func:`require_private_file`) is the
one every secret key of the project follows (CURVE keys too, see ``inspector.security``).

This module is part of the artifact contract the daemon imports (like ``engines.artifact``): no torch.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.artifact import METADATA_FILE, ArtifactMetadata, sha256_file

SIGNATURE_FILE = "signature.json"
SIGNATURE_FORMAT = 1
PASSPHRASE_ENV = "RDDN_SIGN_KEY_PASSPHRASE"


class SignatureError(ValueError):
    """An artifact is unsigned, tampered with, or signed by another key; the message says which file and why."""


def require_private_file(path: Path, what: str) -> None:
    """Refuse a secret key file others could read, the way OpenSSH and PostgreSQL do.

    Owned by the running user: no group/other permission bits at all (0600 or stricter). Owned by root: group
    read is allowed (0640, the usual ``root:service-group`` layout for service secrets), nothing for others and
    no group write. Owned by anyone else: refused (they could change it).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ValueError(f"{what} not found: {path}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{what} {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == os.geteuid():
        too_open = mode & 0o077
    elif st.st_uid == 0:
        too_open = mode & 0o037
    else:
        raise ValueError(f"{what} {path} is owned by uid {st.st_uid}, not by this user ({os.geteuid()}) or root")
    if too_open:
        raise ValueError(f"{what} {path}: permissions {mode:04o} are too open (others could read the secret key); "
                         f"run: chmod 600 {path}")


def key_id(public_key: Any) -> str:
    """``SHA256:<base64>`` of the raw 32-byte Ed25519 public key: names the key in signatures and logs."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")


def load_private_key(path: Path) -> Any:
    """An Ed25519 private key from a PEM (PKCS#8) or OpenSSH file, after :func:`require_private_file`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    require_private_file(path, "signing key")
    data = path.read_bytes()
    passphrase = os.environ.get(PASSPHRASE_ENV)
    password = passphrase.encode() if passphrase else None
    try:
        if data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY"):
            key = serialization.load_ssh_private_key(data, password)
        else:
            key = serialization.load_pem_private_key(data, password)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"signing key {path}: cannot read it ({exc}); encrypted keys read their passphrase "
                             f"from {PASSPHRASE_ENV}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"signing key {path}: {type(key).__name__} is not an Ed25519 key "
                             "(openssl genpkey -algorithm ed25519)")
    return key


def load_public_key(path: Path) -> Any:
    """An Ed25519 public key from a PEM (``openssl pkey -pubout``) or OpenSSH (``ssh-ed25519 ...``) file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SignatureError(f"signing public key {path}: {exc.strerror or exc}") from None
    try:
        if data.lstrip().startswith(b"ssh-"):
            key = serialization.load_ssh_public_key(data.strip())
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"signing public key {path}: not a PEM or OpenSSH public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"signing public key {path}: {type(key).__name__} is not an Ed25519 key")
    return key


def artifact_files(artifact_dir: Path) -> dict[str, str]:
    """sha256 of every regular file under ``artifact_dir`` but the signature, by POSIX relative path.
    A symbolic link anywhere is an error: what it points to could change after signing."""
    root = Path(artifact_dir)
    if root.is_symlink() or not root.is_dir():
        raise SignatureError(f"{root}: not an artifact directory")
    files: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            raise SignatureError(f"{path}: artifacts must not contain symbolic links")
        if path.is_file() and rel != SIGNATURE_FILE:
            files[rel] = sha256_file(path)
    if METADATA_FILE not in files:
        raise SignatureError(f"{root}: no {METADATA_FILE} (not an artifact written by rddn compile)")
    return files


def _canonical(body: dict[str, object]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign_artifact(artifact_dir: Path, private_key_path: Path) -> Path:
    """Write ``signature.json`` for the artifact as it is now; returns its path."""
    key = load_private_key(private_key_path)
    body: dict[str, object] = {"format": SIGNATURE_FORMAT, "algorithm": "ed25519", "key_id": key_id(key.public_key()),
                               "files": artifact_files(artifact_dir)}
    signed = {**body, "signature": base64.b64encode(key.sign(_canonical(body))).decode()}
    out = Path(artifact_dir) / SIGNATURE_FILE
    tmp = out.with_name(f".{SIGNATURE_FILE}.tmp")
    tmp.write_text(json.dumps(signed, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out)
    return out


@dataclass(frozen=True)
class VerifiedArtifact:
    key_id: str
    files: dict[str, str]


def verify_artifact(artifact_dir: Path, public_key_path: Path) -> VerifiedArtifact:
    """Check the signature and every file; raises :class:`SignatureError` naming what does not match."""
    root = Path(artifact_dir)
    public_key = load_public_key(public_key_path)
    expected_id = key_id(public_key)
    sig_path = root / SIGNATURE_FILE
    if sig_path.is_symlink() or not sig_path.is_file():
        raise SignatureError(f"{root}: artifact is not signed (no {SIGNATURE_FILE}) but detector.signing_public_key "
                             "is set: compile it with `rddn compile --sign-key`")
    try:
        signed = json.loads(sig_path.read_text())
        signature = base64.b64decode(signed.pop("signature"), validate=True)
        files = signed["files"]
        if signed.get("format") != SIGNATURE_FORMAT or signed.get("algorithm") != "ed25519" or not isinstance(files, dict):
            raise ValueError("unknown format")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SignatureError(f"{sig_path}: not a valid signature file ({exc})") from None
    if signed.get("key_id") != expected_id:
        raise SignatureError(f"{sig_path}: signed by key {signed.get('key_id')}, but the station trusts {expected_id}")
    from cryptography.exceptions import InvalidSignature

    try:
        public_key.verify(signature, _canonical(signed))
    except InvalidSignature:
        raise SignatureError(f"{sig_path}: the signature does not match its file list (signature.json was edited)") from None
    actual = artifact_files(root)
    for name, digest in files.items():
        if name not in actual:
            raise SignatureError(f"{root / name}: signed file is missing")
        if actual[name] != digest:
            raise SignatureError(f"{root / name}: content differs from the signed artifact (tampered or corrupt)")
    metadata = ArtifactMetadata.load(root)
    for ref in metadata.referenced_files():
        if (root / ref).exists() and ref not in files:
            raise SignatureError(f"{root / ref}: referenced by {METADATA_FILE} but not covered by the signature")
    return VerifiedArtifact(expected_id, dict(files))
