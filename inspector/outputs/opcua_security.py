"""Security of the OPC UA server: its certificate, the trust list of client applications, users and what they may do.

OPC UA authenticates twice. The *application* (the PLC's OPC UA client) proves its certificate while opening a
SignAndEncrypt secure channel; the server accepts it only if it is in ``<pki>/trusted/certs`` (or issued by a CA
there); an unknown one is copied to ``<pki>/rejected/certs`` for an operator to move over (the usual OPC UA
certificate exchange). The *user* then logs in on that channel with a name and password (checked against an
scrypt hash from the config, never a stored password) or an X.509 user certificate; anonymous only when the
config says so. Every user may browse, read, subscribe and call methods; nobody may write or change the address
space.

PKI layout (the one UaExpert, Siemens and open62541 use)::

    <pki>/own/certs/server_cert.der      generated on first start (self-signed, RSA 2048, SHA-256)
    <pki>/own/private/server_key.pem     mode 0600, directory 0700
    <pki>/trusted/certs/                 client application certificates (DER or PEM) and CAs
    <pki>/rejected/certs/                certificates that were refused, newest MAX_REJECTED kept
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from functools import cache
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.cert_gen import dump_private_key_as_pem, generate_private_key, generate_self_signed_app_certificate
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.internal_server import InternalServer
from asyncua.server.internal_session import InternalSession
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from inspector.config import PASSWORD_HASH_RE, StationConfig

log = logging.getLogger("inspector.opcua")

# scrypt at N=2^14, r=8: 16 MiB and some tens of ms per check, the cost OWASP suggests for interactive logins.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1
CERTIFICATE_DAYS = 5 * 365
RENEW_WARNING = timedelta(days=30)
MAX_REJECTED = 100
# Password checks are CPU-bound and run on the server thread: at most LOGIN_BURST at once, then LOGIN_RATE_PER_S
# (a client guessing passwords cannot take a core away from the inspection).
LOGIN_BURST, LOGIN_RATE_PER_S = 10, 2.0


# -- passwords ------------------------------------------------------------------------------------------------
def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$key`` (base64): what the config's ``opcua.users`` holds."""
    if not password:
        raise ValueError("empty password")
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return "$".join(["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P),
                     base64.b64encode(salt).decode(), base64.b64encode(key).decode()])


def verify_password(password: str, stored: str) -> bool:
    match = PASSWORD_HASH_RE.match(stored)
    if match is None:
        raise ValueError("not a password hash from `inspector opcua hash-password`")
    n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    salt, key = base64.b64decode(match.group(4)), base64.b64decode(match.group(5))
    candidate = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(key),
                               maxmem=256 * n * r + (1 << 20))
    return hmac.compare_digest(candidate, key)


