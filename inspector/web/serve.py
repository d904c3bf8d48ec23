"""``inspector serve``: check where the page may listen, then run it under uvicorn.

Listening rule (the project's: nothing beyond loopback unauthenticated): loopback is always allowed; any other
address needs ``web.users`` or ``web.tokens`` (every request then logs in) and either TLS
(``web.tls_certfile``/``web.tls_keyfile``) or ``web.allow_plaintext: true``, warned at every start.
"""
from __future__ import annotations

import logging
import os
import socket
import threading

from inspector.config import ConfigError, StationConfig
from inspector.security import is_loopback_host

log = logging.getLogger("inspector.web")


def check_listen(cfg: StationConfig, host: str) -> tuple[bool, str | None]:
    """(login required, warning to log) for listening on ``host``; ConfigError when it is not allowed."""
    web = cfg.web
    if is_loopback_host(host):
        return bool(web.users), None
    if not web.users and not web.tokens:
        raise ConfigError(f"web.host: {host} is reachable from the network; the review page then requires "
                          "logins: add web.users (inspector serve --hash-password) or web.tokens, or bind 127.0.0.1")
    if web.tls:
        return True, None
    if not web.allow_plaintext:
        raise ConfigError(f"web.host: {host} without TLS would send passwords and session cookies in clear text: "
                          "set web.tls_certfile and web.tls_keyfile, or web.allow_plaintext: true on a closed network")
    return True, (f"web: serving {host} over plain HTTP (web.allow_plaintext: true); logins and reviews can be "
                  "read by anyone on that network. Set web.tls_certfile/web.tls_keyfile.")


def build_server(cfg: StationConfig, host: str | None = None, port: int | None = None):
    """(uvicorn server, listening socket, URL) after the listening rule; nothing runs yet."""
    import uvicorn

    from inspector.web.app import create_app

    host = host or cfg.web.host
    port = cfg.web.port if port is None else port
    login_required, warning = check_listen(cfg, host)
    if warning:
        log.warning(warning)
        print(f"warning: {warning}", flush=True)
    app = create_app(cfg, login_required=login_required)
    config = uvicorn.Config(app, log_config=None, access_log=False, server_header=False,
                            limit_concurrency=cfg.web.max_connections, timeout_keep_alive=5,
                            timeout_graceful_shutdown=3, h11_max_incomplete_event_size=16 * 1024,
                            ssl_certfile=str(cfg.web.tls_certfile) if cfg.web.tls_certfile else None,
                            ssl_keyfile=str(cfg.web.tls_keyfile) if cfg.web.tls_keyfile else None)
    sock = listen_socket(host, port)
    scheme = "https" if cfg.web.tls else "http"
    shown = f"[{host}]" if ":" in host else host
    url = f"{scheme}://{shown}:{sock.getsockname()[1]}/"
    log.info("review page listening", extra={"fields": {"url": url, "login_required": login_required}})
    return uvicorn.Server(config), sock, url


def serve(cfg: StationConfig, host: str | None = None, port: int | None = None, *, on_ready=None) -> int:
    """Run the page in this (main) thread until SIGINT/SIGTERM. ``on_ready(url)`` is called once it listens."""
    server, sock, url = build_server(cfg, host, port)
    if cfg.web.nice:
        try:
            os.nice(cfg.web.nice)
        except OSError:
            log.warning("cannot lower the review page's CPU priority (web.nice)")
    if on_ready is not None:
        on_ready(url)
    server.run(sockets=[sock])
    return 0


class BackgroundServer:
    """The page on a thread of this process (``inspector demo`` runs it beside the daemon)."""

    def __init__(self, cfg: StationConfig, host: str | None = None, port: int | None = None) -> None:
        self.server, self._sock, self.url = build_server(cfg, host, port)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]},
                                        name="review-page", daemon=True)

    def start(self) -> "BackgroundServer":
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()


def listen_socket(host: str, port: int) -> socket.socket:
    """The bound, listening socket (port 0 picks a free one; the URL is known before uvicorn starts)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"review page: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
