"""OPC UA security as a PLC (or an intruder) meets it: SignAndEncrypt only, a trust list of client applications
with the usual rejected/ -> trusted/ exchange, users by password hash or certificate, anonymous refused, read-only,
and the server's own certificate generated once with a private key nobody else can read."""
from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any, Iterator

import pytest
from asyncua import Client, ua
from asyncua.common.utils import create_nonce
from cryptography import x509

from inspector.config import ConfigError, parse_station_config
from inspector.outputs import opcua as opcua_module
from inspector.outputs.opcua_security import (LoginLimiter, StationUserManager, certificate_uris,
                                              ensure_server_certificate, hash_password, thumbprint, verify_password)
from opcua_client import Identity, connect, eventually, make_identity, refusal, run, session
from station_side import Station

PASSWORD = "correct horse battery staple"


class Secured(Station):
    """A station with a password user ``plc`` and a certificate user ``mes`` (its own X.509 user certificate)."""

    def __init__(self, root: Path, **opcua: Any) -> None:
        self.mes = make_identity(root / "users", "mes-user")
        settings: dict[str, Any] = {"users": {"plc": hash_password(PASSWORD)},
                                    "certificate_users": {"mes": str(self.mes.cert)}}
        super().__init__(root, **{**settings, **opcua})
        self.pki = self.cfg.opcua_pki_dir


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    s = Secured(tmp_path_factory.mktemp("secured")).start()
    yield s
    s.stop()


async def reads(client: Client) -> str:
    return await client.get_node(ua.NodeId("VisionSystem.Session", 1)).read_value()


def test_password_user_on_each_policy(secured: Secured) -> None:
    async def scenario() -> None:
        for policy in ("Aes256Sha256RsaPss", "Aes128Sha256RsaOaep", "Basic256Sha256"):
            async with session(secured.url, secured.plc, user="plc", password=PASSWORD, policy=policy) as c:
                assert await reads(c) == secured.db.session.id
    run(scenario)


def test_refused_without_credentials_or_with_a_wrong_password(secured: Secured) -> None:
    async def scenario() -> None:
        anonymous = await refusal(secured.url, secured.plc)
        assert "BadIdentityTokenRejected" in anonymous or "No matching" in anonymous
        assert "BadUserAccessDenied" in await refusal(secured.url, secured.plc, user="plc", password="wrong")
        assert "BadUserAccessDenied" in await refusal(secured.url, secured.plc, user="nobody", password=PASSWORD)
        assert "BadUserAccessDenied" in await refusal(secured.url, secured.plc, user="plc", password="")
    failures = secured.output.server.iserver.user_manager.failures  # type: ignore[union-attr]
    run(scenario)
    assert secured.output.server.iserver.user_manager.failures >= failures + 3  # type: ignore[union-attr]


def test_refused_with_security_none(secured: Secured) -> None:
    """The client library will not even try (no None endpoint is offered); a hand-made client that opens a None
    channel anyway (allowed for GetEndpoints) and creates a session on it is refused at activation."""
    async def raw_session_on_none_channel(token: Any) -> str:
        client = Client(secured.url, timeout=10)
        await client.connect_socket()
        try:
            await client.send_hello()
            await client.open_secure_channel()
            endpoints = await client.get_endpoints()  # discovery works without security ...
            assert {e.SecurityMode for e in endpoints} == {ua.MessageSecurityMode.SignAndEncrypt}
            params = ua.CreateSessionParameters(ClientNonce=create_nonce(32), EndpointUrl=secured.url,
                                                SessionName="intruder", RequestedSessionTimeout=60000,
                                                ClientDescription=ua.ApplicationDescription(
                                                    ApplicationUri="urn:intruder",
                                                    ApplicationType=ua.ApplicationType.Client))
            await client.uaclient.create_session(params)
            activate = ua.ActivateSessionParameters(UserIdentityToken=token)
            try:
                await client.uaclient.activate_session(activate)
            except ua.UaStatusCodeError as exc:
                return type(exc).__name__
            await client.get_node(ua.NodeId("VisionSystem.Session", 1)).read_value()
            return "session works"
        finally:
            client.disconnect_socket()

    async def scenario() -> None:
        assert "No matching endpoints" in await refusal(secured.url, None, user="plc", password=PASSWORD)
        password = ua.UserNameIdentityToken(PolicyId="username", UserName="plc", Password=PASSWORD.encode())
        assert await raw_session_on_none_channel(password) == "BadSecurityModeRejected"
        assert await raw_session_on_none_channel(ua.AnonymousIdentityToken(PolicyId="anonymous")) == \
            "BadSecurityModeRejected"
    run(scenario)


