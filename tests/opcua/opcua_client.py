"""The PLC side of the OPC UA tests: an asyncua client with its own application certificate, nothing from
``inspector.outputs`` (what a PLC knows is the endpoint, the node ids in docs/operations.md and its credentials)."""
from __future__ import annotations

import asyncio
import threading
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Coroutine, TypeVar

from asyncua import Client, ua
from asyncua.crypto.cert_gen import dump_private_key_as_pem, generate_private_key, generate_self_signed_app_certificate
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

T = TypeVar("T")
MV = "http://opcfoundation.org/UA/MachineVision"
TIMEOUT_S = 120.0  # per request; generous: the tests share 2 cores with whatever else runs


@dataclass(frozen=True)
class Identity:
    """An application (or user) certificate and its key, as files."""

    uri: str
    cert: Path
    key: Path

    @property
    def der(self) -> bytes:
        return self.cert.read_bytes()

    def trust_on(self, pki: Path) -> None:
        (pki / "trusted" / "certs").mkdir(parents=True, exist_ok=True)
        (pki / "trusted" / "certs" / self.cert.name).write_bytes(self.der)


def make_identity(directory: Path, name: str, uri: str | None = None) -> Identity:
    directory.mkdir(parents=True, exist_ok=True)
    uri = uri or f"urn:test:{name}:{uuid.uuid4().hex[:8]}"
    key = generate_private_key()
    cert = generate_self_signed_app_certificate(key, name, {}, [x509.UniformResourceIdentifier(uri)],
                                                [ExtendedKeyUsageOID.CLIENT_AUTH])
    (directory / f"{name}.der").write_bytes(cert.public_bytes(Encoding.DER))
    (directory / f"{name}.pem").write_bytes(dump_private_key_as_pem(key))
    return Identity(uri, directory / f"{name}.der", directory / f"{name}.pem")


async def connect(url: str, app: Identity | None, user: str | None = None, password: str | None = None,
                  policy: str = "Aes256Sha256RsaPss", user_cert: Identity | None = None) -> Client:
    """Connect and activate a session (SignAndEncrypt with ``policy`` when ``app`` is given, else no security)."""
    client = Client(url, timeout=TIMEOUT_S)
    if app is not None:
        client.application_uri = app.uri
        await client.set_security_string(f"{policy},SignAndEncrypt,{app.cert},{app.key}")
    if user is not None:
        client.set_user(user)
        client.set_password(password or "")
    if user_cert is not None:
        await client.load_client_certificate(str(user_cert.cert))
        await client.load_private_key(str(user_cert.key))
    await client.connect()
    return client


@asynccontextmanager
async def session(url: str, app: Identity | None, **kwargs: Any) -> AsyncIterator[Client]:
    """One connected session, closed on exit. (Not ``async with await connect(...)``: asyncua's ``Client.__aenter__``
    connects again, which logs in twice and leaves the first session open.)"""
    client = await connect(url, app, **kwargs)
    try:
        yield client
    finally:
        await client.disconnect()


async def refusal(url: str, app: Identity | None, **kwargs: Any) -> str:
    """Connect, expecting a refusal; returns the error's name (the test fails if the connection works)."""
    try:
        client = await connect(url, app, **kwargs)
    except (ua.UaError, ua.UaStatusCodeError, OSError, asyncio.TimeoutError, ConnectionError) as exc:
        return type(exc).__name__ + ": " + str(exc)
    await client.disconnect()
    raise AssertionError(f"connected although it should have been refused: {kwargs}")


class EventLog:
    """Subscription handler: every event's fields, in arrival order."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.changes: list[tuple[str, Any]] = []
        self._cond = threading.Condition()

    def event_notification(self, event: Any) -> None:
        with self._cond:
            self.events.append(event.get_event_props_as_fields_dict())
            self._cond.notify_all()

    def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
        with self._cond:
            self.changes.append((node.nodeid.to_string(), value))
            self._cond.notify_all()

    async def wait_for(self, n: int, timeout: float = TIMEOUT_S) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.events) < n:
            if loop.time() > deadline:
                raise AssertionError(f"{len(self.events)} of {n} events within {timeout} s")
            await asyncio.sleep(0.02)
        return self.events


async def eventually(check: Callable[[], Any], timeout: float = TIMEOUT_S) -> None:
    """Wait until ``check()`` (sync, or returning an awaitable) is true; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            raise AssertionError(f"not true within {timeout} s: {getattr(check, '__name__', check)}")
        await asyncio.sleep(0.05)


def values(fields: dict[str, Any]) -> dict[str, Any]:
    """Event fields by plain name (``ResultId``) -> python values."""
    return {name.split(":")[-1].split("/")[-1]: (v.Value if isinstance(v, ua.Variant) else v)
            for name, v in fields.items()}


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]], timeout: float = 300.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro_fn(), timeout)
    return asyncio.run(bounded())
