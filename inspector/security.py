"""Security of the station's network listeners and keys: who may listen where, CURVE keys, the ZAP handler
that authorises client keys, and the socket hardening that keeps floods away from the inspection.

**Exposure rule** (:func:`check_exposure`, one helper for every listener: alarm bus, metrics, web page,
OPC UA). A listener on a loopback address (or a local IPC path) is always fine. A listener reachable from the
network must be secured (CURVE on the bus, TLS + authentication elsewhere) or explicitly allowed in plaintext
(``allow_plaintext: true``), and then every start warns.

**CURVE** (pyzmq/libzmq built-in, rather than TLS in front: the bus is plain ZeroMQ end to end, CURVE needs no
extra daemon, and ZAP gives per-client authorisation by public key). Two modes:

- encryption only: ``authorized_clients_dir`` unset. Any client that knows the *server's public key* can
  connect; traffic is encrypted. A client without the server key cannot complete the handshake: it gets nothing.
- encryption + authentication (the normal set-up for a PLC gateway): ``authorized_clients_dir`` holds the
  public ``*.key`` files of allowed clients. Any other key is refused by the ZAP handler (logged at INFO with
  the key's fingerprint).

Revocation fails closed: a reload (SIGHUP) that cannot read the whole key set (directory gone, malformed or
unsafe key file) is refused, but keys whose files disappeared are revoked anyway; the set only ever shrinks on a
failed reload. :meth:`CurveServer.reload` returns the revoked fingerprints so the bus can cut their live
sessions (it rebinds its sockets: every client reconnects and is re-authenticated).

Keys are the Z85 certificate files ``zmq.auth`` reads (``NAME.key`` public, ``NAME.key_secret`` secret).
Create them with ``python -m inspector.security keygen --dir DIR --name NAME``: written atomically, 0600 from
the start, never through a symbolic link, never over an existing key without ``--force``. A secret key others
can read is refused at start (:func:`engines.signing.require_private_file`, OpenSSH's rule).

**Socket hardening** (:func:`harden_socket`, :class:`ConnectionGuard`): a handshake deadline (an idle TCP
connection that never speaks ZMTP is closed), ZMTP and TCP
keepalives (dead peers are dropped), and a cap on connections per listener and per peer address, so a
connection flood cannot take the file descriptors the frame pipeline needs. (The bus sets each socket's
receive size limit, ``ZMQ_MAXMSGSIZE``, itself: it depends on what that socket receives.)
"""
from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import ipaddress
import logging
import os
import re
import socket
import stat
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import zmq
import zmq.auth
from pydantic import BaseModel, ConfigDict, Field
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from engines.signing import require_private_file
from inspector.logging_json import log_fields
from inspector.resources import RESOURCE_ERRNOS

log = logging.getLogger(__name__)

ZAP_DOMAIN = "rddn"
KEY_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
LOCAL_TRANSPORTS = ("ipc", "inproc")  # not reachable from the network (ipc: file-system permissions apply)


# -- exposure rule ---------------------------------------------------------------------------------------------
class ExposureError(ValueError):
    """A listener would be reachable from the network without authentication; the message says how to fix it."""


def listen_host(address: str) -> str | None:
    """The host part of a ZeroMQ endpoint (``tcp://HOST:PORT``), an ``HOST:PORT`` or a bare host; None for a
    transport that never leaves the machine (``ipc://``, ``inproc://``)."""
    text = address.strip()
    if "://" in text:
        transport, text = text.split("://", 1)
        if transport in LOCAL_TRANSPORTS:
            return None
        if ";" in text:  # tcp://SOURCE;HOST:PORT (connect syntax): the host is what matters
            text = text.rsplit(";", 1)[1]
    if text.startswith("["):  # [::1]:5556
        return text[1:text.index("]")] if "]" in text else text[1:]
    if text.count(":") == 1:
        return text.rsplit(":", 1)[0]
    return text


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 and ``localhost``; a wildcard (``*``, ``0.0.0.0``, ``::``), an interface name or any
    other host is reachable from elsewhere."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def reachable_from_network(address: str) -> bool:
    """True unless ``address`` is loopback or a local transport."""
    host = listen_host(address)
    return host is not None and not is_loopback_host(host)


