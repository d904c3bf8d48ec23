"""The ``web`` section of a station config: where the review page listens and who may use it.

Imported by ``inspector.config`` (pydantic only), so the daemon's base install parses it without the ``web`` extra.

Secure by default: the page binds to loopback, where an operator at the station PC reviews as ``local`` without a
login (unless users are configured). Any other address needs at least one user or token (every request then
logs in) and TLS (``tls_certfile``/``tls_keyfile``), or ``allow_plaintext: true`` to accept logins over plain
HTTP on a closed plant network (warned at every start). Passwords are stored as scrypt hashes, API tokens as
SHA-256 digests (``inspector serve --hash-password`` / ``--new-token`` print them).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Role = Literal["viewer", "reviewer"]
NAME_PATTERN = r"^[A-Za-z0-9_.@-]{1,64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WebUser(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    role: Role = "viewer"
    password_hash: str  # scrypt$N$r$p$salt$hash (``inspector serve --hash-password``)

    @field_validator("password_hash")
    @classmethod
    def _scrypt_format(cls, value: str) -> str:
        if not re.fullmatch(r"scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+", value):
            raise ValueError("not a password hash from `inspector serve --hash-password` (scrypt$N$r$p$salt$hash)")
        return value


class WebToken(_Strict):
    """A bearer token for scripts (MES, a dashboard): ``Authorization: Bearer <token>``; only its digest here."""

    name: str = Field(pattern=NAME_PATTERN)
    role: Role = "viewer"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class WebConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    tls_certfile: Path | None = None  # PEM; with tls_keyfile the page is served over HTTPS
    tls_keyfile: Path | None = None
    allow_plaintext: bool = False  # non-loopback without TLS: logins cross the network in clear text
    allowed_hosts: list[str] = []  # extra Host header names (this PC's DNS names); loopback names always pass
    users: list[WebUser] = []
    tokens: list[WebToken] = []
    session_hours: float = Field(12.0, gt=0, le=24 * 30)
    cookie_secure: bool = False  # set when an HTTPS reverse proxy serves the page (automatic with tls_*)
    max_body_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    max_connections: int = Field(64, ge=4, le=4096)  # concurrent HTTP connections (uvicorn limit_concurrency)
    max_live_clients: int = Field(16, ge=1, le=1024)  # open live-view streams
    render_workers: int = Field(2, ge=1, le=16)  # images decoded/cropped at once (the daemon's CPU comes first)
    live: Literal["auto", "bus", "poll"] = "auto"  # auto: the bus when it is this station's, else poll the DB
    poll_interval_s: float = Field(1.0, gt=0, le=60)
    nice: int = Field(5, ge=0, le=19)  # raise the server's niceness so inspection always wins the CPU

    @model_validator(mode="after")
    def _tls_pair(self) -> "WebConfig":
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("web.tls_certfile and web.tls_keyfile go together")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_certfile is not None

    @field_validator("users")
    @classmethod
    def _unique_users(cls, value: list[WebUser]) -> list[WebUser]:
        names = [u.name for u in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate user name(s) {dupes}")
        return value
