"""Who is asking: password logins (scrypt hashes), bearer tokens (SHA-256 digests), server-side sessions, CSRF.

- Loopback without configured users: everyone is ``local`` with the reviewer role (the operator at the station
  PC, like the CLI). Configured users, or a non-loopback bind, require a login for every request.
- Sessions live in this process (a random 256-bit id in an HttpOnly, SameSite=Strict cookie); a restart or
  logout ends them. Each session has its own CSRF token; anonymous loopback clients get a CSRF cookie.
- Every state-changing request must carry the CSRF token in ``X-CSRF-Token`` (or the login form's field) and,
  when the browser sends them, an ``Origin`` matching the page and ``Sec-Fetch-Site: same-origin``. Bearer
  requests carry no ambient credential, so they need no CSRF token.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from inspector.web.config import WebConfig

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SESSION_COOKIE = "rddn_session"
CSRF_COOKIE = "rddn_csrf"
CSRF_HEADER = "x-csrf-token"
MAX_SESSIONS = 1000
LOGIN_FAILURE_DELAY_S = 0.5
LOGIN_SLOTS = 2  # password checks at once
LOGIN_WAIT_S = 5.0


class LoginBusy(RuntimeError):
    """Every login slot is taken (answered 429)."""


def hash_password(password: str, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """``scrypt$N$r$p$salt$hash`` (stdlib hashlib.scrypt, 16-byte salt, 32-byte key)."""
    if not password:
        raise ValueError("empty password")
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=128 * 1024 * 1024, dklen=32)
    return f"scrypt${n}${r}${p}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, key = stored.split("$")
        expected = base64.b64decode(key)
        actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                                maxmem=128 * 1024 * 1024, dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def new_token() -> tuple[str, str]:
    """(token to give the client, its SHA-256 hex digest for the config)."""
    token = secrets.token_urlsafe(32)
    return token, token_digest(token)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    name: str
    role: str  # viewer | reviewer
    via: str  # session | token | local

    @property
    def can_review(self) -> bool:
        return self.role == "reviewer"


LOCAL = Principal("local", "reviewer", "local")


@dataclass
class Session:
    principal: Principal
    csrf: str
    expires: float


class Authenticator:
    def __init__(self, cfg: WebConfig, login_required: bool) -> None:
        self.cfg = cfg
        self.login_required = login_required or bool(cfg.users)
        self._users = {u.name: u for u in cfg.users}
        self._tokens = {t.sha256: t for t in cfg.tokens}
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._dummy_hash = hash_password(secrets.token_urlsafe(8))  # equal work for unknown user names
        self._login_slots = threading.BoundedSemaphore(LOGIN_SLOTS)

    # -- logins ----------------------------------------------------------------------------------------------
    def login(self, name: str, password: str) -> tuple[str, Session] | None:
        """A new session, or None for a wrong name/password. Raises LoginBusy when LOGIN_SLOTS hashes are
        being checked already (each scrypt check takes 16 MiB and ~50 ms of CPU: a flood must not add up)."""
        if not self._login_slots.acquire(timeout=LOGIN_WAIT_S):
            raise LoginBusy("too many logins at once; try again")
        try:
            user = self._users.get(name)
            ok = verify_password(password, user.password_hash if user else self._dummy_hash) and user is not None
        finally:
            self._login_slots.release()
        if not ok:
            time.sleep(LOGIN_FAILURE_DELAY_S)  # slows guessing; scrypt already costs ~50 ms per try
            return None
        sid = secrets.token_urlsafe(32)
        session = Session(Principal(user.name, user.role, "session"), secrets.token_urlsafe(32),
                          time.time() + self.cfg.session_hours * 3600)
        with self._lock:
            self._expire()
            if len(self._sessions) >= MAX_SESSIONS:
                oldest = min(self._sessions, key=lambda k: self._sessions[k].expires)
                del self._sessions[oldest]
            self._sessions[sid] = session
        return sid, session

    def logout(self, sid: str | None) -> None:
        if sid:
            with self._lock:
                self._sessions.pop(sid, None)

    def _expire(self) -> None:
        now = time.time()
        for key in [k for k, s in self._sessions.items() if s.expires < now]:
            del self._sessions[key]

    # -- requests --------------------------------------------------------------------------------------------
    def session(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            session = self._sessions.get(sid)
            if session is not None and session.expires < time.time():
                del self._sessions[sid]
                return None
            return session

    def bearer(self, authorization: str | None) -> Principal | None:
        if not authorization or not authorization.lower().startswith("bearer "):
            return None
        token = self._tokens.get(token_digest(authorization[7:].strip()))
        return Principal(token.name, token.role, "token") if token else None


def csrf_matches(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))