def check_exposure(key: str, address: str, *, secured: bool, allow_plaintext: bool,
                   allow_key: str, how_to_secure: str) -> str | None:
    """The rule every listener follows. Returns None (fine), or a warning to log at every start (non-loopback,
    allowed in plaintext by ``allow_key``); raises :class:`ExposureError` when a non-loopback listener is
    neither secured nor allowed. ``key`` names the config key in messages."""
    if secured or not reachable_from_network(address):
        return None
    if allow_plaintext:
        return (f"{key}: {address} is reachable from the network WITHOUT authentication or encryption "
                f"({allow_key}: true); anyone on that network can read it. {how_to_secure}")
    raise ExposureError(f"{key}: {address} would be reachable from the network without authentication. "
                        f"{how_to_secure} Or bind 127.0.0.1, or set {allow_key}: true to accept a plaintext listener.")


# -- secrets in text -------------------------------------------------------------------------------------------
_URL_USERINFO = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^:/@\s]*):(?P<pw>\S*)@(?=[^\s@]*(?:\s|$))")
_SECRET_VALUE = re.compile(
    r"(?i)(?P<key>\b[\w.-]*?(?:password|passwd|pwd|passphrase|secret|token))\b(?P<sep>\s*[=:]\s*)"
    r"(?P<val>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&;,'\"]+)")


def redact_secrets(text: str) -> str:
    """``text`` with every password form masked: URL userinfo (``user:pw@``), ``?password=``, libpq DSN
    ``password=...`` (quoted or not), env/YAML style ``PGPASSWORD=...`` / ``token: ...``."""
    text = _URL_USERINFO.sub(lambda m: f"{m.group('head')}:***@", text)
    return _SECRET_VALUE.sub(lambda m: f"{m.group('key')}{m.group('sep')}***", text)


# -- key files -------------------------------------------------------------------------------------------------
class KeyFileError(ValueError):
    """A key file is missing, malformed or unsafe; the message names the file."""


def fingerprint(public_key: bytes) -> str:
    """``SHA256:<base64>`` of a CURVE public key (Z85 text or 32 raw bytes): what logs and reloads name."""
    raw = z85.decode(public_key) if len(public_key) == 40 else public_key
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")


def _valid_z85_key(value: bytes | None, path: Path, what: str) -> bytes:
    try:
        if value is None or len(value) != 40 or len(z85.decode(value)) != 32:
            raise ValueError
    except ValueError:
        raise KeyFileError(f"{path}: {what} is not a 40-character Z85 CURVE key") from None
    return value


def _read_certificate(path: Path) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError) as exc:
        raise KeyFileError(f"cannot read CURVE certificate {path}: {exc}") from exc
    return _valid_z85_key(public, path, "public-key"), (_valid_z85_key(secret, path, "secret-key") if secret else None)