def test_unknown_application_is_rejected_until_an_operator_trusts_it(secured: Secured) -> None:
    stranger = make_identity(secured.root / "apps", "stranger-plc")

    async def scenario() -> None:
        assert "BadCertificateUntrusted" in await refusal(secured.url, stranger, user="plc", password=PASSWORD)
        rejected = list((secured.pki / "rejected" / "certs").glob("stranger-plc*.der"))
        assert len(rejected) == 1 and rejected[0].read_bytes() == stranger.der
        assert thumbprint(x509.load_der_x509_certificate(stranger.der)) in rejected[0].name
        rejected[0].rename(secured.pki / "trusted" / "certs" / rejected[0].name)  # the operator's mv, no restart
        async with session(secured.url, stranger, user="plc", password=PASSWORD) as c:
            assert await reads(c)
    run(scenario)


def test_application_uri_must_match_its_certificate(secured: Secured) -> None:
    liar = Identity("urn:someone:else", secured.plc.cert, secured.plc.key)  # trusted cert, claims another app

    async def scenario() -> None:
        assert "BadCertificateUriInvalid" in await refusal(secured.url, liar, user="plc", password=PASSWORD)
    run(scenario)


def test_certificate_user(secured: Secured) -> None:
    impostor = make_identity(secured.root / "users", "impostor")

    async def scenario() -> None:
        async with session(secured.url, secured.plc, user_cert=secured.mes) as c:
            assert await reads(c)
        assert "BadUserAccessDenied" in await refusal(secured.url, secured.plc, user_cert=impostor)
    run(scenario)


def test_users_can_read_but_never_write(secured: Secured) -> None:
    async def scenario() -> None:
        async with session(secured.url, secured.plc, user="plc", password=PASSWORD) as c:
            verdict = c.get_node(ua.NodeId("VisionSystem.Cameras.top.LastResult.Verdict", 1))
            with pytest.raises(ua.UaStatusCodeError, match="BadUserAccessDenied"):
                await verdict.write_value(ua.Variant("OK", ua.VariantType.String))
            # the Write service itself is refused (not only read-only nodes): no node is even looked up
            with pytest.raises(ua.UaStatusCodeError, match="BadUserAccessDenied"):
                await c.get_node(ua.NodeId("NoSuchNode", 1)).write_value(ua.Variant(1, ua.VariantType.Int32))
            with pytest.raises(ua.UaStatusCodeError, match="BadUserAccessDenied"):
                await c.nodes.objects.add_object(ua.NodeId("Evil", 1), ua.QualifiedName("Evil", 1))
            assert await verdict.read_value() == ""
    run(scenario)