class LoginLimiter:
    """Token bucket over password checks (all users together)."""

    def __init__(self, burst: int = LOGIN_BURST, rate_per_s: float = LOGIN_RATE_PER_S) -> None:
        self.burst, self.rate = burst, rate_per_s
        self._tokens, self._t = float(burst), time.monotonic()
        self._lock = threading.Lock()
        self.refused = 0

    def allow(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
            self._t = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            self.refused += 1
            return False


# -- the server's own certificate ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServerCertificate:
    certificate: Path
    private_key: Path
    thumbprint: str  # SHA-1 of the DER, as OPC UA clients show it in their trust dialogs
    not_after: datetime
    created: bool


def thumbprint(cert: x509.Certificate) -> str:
    return hashlib.sha1(cert.public_bytes(Encoding.DER)).hexdigest()  # noqa: S324 - OPC UA's thumbprint is SHA-1


def certificate_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the first byte on (tmp + rename: never a half-written key)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def application_uri(station: str) -> str:
    """The server's ApplicationUri (also in its certificate): one per station."""
    return f"urn:rddn-inspector:{station}"


def station_server_certificate(cfg: StationConfig) -> ServerCertificate:
    """``ensure_server_certificate`` for a station config (its PKI folder, station and endpoint host)."""
    host = urlsplit(cfg.opcua.endpoint).hostname or "127.0.0.1"
    return ensure_server_certificate(cfg.opcua_pki_dir, application_uri(cfg.station), host, cfg.station)


def ensure_server_certificate(pki: Path, application_uri: str, host: str, station: str) -> ServerCertificate:
    """The server's certificate and key under ``pki/own``, generated when missing, expired, or made for another
    application URI (clients reject a certificate whose URI differs from the server's). A fresh certificate has
    to be trusted again by every PLC: the log says so with its thumbprint."""
    certs, private = pki / "own" / "certs", pki / "own" / "private"
    certs.mkdir(parents=True, exist_ok=True)
    private.mkdir(parents=True, exist_ok=True)
    os.chmod(private, 0o700)
    cert_path, key_path = certs / "server_cert.der", private / "server_key.pem"
    reason = None
    if cert_path.is_file() and key_path.is_file():
        cert = x509.load_der_x509_certificate(cert_path.read_bytes())
        now = datetime.now(timezone.utc)
        if cert.not_valid_after_utc <= now:
            reason = f"expired on {cert.not_valid_after_utc.isoformat()}"
        elif application_uri not in certificate_uris(cert):
            reason = f"made for {certificate_uris(cert)}, not {application_uri}"
        else:
            if cert.not_valid_after_utc - now < RENEW_WARNING:
                log.warning("OPC UA server certificate expires soon; delete it to get a new one (PLCs must "
                            "trust the new one)", extra={"fields": {"not_after": cert.not_valid_after_utc.isoformat(),
                                                                    "certificate": str(cert_path)}})
            return ServerCertificate(cert_path, key_path, thumbprint(cert), cert.not_valid_after_utc, False)
    key = generate_private_key()
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    dns = {socket.gethostname(), "localhost"}
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        dns.add(host)
    names += [x509.DNSName(d) for d in sorted(dns) if d]
    cert = generate_self_signed_app_certificate(
        key, f"rddn-inspector {station}", {"organizationName": "rddn-inspector"}, names,
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], days=CERTIFICATE_DAYS)
    _write_private(key_path, dump_private_key_as_pem(key))
    tmp = cert_path.with_name(f".{cert_path.name}.tmp")
    tmp.write_bytes(cert.public_bytes(Encoding.DER))
    os.replace(tmp, cert_path)
    log.warning("OPC UA server certificate generated: add it to each PLC's trust list", extra={"fields": {
        "certificate": str(cert_path), "thumbprint": thumbprint(cert), "application_uri": application_uri,
        "replaced": reason}})
    return ServerCertificate(cert_path, key_path, thumbprint(cert), cert.not_valid_after_utc, True)


# -- client applications ------------------------------------------------------------------------------------------
def load_certificate_file(path: Path) -> x509.Certificate:
    data = path.read_bytes()
    if b"-----BEGIN CERTIFICATE-----" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def certificates_in(directory: Path) -> list[tuple[Path, x509.Certificate]]:
    """The readable certificates (DER/PEM) in a trust-list folder, by name; links and other files skipped."""
    found = []
    for path in sorted(directory.iterdir()) if directory.is_dir() else []:
        if not path.is_file() or path.is_symlink() or path.suffix.lower() not in (".der", ".pem", ".crt", ".cer"):
            continue
        try:
            found.append((path, load_certificate_file(path)))
        except (OSError, ValueError) as exc:
            log.error("unreadable certificate in the OPC UA trust list", extra={"fields": {
                "path": str(path), "error": str(exc)}})
    return found


def common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else "unnamed"


