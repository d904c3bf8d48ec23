"""Request guards of the review page: body size limit, cross-site checks, response security headers.

Pure ASGI middleware (no buffering of bodies: a request larger than ``max_body_bytes`` is refused from its
``Content-Length`` before anything is read, or cut off as soon as a chunked body passes the limit).
"""
from __future__ import annotations

import json
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
       "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


async def _reply(send: Send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """``allowed_hosts`` None: any Host header (logins required: a rebound name gets no session cookie)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, allowed_hosts: set[str] | None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = host_name(headers.get("host", ""))
        if self.allowed_hosts is not None and host not in self.allowed_hosts:
            # DNS rebinding: a page on evil.example resolved to 127.0.0.1 still says Host: evil.example
            await _reply(send, 421, f"unknown host {host!r}; add it to web.allowed_hosts")
            return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await _reply(send, 413, f"request body larger than {self.max_body_bytes} bytes")
            return
        received = 0
        started = refused = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # answer 413 now and tell the app the client went away: nothing more of the body is read
                    if not started and not refused:
                        refused = True
                        await _reply(send, 413, f"request body larger than {self.max_body_bytes} bytes")
                    return {"type": "http.disconnect"}
            return message

        async def secure_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 went out already
            if message["type"] == "http.response.start":
                started = True
                present = {k.lower() for k, _ in message.get("headers", [])}
                message = {**message, "headers": [*message.get("headers", []),
                                                  *[h for h in SECURITY_HEADERS if h[0] not in present]]}
            await send(message)

        try:
            await self.app(scope, limited_receive, secure_send)
        except Exception:
            if not refused:
                raise  # a disconnect the app raises after the 413 is expected; anything else is a real error


def host_name(host_header: str) -> str:
    """The host part of a Host header (``[::1]:8080`` -> ``::1``, ``a.b:80`` -> ``a.b``)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.index("]")] if "]" in host else host[1:]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def same_origin(origin: str | None, host_header: str | None) -> bool:
    """A browser's ``Origin`` (when sent) names this page: same host and port as the ``Host`` it asked."""
    if origin is None:
        return True  # non-browser clients and same-origin GET navigations may omit it; the CSRF token decides
    if origin == "null" or not host_header:
        return False
    parts = urlsplit(origin)
    return parts.netloc.lower() == host_header.strip().lower()


def cross_site(fetch_site: str | None) -> bool:
    """``Sec-Fetch-Site`` (sent by current browsers): anything but same-origin or a typed URL is cross-site."""
    return fetch_site is not None and fetch_site not in ("same-origin", "none")