def test_a_client_that_stops_reading_is_disconnected(secured: Secured, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the backlog limit at -1 every connected client counts as not reading: it is cut off, the server
    stays up, and a well-behaved client connects afterwards."""
    async def scenario() -> None:
        victim = await connect(secured.url, secured.plc, user="plc", password=PASSWORD)
        before = secured.output.stats.disconnected
        monkeypatch.setattr(opcua_module, "CLIENT_BACKLOG_BYTES", -1)
        try:
            await eventually(lambda: secured.output.stats.disconnected > before)
        finally:
            monkeypatch.setattr(opcua_module, "CLIENT_BACKLOG_BYTES", 8 << 20)
        assert secured.output.stats.disconnected > before
        with pytest.raises((ua.UaError, ConnectionError, asyncio.TimeoutError, OSError)):
            await reads(victim)
        # a well-behaved client gets in afterwards (as a PLC does: it retries with a pause; under load the first
        # attempt can land while the server is still tearing the victim's session down)
        clients: list = []

        async def reconnected() -> bool:
            try:
                clients.append(await connect(secured.url, secured.plc, user="plc", password=PASSWORD))
                return True
            except (ua.UaError, ConnectionError, asyncio.TimeoutError, OSError):
                await asyncio.sleep(1.0)
                return False

        await eventually(reconnected)
        try:
            assert await reads(clients[-1])
        finally:
            await clients[-1].disconnect()
    run(scenario)


def test_server_certificate_is_made_once_with_a_private_key(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    first = ensure_server_certificate(pki, "urn:rddn-inspector:l1", "127.0.0.1", "l1")
    assert first.created
    assert stat.S_IMODE(os.stat(first.private_key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(first.private_key.parent).st_mode) == 0o700
    cert = x509.load_der_x509_certificate(first.certificate.read_bytes())
    assert certificate_uris(cert) == ["urn:rddn-inspector:l1"]
    assert x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1")) in \
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    again = ensure_server_certificate(pki, "urn:rddn-inspector:l1", "127.0.0.1", "l1")
    assert (again.created, again.thumbprint) == (False, first.thumbprint)  # PLCs keep trusting it across restarts
    renamed = ensure_server_certificate(pki, "urn:rddn-inspector:l2", "127.0.0.1", "l2")
    assert renamed.created and renamed.thumbprint != first.thumbprint  # the old one names another application
    assert not list(pki.glob("own/private/.*tmp"))


def test_passwords_are_hashed() -> None:
    digest = hash_password(PASSWORD)
    assert PASSWORD not in digest and digest.startswith("scrypt$")
    assert verify_password(PASSWORD, digest) and not verify_password(PASSWORD + "!", digest)
    assert hash_password(PASSWORD) != digest  # salted
    with pytest.raises(ValueError):
        verify_password(PASSWORD, PASSWORD)


def test_login_attempts_are_rate_limited(tmp_path: Path) -> None:
    limiter = LoginLimiter(burst=3, rate_per_s=0.0)
    users = StationUserManager({"plc": hash_password(PASSWORD)}, {}, False, limiter)
    assert users.get_user(None, "plc", "guess1") is None  # type: ignore[arg-type]
    assert users.get_user(None, "plc", "guess2") is None  # type: ignore[arg-type]
    assert users.get_user(None, "plc", PASSWORD) is not None  # type: ignore[arg-type]
    assert users.get_user(None, "plc", PASSWORD) is None  # type: ignore[arg-type]  # bucket empty: refused unchecked
    assert limiter.refused == 1


def test_config_refuses_unsafe_settings(tmp_path: Path) -> None:
    def cfg(**opcua: Any) -> Any:
        return parse_station_config({"station": "s", "cameras": [{"id": "c", "drop_folder": "d"}],
                                     "opcua": opcua}, "<t>", tmp_path)

    assert cfg().opcua.enabled is False  # off by default
    assert cfg().opcua.loopback and cfg().opcua.allow_anonymous is False
    with pytest.raises(ConfigError, match="not a password hash"):
        cfg(enabled=True, users={"plc": "plaintext-password"})
    with pytest.raises(ConfigError, match="nobody can log in"):
        cfg(enabled=True)
    with pytest.raises(ConfigError, match="anyone on the network"):
        cfg(enabled=True, endpoint="opc.tcp://0.0.0.0:4840/x", allow_anonymous=True, trust_all_clients=True)
    with pytest.raises(ConfigError, match="opc.tcp://HOST:PORT"):
        cfg(enabled=True, endpoint="http://127.0.0.1:4840", allow_anonymous=True)
    with pytest.raises(ConfigError, match="security_policies"):
        cfg(enabled=True, allow_anonymous=True, security_policies=["None"])
    assert cfg(enabled=True, allow_anonymous=True, trust_all_clients=True).opcua.enabled  # loopback: allowed
    assert cfg(enabled=True, certificate_users={"mes": "u.der"}).opcua.certificate_users["mes"] == tmp_path / "u.der"


def test_anonymous_only_when_enabled(tmp_path: Path) -> None:
    s = Secured(tmp_path, users={}, certificate_users={}, allow_anonymous=True).start()
    try:
        async def scenario() -> None:
            async with session(s.url, s.plc) as c:
                assert await reads(c)
                with pytest.raises(ua.UaStatusCodeError):
                    await c.get_node(ua.NodeId("VisionSystem.Session", 1)).write_value("x")
            assert "BadCertificateUntrusted" in await refusal(s.url, make_identity(tmp_path / "x", "unknown"))
        run(scenario)
    finally:
        s.stop()
