"""CURVE on real loopback sockets: with the server key and an authorised client key a subscriber receives; without
the server key, or with an unauthorised key, it receives nothing."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import zmq

from inspector.security import CurveServer, CurveSettings, KeyFileError, generate_certificates, main, secure_client


@pytest.fixture()
def keys(tmp_path: Path) -> dict[str, Path]:
    server_pub, server_sec = generate_certificates(tmp_path / "server", "server")
    client_pub, client_sec = generate_certificates(tmp_path / "clients", "gateway")
    _, rogue_sec = generate_certificates(tmp_path / "rogue", "rogue")
    return {"server_pub": server_pub, "server_sec": server_sec, "client_sec": client_sec,
            "clients_dir": client_pub.parent, "rogue_sec": rogue_sec}


def _publish_until(pub: zmq.Socket, subs: list[zmq.Socket], seconds: float = 1.5) -> list[list[bytes]]:
    """Publish repeatedly (PUB drops until a subscription lands) and collect what each subscriber gets."""
    got: list[list[bytes]] = [[] for _ in subs]
    poller = zmq.Poller()
    for s in subs:
        poller.register(s, zmq.POLLIN)
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        pub.send_multipart([b"alarm.s1.critical", str(n).encode()])
        n += 1
        for sock, _ in poller.poll(20):
            got[subs.index(sock)].append(sock.recv_multipart()[1])
    return got


def _sub(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.SUBSCRIBE, b"alarm.")
    s.linger = 0
    return s


def test_authenticated_curve_pub_sub(keys: dict[str, Path]) -> None:
    ctx = zmq.Context()
    server = CurveServer(ctx, CurveSettings(enabled=True, server_secret_key=keys["server_sec"],
                                            authorized_clients_dir=keys["clients_dir"])).start()
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    server.secure(pub)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    endpoint = f"tcp://127.0.0.1:{port}"
    good, no_key, rogue, plain = (_sub(ctx, endpoint) for _ in range(4))
    secure_client(good, keys["server_pub"], keys["client_sec"])
    secure_client(rogue, keys["server_pub"], keys["rogue_sec"])  # knows the server, not authorised
    # no_key: a CURVE client guessing with its own key pair as "server key"
    wrong_pub, _ = zmq.curve_keypair()
    no_key.curve_serverkey = wrong_pub
    no_key.curve_publickey, no_key.curve_secretkey = zmq.curve_keypair()
    for s in (good, no_key, rogue, plain):
        s.connect(endpoint)
    try:
        got = _publish_until(pub, [good, no_key, rogue, plain])
        assert len(got[0]) > 0, "authorised subscriber received nothing"
        assert got[1] == [] and got[2] == [] and got[3] == []
    finally:
        for s in (good, no_key, rogue, plain, pub):
            s.close()
        server.stop()
        ctx.term()


def test_encryption_only_accepts_any_client_with_server_key(keys: dict[str, Path]) -> None:
    ctx = zmq.Context()
    server = CurveServer(ctx, CurveSettings(enabled=True, server_secret_key=keys["server_sec"])).start()
    rep = ctx.socket(zmq.ROUTER)  # the replay endpoint is a ROUTER: same securing call
    rep.linger = 0
    server.secure(rep)
    port = rep.bind_to_random_port("tcp://127.0.0.1")
    req = ctx.socket(zmq.DEALER)
    req.linger = 0
    secure_client(req, keys["server_pub"])  # ephemeral client key
    req.connect(f"tcp://127.0.0.1:{port}")
    try:
        req.send(b"replay-from 0")
        assert rep.poll(3000)
        ident, body = rep.recv_multipart()
        assert body == b"replay-from 0"
    finally:
        req.close()
        rep.close()
        server.stop()
        ctx.term()


def test_disabled_is_a_noop_and_plain_sockets_work() -> None:
    ctx = zmq.Context()
    server = CurveServer(ctx, CurveSettings()).start()
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    server.secure(pub)
    assert pub.curve_server == 0
    pub.close()
    server.stop()
    ctx.term()


def test_key_errors_name_the_file(tmp_path: Path, keys: dict[str, Path]) -> None:
    with pytest.raises(KeyFileError, match="not found: .*missing.key_secret"):
        CurveServer(zmq.Context.instance(), CurveSettings(enabled=True, server_secret_key=tmp_path / "missing.key_secret"))
    with pytest.raises(KeyFileError, match="no secret key"):
        CurveServer(zmq.Context.instance(), CurveSettings(enabled=True, server_secret_key=keys["server_pub"]))
    with pytest.raises(ValueError, match="server_secret_key"):
        CurveServer(zmq.Context.instance(), CurveSettings(enabled=True))
    with pytest.raises(KeyFileError, match="not a directory"):
        CurveServer(zmq.Context.instance(), CurveSettings(enabled=True, server_secret_key=keys["server_sec"],
                                                          authorized_clients_dir=tmp_path / "nope"))


def test_keygen_cli_writes_private_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--dir", str(tmp_path / "k"), "--name", "plc1"]) == 0
    secret = tmp_path / "k" / "plc1.key_secret"
    assert secret.is_file() and (secret.stat().st_mode & 0o777) == 0o600
    assert (tmp_path / "k" / "plc1.key").is_file()
    assert "plc1.key_secret" in capsys.readouterr().out