def load_keypair(secret_file: Path) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` certificate; refused when others could read it."""
    path = Path(secret_file)
    if not path.is_file():
        raise KeyFileError(f"CURVE secret key file not found: {path}")
    public, secret = _read_certificate(path)
    if not secret:
        raise KeyFileError(f"{path} holds no secret key (did you pass the public .key instead of .key_secret?)")
    try:
        require_private_file(path, "CURVE secret key")
    except ValueError as exc:
        raise KeyFileError(str(exc)) from None
    return public, secret


def load_public_key(key_file: Path) -> bytes:
    """The public key from a ``.key`` or ``.key_secret`` certificate."""
    path = Path(key_file)
    if not path.is_file():
        raise KeyFileError(f"CURVE public key file not found: {path}")
    return _read_certificate(path)[0]


def _certificate_text(kind: str, public: bytes, secret: bytes | None = None) -> bytes:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    lines = [f"#   ****  Generated on {now} by rddn-inspector  ****", f"#   ZeroMQ CURVE {kind} Certificate"]
    lines += ["#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions."] if secret else [
        "#   Copy it to the server's authorized_clients_dir (or give it to the clients, for a server key)."]
    lines += ["", "metadata", "curve", f'    public-key = "{public.decode()}"']
    if secret:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return ("\n".join(lines) + "\n").encode()


def generate_certificates(out_dir: Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public, 0644) and ``NAME.key_secret`` (0600) into ``out_dir`` (created 0700).

    Each file is written to a temporary file created with ``O_EXCL | O_NOFOLLOW`` under a 077 umask (the
    secret is never readable by others, not even for a moment), synced, then linked into place: ``link`` fails
    on any existing name, a symbolic link included, so nothing is overwritten or written through a link unless
    ``force`` (then ``rename`` replaces the name itself, never a link's target).
    """
    if not KEY_NAME_RE.fullmatch(name):
        raise KeyFileError(f"key name {name!r}: use letters, digits, '_', '.', '-' (not starting with '.')")
    out_dir = Path(out_dir)
    old_umask = os.umask(0o077)
    try:
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            dir_fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as exc:
            raise KeyFileError(f"{out_dir}: not a usable key directory ({exc.strerror}; symbolic links are "
                               "refused)") from None
        try:
            public, secret = zmq.curve_keypair()
            targets = [(f"{name}.key_secret", _certificate_text("**Secret**", public, secret), 0o600),
                       (f"{name}.key", _certificate_text("Public", public), 0o644)]
            if not force:
                for target, _, _ in targets:
                    try:
                        os.lstat(target, dir_fd=dir_fd)
                    except FileNotFoundError:
                        continue
                    raise KeyFileError(f"{out_dir / target} already exists; keygen never overwrites a key "
                                       "(pass --force to replace it)")
            for target, data, mode in targets:
                _install(dir_fd, target, data, mode, force)
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        os.umask(old_umask)
    return out_dir / f"{name}.key", out_dir / f"{name}.key_secret"


def _install(dir_fd: int, target: str, data: bytes, mode: int, force: bool) -> None:
    tmp = f".{target}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        if force:
            os.replace(tmp, target, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        else:
            try:
                os.link(tmp, target, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            except FileExistsError:
                raise KeyFileError(f"{target} appeared while writing; not overwritten") from None
    finally:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass


def read_client_keys(directory: Path) -> tuple[dict[bytes, str], list[str]]:
    """The authorised client keys (Z85 public key -> file name) in ``directory/*.key``, and every problem found.

    A problem is anything that makes the set uncertain: the directory missing, or writable by group/others
    (anyone could add a key: OpenSSH's StrictModes), a key file that is not a regular file, is writable by
    others, or does not hold a valid key. Callers must not *add* keys from a set with problems.
    """
    directory = Path(directory)
    keys: dict[bytes, str] = {}
    problems: list[str] = []
    try:
        st = directory.stat()
    except OSError as exc:
        return keys, [f"{directory}: cannot read the authorised client keys ({exc.strerror or exc})"]
    if not stat.S_ISDIR(st.st_mode):
        return keys, [f"{directory}: not a directory"]
    if st.st_mode & 0o022:
        problems.append(f"{directory}: writable by group/others (chmod go-w): anyone could authorise a key")
    try:
        entries = sorted(directory.glob("*.key"))
    except OSError as exc:
        return keys, [f"{directory}: cannot list ({exc.strerror or exc})"]
    for path in entries:
        try:
            fst = path.stat()
            if not stat.S_ISREG(fst.st_mode):
                raise KeyFileError(f"{path}: not a regular file")
            if fst.st_mode & 0o022:
                raise KeyFileError(f"{path}: writable by group/others (chmod go-w)")
            keys[_read_certificate(path)[0]] = path.name
        except (KeyFileError, OSError) as exc:
            problems.append(str(exc))
    return keys, problems


# -- CURVE server and ZAP --------------------------------------------------------------------------------------
class CurveSettings(BaseModel):
    """The ``bus.curve`` section of a station config (embedded by ``inspector.config``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    server_secret_key: Path | None = None  # NAME.key_secret of the daemon (holds both halves of the key pair)
    authorized_clients_dir: Path | None = None  # directory of allowed clients' public NAME.key files

    def require_server_key(self) -> Path:
        if self.server_secret_key is None:
            raise ValueError("bus.curve.server_secret_key: required when bus.curve.enabled is true")
        return self.server_secret_key


class _Throttle:
    """At most one log line per key per ``period_s`` (a flood of refused handshakes must not flood the journal);
    counts what it swallowed so the next line says so."""

    def __init__(self, period_s: float = 60.0, max_keys: int = 1024) -> None:
        self.period_s = period_s
        self.max_keys = max_keys
        self._last: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> int | None:
        """None: stay quiet; else the number of suppressed events since the last line for ``key``."""
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._last.get(key, (-1e18, 0))
            if now - last < self.period_s:
                self._last[key] = (last, suppressed + 1)
                return None
            if len(self._last) >= self.max_keys:
                self._last.clear()
            self._last[key] = (now, 0)
            return suppressed


class _Authenticator(ThreadAuthenticator):
    """pyzmq's ZAP handler thread; a CURVE client's User-Id (``frame.get("User-Id")``) is its key fingerprint."""

    def curve_user_id(self, client_public_key: bytes) -> str:
        return fingerprint(client_public_key)


class CurveServer:
    """Owns the ZAP handler of one ZeroMQ context and secures that context's server sockets.

    Call :meth:`secure` on every bound socket (PUB, ROUTER replay) *before* ``bind``. With CURVE disabled every
    method is a no-op, so the daemon calls them unconditionally. The authorised keys are checked by
    :meth:`callback` at every handshake, against the set :meth:`reload` maintains.
    """

    def __init__(self, context: zmq.Context, settings: CurveSettings) -> None:
        self.settings = settings
        self._context = context
        self._auth: _Authenticator | None = None
        self._public = self._secret = b""
        self._allowed: dict[bytes, str] = {}
        self._refusals = _Throttle()
        self.refused = 0
        if settings.enabled:
            self._public, self._secret = load_keypair(settings.require_server_key())
            clients = settings.authorized_clients_dir
            if clients is not None:
                keys, problems = read_client_keys(clients)
                if problems:  # at start there is no previous state to keep: refuse to start
                    raise KeyFileError("bus.curve.authorized_clients_dir: " + "; ".join(problems))
                if not keys:
                    log.warning("bus.curve.authorized_clients_dir %s has no *.key files: every client is refused",
                                clients)
                self._allowed = keys

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    @property
    def authenticates(self) -> bool:
        return self.enabled and self.settings.authorized_clients_dir is not None

    @property
    def public_key(self) -> bytes:
        return self._public

    def authorised_fingerprints(self) -> list[str]:
        return sorted(fingerprint(k) for k in self._allowed)

    def is_authorised(self, user_id: str) -> bool:
        """For a request's ``User-Id`` (the fingerprint set by the ZAP handler): still authorised now?"""
        if not self.authenticates:
            return True
        return user_id in {fingerprint(k) for k in self._allowed}

    def start(self) -> "CurveServer":
        if not self.enabled or self._auth is not None:
            return self
        self._auth = _Authenticator(self._context, log=logging.getLogger("inspector.zap"))
        self._auth.start()
        if self.authenticates:
            self._auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=self)
        else:
            self._auth.configure_curve(domain=ZAP_DOMAIN, location=zmq.auth.CURVE_ALLOW_ANY)
        return self

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP credentials check (pyzmq calls it on its handler thread with the client's Z85 key)."""
        name = self._allowed.get(key)  # one dict read: atomic against reload() swapping the dict
        if name is None:
            self.refused += 1
            fp = fingerprint(key)
            suppressed = self._refusals.allow(fp)
            if suppressed is not None:
                log.info("CURVE client refused: key not authorised", **log_fields(
                    fingerprint=fp, domain=domain, suppressed_since_last=suppressed))
        return name is not None

    def reload(self) -> set[str]:
        """Re-read the authorised client keys (SIGHUP); returns the fingerprints revoked by this reload.

        A complete, readable key set replaces the old one. A set with problems is refused, and the stricter of
        the two states is kept: old keys whose files are gone are revoked, no key is added.
        """
        if not self.authenticates:
            return set()
        assert self.settings.authorized_clients_dir is not None
        keys, problems = read_client_keys(self.settings.authorized_clients_dir)
        old = self._allowed
        if problems:
            new = {k: v for k, v in old.items() if k in keys}
            log.error("CURVE key reload refused: the authorised key set cannot be read completely; no key added, "
                      "keys whose files are gone are revoked", **log_fields(
                          problems=problems, kept=len(new)))
        else:
            new = keys
        revoked = {fingerprint(k) for k in old if k not in new}
        added = {fingerprint(k) for k in new if k not in old}
        self._allowed = new
        for fp in sorted(revoked):
            log.info("CURVE client key revoked", **log_fields(fingerprint=fp))
        for fp in sorted(added):
            log.info("CURVE client key authorised", **log_fields(fingerprint=fp))
        return revoked

    def secure(self, socket: zmq.Socket) -> None:
        if not self.enabled:
            return
        socket.curve_secretkey = self._secret
        socket.curve_publickey = self._public
        socket.curve_server = True
        socket.zap_domain = ZAP_DOMAIN.encode()

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


def secure_client(socket: zmq.Socket, server_public_key: Path, client_secret_key: Path | None = None) -> None:
    """Configure a subscriber/replay client before ``connect``.

    CURVE clients always need a key pair; without ``client_secret_key`` an ephemeral one is generated (enough
    for encryption-only servers, refused by servers that authenticate clients).
    """
    socket.curve_serverkey = load_public_key(server_public_key)
    if client_secret_key is not None:
        public, secret = load_keypair(client_secret_key)
    else:
        public, secret = zmq.curve_keypair()
    socket.curve_publickey = public
    socket.curve_secretkey = secret


# -- socket hardening ------------------------------------------------------------------------------------------
class ConnectionLimits(BaseModel):
    """The ``bus.connections`` section: what one peer or a flood of connections may cost the daemon."""

    model_config = ConfigDict(extra="forbid")

    max_connections: int = Field(256, ge=1, le=65536)  # per listening socket (PUB, replay)
    max_per_peer: int = Field(32, ge=1)  # per remote address, so one host cannot take every slot
    handshake_timeout_s: float = Field(5.0, gt=0)  # TCP connected but no ZMTP/CURVE handshake: closed
    keepalive_s: float = Field(10.0, gt=0)  # ZMTP ping interval; a peer silent for 3 intervals is dropped


def harden_socket(sock: zmq.Socket, limits: ConnectionLimits) -> None:
    """Set the per-socket limits (before ``bind``): handshake deadline, ZMTP and TCP keepalives. (The receive
    size limit, ``ZMQ_MAXMSGSIZE``, depends on what the socket receives: the bus sets it per socket.)"""
    sock.setsockopt(zmq.HANDSHAKE_IVL, int(limits.handshake_timeout_s * 1000))
    sock.setsockopt(zmq.HEARTBEAT_IVL, int(limits.keepalive_s * 1000))
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(3 * limits.keepalive_s * 1000))
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, max(1, int(limits.keepalive_s * 6)))
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, max(1, int(limits.keepalive_s)))
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)


class ConnectionGuard:
    """Caps the TCP connections of one listening ZeroMQ socket (libzmq has no such option).

    A socket monitor reports every accepted connection with its file descriptor; past ``max_connections`` (or
    ``max_per_peer`` for one remote address) the guard shuts that connection down at once (``shutdown(2)``:
    libzmq then closes it and frees the descriptor; the guard never closes a descriptor it does not own). It
    checks the descriptor is still a TCP connection to this listener's port first, so a number reused in the
    meantime is left alone. Together with the handshake deadline this bounds the descriptors a flood can hold.

    Create it right after the socket (on the socket's thread); call :meth:`bound` after ``bind`` and
    :meth:`reset` after a rebind (libzmq drops those sessions without disconnect events).
    """

    EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_ACCEPT_FAILED

    def __init__(self, sock: zmq.Socket, limits: ConnectionLimits, name: str) -> None:
        self.limits = limits
        self.name = name
        self._monitor = sock.get_monitor_socket(self.EVENTS)
        self._monitor.linger = 0
        self._port: int | None = None
        self._conns: dict[int, str] = {}
        self._per_peer: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._throttle = _Throttle(10.0)
        self.shed = 0
        self.accept_failures = 0
        self.last_accept_failure: tuple[float, int] | None = None  # (monotonic time, errno)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"conn-guard-{name}", daemon=True)
        self._thread.start()

    def bound(self, endpoint: str) -> None:
        host_port = endpoint.rsplit(":", 1)
        self._port = int(host_port[1]) if len(host_port) == 2 and host_port[1].isdigit() else None

    def reset(self) -> None:
        with self._lock:
            self._conns.clear()
            self._per_peer.clear()

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def resource_problem(self, within_s: float = 10.0) -> str | None:
        """A text for health when accepting failed for lack of descriptors in the last ``within_s``."""
        failure = self.last_accept_failure
        if failure is None or time.monotonic() - failure[0] > within_s or failure[1] not in RESOURCE_ERRNOS:
            return None
        return f"{self.name}: accepting connections failed: {os.strerror(failure[1])}"

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._monitor.poll(200):
                    continue
                event = recv_monitor_message(self._monitor)
                kind, value = event["event"], int(event["value"])
                if kind == zmq.EVENT_ACCEPTED:
                    self._accepted(value)
                elif kind == zmq.EVENT_DISCONNECTED:
                    with self._lock:
                        peer = self._conns.pop(value, None)
                        if peer is not None:
                            self._per_peer[peer] -= 1
                elif kind == zmq.EVENT_ACCEPT_FAILED:
                    self.accept_failures += 1
                    self.last_accept_failure = (time.monotonic(), value)
                    if self._throttle.allow("accept") is not None:
                        log.error("bus listener cannot accept connections", **log_fields(
                            socket=self.name, error=os.strerror(value)))
        except zmq.ZMQError:  # context terminated under us: the socket is gone
            pass
        finally:
            self._monitor.close(linger=0)

    def _accepted(self, fd: int) -> None:
        peer = self._peer(fd)
        if peer is None:
            return  # already gone (or the number now names something else): nothing to count
        with self._lock:
            old = self._conns.pop(fd, None)  # a descriptor number reused before its disconnect event was read
            if old is not None:
                self._per_peer[old] -= 1
            over = len(self._conns) >= self.limits.max_connections
            over_peer = self._per_peer[peer] >= self.limits.max_per_peer
            if not (over or over_peer):
                self._conns[fd] = peer
                self._per_peer[peer] += 1
                return
        if self._shutdown(fd):
            self.shed += 1
            suppressed = self._throttle.allow("shed")
            if suppressed is not None:
                log.warning("bus connection refused: connection cap reached", **log_fields(
                    socket=self.name, peer=peer, cap="per_peer" if over_peer else "total",
                    max_connections=self.limits.max_connections, max_per_peer=self.limits.max_per_peer,
                    refused_since_last=suppressed))

    def _peer(self, fd: int) -> str | None:
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            return None
        try:
            if sock.type != socket.SOCK_STREAM or self._port is None or sock.getsockname()[1] != self._port:
                return None
            return str(sock.getpeername()[0])
        except OSError:
            return None
        finally:
            sock.detach()  # never close: libzmq owns the descriptor

    def _shutdown(self, fd: int) -> bool:
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            return False
        try:
            if sock.type != socket.SOCK_STREAM or sock.getsockname()[1] != self._port:
                return False
            sock.getpeername()  # a connection, not the listener
            sock.shutdown(socket.SHUT_RDWR)
            return True
        except OSError:
            return False
        finally:
            sock.detach()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)


# -- command line ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``python -m inspector.security keygen --dir DIR --name NAME [--force]``: create a CURVE certificate pair."""
    parser = argparse.ArgumentParser(prog="python -m inspector.security", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    keygen = sub.add_parser("keygen", help="write NAME.key (public) and NAME.key_secret (0600) into DIR")
    keygen.add_argument("--dir", type=Path, required=True)
    keygen.add_argument("--name", required=True)
    keygen.add_argument("--force", action="store_true", help="replace an existing key pair of that name")
    args = parser.parse_args(argv)
    try:
        public, secret = generate_certificates(args.dir, args.name, force=args.force)
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"public key: {public}\nsecret key: {secret}\nfingerprint: {fingerprint(load_public_key(public))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