class ClientTrustList:
    """asyncua certificate validator (called at CreateSession): time range, application URI in the certificate,
    then trusted by exact certificate or by a CA certificate in ``trusted/certs``. The folder is re-read when
    it changes, so trusting a PLC needs no restart."""

    def __init__(self, pki: Path, trust_all: bool = False) -> None:
        self.trusted_dir = pki / "trusted" / "certs"
        self.rejected_dir = pki / "rejected" / "certs"
        self.trusted_dir.mkdir(parents=True, exist_ok=True)
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        self.trust_all = trust_all
        self._stamp: tuple[float, int] | None = None
        self._exact: set[bytes] = set()
        self._cas: list[x509.Certificate] = []
        self.rejected = 0

    def _reload(self) -> None:
        st = self.trusted_dir.stat()
        stamp = (st.st_mtime, st.st_nlink)
        if stamp == self._stamp:
            return
        exact, cas = set(), []
        for _path, cert in certificates_in(self.trusted_dir):
            exact.add(cert.public_bytes(Encoding.DER))
            try:
                if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                    cas.append(cert)
            except x509.ExtensionNotFound:
                pass
        self._exact, self._cas, self._stamp = exact, cas, stamp

    def is_trusted(self, cert: x509.Certificate) -> bool:
        self._reload()
        if cert.public_bytes(Encoding.DER) in self._exact:
            return True
        for ca in self._cas:
            if ca.subject == cert.issuer:
                try:
                    cert.verify_directly_issued_by(ca)
                    return True
                except (InvalidSignature, ValueError, TypeError):  # wrong key, or a key type it cannot check
                    continue
        return False

    def _keep_rejected(self, cert: x509.Certificate) -> Path:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", common_name(cert))[:64]
        path = self.rejected_dir / f"{name} [{thumbprint(cert)}].der"
        if not path.exists():
            old = sorted(self.rejected_dir.glob("*.der"), key=lambda p: p.stat().st_mtime)
            for stale in old[:max(0, len(old) - MAX_REJECTED + 1)]:
                stale.unlink(missing_ok=True)
            path.write_bytes(cert.public_bytes(Encoding.DER))
        return path

    async def __call__(self, cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        now = datetime.now(timezone.utc)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            self._refuse(cert, app, "outside its validity period", ua.StatusCodes.BadCertificateTimeInvalid)
        if app.ApplicationUri not in certificate_uris(cert):
            self._refuse(cert, app, f"application URI {app.ApplicationUri!r} is not in the certificate "
                                    f"({certificate_uris(cert)})", ua.StatusCodes.BadCertificateUriInvalid)
        if self.trust_all or self.is_trusted(cert):
            return
        path = self._keep_rejected(cert)
        self._refuse(cert, app, f"not in the trust list; to accept it: mv '{path}' '{self.trusted_dir}/'",
                     ua.StatusCodes.BadCertificateUntrusted)

    def _refuse(self, cert: x509.Certificate, app: ua.ApplicationDescription, why: str, code: int) -> None:
        self.rejected += 1
        log.warning("OPC UA client certificate refused", extra={"fields": {
            "client": app.ApplicationUri, "subject": common_name(cert), "thumbprint": thumbprint(cert),
            "reason": why}})
        raise ServiceError(code)


# -- users --------------------------------------------------------------------------------------------------------
class StationUserManager:
    """asyncua user manager: a name + password against the config's hashes, an X.509 user certificate against
    ``certificate_users``, or anonymous when allowed. ``None`` refuses the login (BadUserAccessDenied). Every
    user is a plain ``User``, never ``Admin``: asyncua then refuses node management and writes to read-only
    nodes (all of ours)."""

    def __init__(self, users: dict[str, str], certificate_users: dict[str, Path], allow_anonymous: bool,
                 limiter: LoginLimiter | None = None) -> None:
        self.users = dict(users)
        self.certificate_users = {load_certificate_file(path).public_bytes(Encoding.DER): name
                                  for name, path in certificate_users.items()}
        self.allow_anonymous = allow_anonymous
        self.limiter = limiter or LoginLimiter()
        self.failures = 0

    def get_user(self, iserver: InternalServer, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username is not None:
            stored = self.users.get(username)
            if not self.limiter.allow():
                return self._fail(username, "too many logins; try again later")
            # An unknown name costs the same hash as a known one: timing tells nothing about who exists.
            ok = verify_password(password or "", stored or _dummy_hash()) and stored is not None
            return User(role=UserRole.User, name=username) if ok else self._fail(username, "wrong user or password")
        if isinstance(certificate, bytes) and certificate in self.certificate_users:
            return User(role=UserRole.User, name=self.certificate_users[certificate])
        if self.allow_anonymous:
            return User(role=UserRole.User, name="anonymous")
        return self._fail("anonymous", "anonymous access is off")

    def _fail(self, who: str, why: str) -> None:
        self.failures += 1
        log.warning("OPC UA login refused", extra={"fields": {"user": who, "reason": why}})
        return None


@cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


class EncryptedOnlySession(InternalSession):
    """asyncua lets a client open a *None* secure channel (meant for GetEndpoints) and then create and activate
    a session on it, even when no None endpoint is offered. Refuse activation there: every session runs on a
    SignAndEncrypt channel (the only ones configured), which always carries the client's certificate."""

    def activate_session(self, params: ua.ActivateSessionParameters,
                         peer_certificate: bytes | None) -> ua.ActivateSessionResult:
        if not peer_certificate:
            log.warning("OPC UA session refused on an unencrypted channel")
            raise ServiceError(ua.StatusCodes.BadSecurityModeRejected)
        return super().activate_session(params, peer_certificate)


class EncryptedOnlyServer(InternalServer):
    def create_session(self, name: str, user: User = User(role=UserRole.Anonymous),
                       external: bool = False) -> InternalSession:
        return EncryptedOnlySession(self, self.aspace, self.subscription_service, name, user=user, external=external)
