"""CURVE encryption and client-key authentication for the alarm bus (PUB and replay sockets).

Why CURVE (pyzmq/libzmq built-in) rather than TLS in front: the bus is plain ZeroMQ end to end, CURVE needs no
extra daemon, and ZAP gives per-client authorisation by public key. Two modes:

- encryption only: ``authorized_clients_dir`` unset. Any client that knows the *server's public key* can
  connect; traffic is encrypted. A client without the server key cannot complete the handshake: it gets nothing.
- encryption + authentication: ``authorized_clients_dir`` holds the public ``*.key`` files of allowed clients
  (PLC gateways, ``inspector alarms tail``). Any other client is refused by the ZAP handler.

Keys are the Z85 certificate files written by ``zmq.auth.create_certificates`` (``NAME.key`` public,
``NAME.key_secret`` secret). Create them with ``python -m inspector.security keygen --dir DIR --name NAME``.
"""
from __future__ import annotations

import argparse
import logging
import stat
import sys
from pathlib import Path

import zmq
import zmq.auth
from pydantic import BaseModel, ConfigDict
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger(__name__)

ZAP_DOMAIN = "rddn"


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


class KeyFileError(ValueError):
    """A key file is missing or malformed; the message names the file."""


def generate_certificates(out_dir: Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public, shareable) and ``NAME.key_secret`` (mode 0600) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(out_dir), name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


def load_keypair(secret_file: Path) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` certificate; warns when others can read it."""
    path = Path(secret_file)
    if not path.is_file():
        raise KeyFileError(f"CURVE secret key file not found: {path}")
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("CURVE secret key %s is readable by group/others; chmod 600 it", path)
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError) as exc:
        raise KeyFileError(f"cannot read CURVE certificate {path}: {exc}") from exc
    if not secret:
        raise KeyFileError(f"{path} holds no secret key (did you pass the public .key instead of .key_secret?)")
    return public, secret


def load_public_key(key_file: Path) -> bytes:
    """The public key from a ``.key`` or ``.key_secret`` certificate."""
    path = Path(key_file)
    if not path.is_file():
        raise KeyFileError(f"CURVE public key file not found: {path}")
    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError) as exc:
        raise KeyFileError(f"cannot read CURVE certificate {path}: {exc}") from exc
    return public


class CurveServer:
    """Owns the ZAP authenticator of one ZeroMQ context and secures that context's server sockets.

    Call :meth:`secure` on every bound socket (PUB, ROUTER replay) *before* ``bind``. With CURVE disabled every
    method is a no-op, so the daemon calls them unconditionally.
    """

    def __init__(self, context: zmq.Context, settings: CurveSettings) -> None:
        self.settings = settings
        self._context = context
        self._auth: ThreadAuthenticator | None = None
        self._public = self._secret = b""
        if settings.enabled:
            self._public, self._secret = load_keypair(settings.require_server_key())
            clients = settings.authorized_clients_dir
            if clients is not None and not Path(clients).is_dir():
                raise KeyFileError(f"bus.curve.authorized_clients_dir is not a directory: {clients}")

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    @property
    def public_key(self) -> bytes:
        return self._public

    def start(self) -> "CurveServer":
        if not self.enabled or self._auth is not None:
            return self
        self._auth = ThreadAuthenticator(self._context, log=logging.getLogger("inspector.zap"))
        self._auth.start()
        self._configure()
        return self

    def _configure(self) -> None:
        assert self._auth is not None
        clients = self.settings.authorized_clients_dir
        if clients is None:
            self._auth.configure_curve(domain=ZAP_DOMAIN, location=zmq.auth.CURVE_ALLOW_ANY)
        else:
            keys = sorted(Path(clients).glob("*.key"))
            if not keys:
                log.warning("bus.curve.authorized_clients_dir %s has no *.key files: every client is refused", clients)
            self._auth.configure_curve(domain=ZAP_DOMAIN, location=str(clients))

    def reload(self) -> None:
        """Re-read the authorised client keys (SIGHUP): revoke a gateway by deleting its ``.key`` file."""
        if self._auth is not None:
            self._configure()

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


def main(argv: list[str] | None = None) -> int:
    """``python -m inspector.security keygen --dir DIR --name NAME``: create a CURVE certificate pair."""
    parser = argparse.ArgumentParser(prog="python -m inspector.security", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    keygen = sub.add_parser("keygen", help="write NAME.key (public) and NAME.key_secret (0600) into DIR")
    keygen.add_argument("--dir", type=Path, required=True)
    keygen.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    if args.command == "keygen":
        public, secret = generate_certificates(args.dir, args.name)
        print(f"public key: {public}\nsecret key: {secret}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
