"""CURVE on real loopback sockets: with the server key and an authorised client key a subscriber receives; without
the server key, or with an unauthorised key, it receives nothing. Key files: written atomically and privately,
never through links or over existing keys; refused when others can read them. Revocation fails closed."""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import pytest
import zmq

from inspector.security import (CurveServer, CurveSettings, KeyFileError, fingerprint, generate_certificates,
                                load_keypair, load_public_key, main, read_client_keys, secure_client)


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
    with pytest.raises(KeyFileError, match="cannot read the authorised client keys"):
        CurveServer(zmq.Context.instance(), CurveSettings(enabled=True, server_secret_key=keys["server_sec"],
                                                          authorized_clients_dir=tmp_path / "nope"))


def test_keygen_cli_writes_private_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--dir", str(tmp_path / "k"), "--name", "plc1"]) == 0
    secret = tmp_path / "k" / "plc1.key_secret"
    assert secret.is_file() and (secret.stat().st_mode & 0o777) == 0o600
    assert (tmp_path / "k" / "plc1.key").is_file()
    assert "plc1.key_secret" in capsys.readouterr().out


def test_keygen_never_overwrites_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "k"
    assert main(["keygen", "--dir", str(directory), "--name", "plc1"]) == 0
    before = (directory / "plc1.key_secret").read_bytes()
    assert main(["keygen", "--dir", str(directory), "--name", "plc1"]) == 2
    assert "already exists" in capsys.readouterr().err and "--force" in capsys.readouterr().err + "--force"
    assert (directory / "plc1.key_secret").read_bytes() == before
    assert main(["keygen", "--dir", str(directory), "--name", "plc1", "--force"]) == 0
    after = (directory / "plc1.key_secret").read_bytes()
    assert after != before and load_keypair(directory / "plc1.key_secret")[0] == load_public_key(directory / "plc1.key")


def test_keygen_does_not_overwrite_a_key_that_appears_while_it_writes(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    public, secret = generate_certificates(tmp_path / "k", "plc1")
    before = secret.read_bytes()
    real_lstat = os.lstat

    def racing_lstat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if str(path).startswith("plc1."):
            raise FileNotFoundError(path)  # the existence check ran before another keygen created the files
        return real_lstat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "lstat", racing_lstat)
    with pytest.raises(KeyFileError, match="appeared while writing"):
        generate_certificates(tmp_path / "k", "plc1")
    assert secret.read_bytes() == before and not [p for p in (tmp_path / "k").iterdir() if p.name.startswith(".")]


def test_keygen_never_writes_through_a_symbolic_link(tmp_path: Path) -> None:
    directory = tmp_path / "k"
    directory.mkdir(mode=0o700)
    victim = tmp_path / "victim.txt"
    victim.write_text("important\n")
    (directory / "plc1.key_secret").symlink_to(victim)
    with pytest.raises(KeyFileError, match="already exists"):
        generate_certificates(directory, "plc1")
    assert victim.read_text() == "important\n"
    generate_certificates(directory, "plc1", force=True)  # replaces the link itself, never its target
    assert victim.read_text() == "important\n" and not (directory / "plc1.key_secret").is_symlink()
    (tmp_path / "linkdir").symlink_to(directory)
    with pytest.raises(KeyFileError, match="symbolic links are refused"):
        generate_certificates(tmp_path / "linkdir", "other")


def test_keygen_secret_is_never_readable_by_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = os.umask(0)  # a careless shell: files would be created 0666
    try:
        public, secret = generate_certificates(tmp_path / "k", "plc1")
        assert (secret.stat().st_mode & 0o777) == 0o600 and (public.stat().st_mode & 0o777) == 0o644
        assert ((tmp_path / "k").stat().st_mode & 0o777) == 0o700

        # The secret is private from its first byte, not chmod-ed afterwards: look at the file while it is
        # being written (before its final chmod), even with the umask protection out of the way.
        modes: list[int] = []
        real_fchmod = os.fchmod

        def watching_fchmod(fd: int, mode: int) -> None:
            modes.append(os.fstat(fd).st_mode & 0o777)
            real_fchmod(fd, mode)

        monkeypatch.setattr(os, "fchmod", watching_fchmod)
        monkeypatch.setattr(os, "umask", lambda mask: 0)
        generate_certificates(tmp_path / "k1", "plc1")
        assert modes and all(m & 0o077 == 0 for m in modes), f"written with modes {[oct(m) for m in modes]}"
        monkeypatch.undo()

        def crash(*args: object, **kwargs: object) -> None:  # dies between writing and chmod
            raise OSError("simulated crash")

        monkeypatch.setattr(os, "chmod", crash)
        monkeypatch.setattr(os, "fchmod", crash)
        monkeypatch.setattr(Path, "chmod", crash)
        with pytest.raises(OSError):
            generate_certificates(tmp_path / "k2", "plc2")
    finally:
        os.umask(old)
    for leftover in (tmp_path / "k2").iterdir() if (tmp_path / "k2").exists() else []:
        assert leftover.stat().st_mode & 0o077 == 0, f"{leftover} left readable by others"
    assert not (tmp_path / "k2" / "plc2.key_secret").exists()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_secret_key_readable_or_writable_by_others_is_refused(keys: dict[str, Path], mode: int) -> None:
    keys["server_sec"].chmod(mode)
    with pytest.raises(KeyFileError, match="too open"):
        load_keypair(keys["server_sec"])
    with pytest.raises(KeyFileError, match="too open"):
        CurveServer(zmq.Context.instance(), CurveSettings(enabled=True, server_secret_key=keys["server_sec"]))
    keys["server_sec"].chmod(0o600)
    assert load_keypair(keys["server_sec"])[1]


def test_client_key_set_problems_are_reported(keys: dict[str, Path], tmp_path: Path) -> None:
    clients = keys["clients_dir"]
    good, problems = read_client_keys(clients)
    assert len(good) == 1 and problems == []
    (clients / "broken.key").write_text('curve\n    public-key = "not-a-key"\n')
    keys_now, problems = read_client_keys(clients)
    assert len(keys_now) == 1 and any("broken.key" in p and "Z85" in p for p in problems)
    (clients / "broken.key").unlink()
    clients.chmod(0o777)
    assert any("writable by group/others" in p for p in read_client_keys(clients)[1])
    clients.chmod(0o755)
    assert "cannot read" in read_client_keys(tmp_path / "gone")[1][0]


def logged(caplog: pytest.LogCaptureFixture, prefix: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(prefix)]


class _Subscriber:
    def __init__(self, ctx: zmq.Context, endpoint: str, server_pub: Path, client_sec: Path) -> None:
        self.sock = _sub(ctx, endpoint)
        secure_client(self.sock, server_pub, client_sec)
        self.sock.connect(endpoint)

    def receives(self, pub: zmq.Socket, seconds: float = 1.5) -> bool:
        return bool(_publish_until(pub, [self.sock], seconds)[0])


def _curve_pub(keys: dict[str, Path]) -> tuple[zmq.Context, CurveServer, zmq.Socket, str]:
    ctx = zmq.Context()
    server = CurveServer(ctx, CurveSettings(enabled=True, server_secret_key=keys["server_sec"],
                                            authorized_clients_dir=keys["clients_dir"])).start()
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    server.secure(pub)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    return ctx, server, pub, f"tcp://127.0.0.1:{port}"


def test_reload_with_an_unreadable_key_set_fails_closed(keys: dict[str, Path], tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    clients = keys["clients_dir"]
    second_pub, second_sec = generate_certificates(tmp_path / "second", "second")
    shutil.copy(second_pub, clients / "second.key")
    ctx, server, pub, endpoint = _curve_pub(keys)
    subs = []
    try:
        assert len(server.authorised_fingerprints()) == 2
        # Revoke the gateway and, in the same change, add a malformed key file: the reload is refused but the
        # deleted key is revoked anyway (the stricter state), and nothing is added.
        (clients / "gateway.key").unlink()
        (clients / "new.key").write_text("garbage\n")
        third_pub, _ = generate_certificates(tmp_path / "third", "third")
        shutil.copy(third_pub, clients / "third.key")
        caplog.set_level(logging.INFO, logger="inspector.security")
        revoked = server.reload()
        gateway_fp = fingerprint(load_public_key(keys["client_sec"]))
        assert revoked == {gateway_fp}
        assert server.authorised_fingerprints() == [fingerprint(load_public_key(second_pub))]
        [refused_reload] = logged(caplog, "CURVE key reload refused")
        assert any("new.key" in problem for problem in refused_reload.fields["problems"])  # type: ignore[attr-defined]
        assert [r.fields["fingerprint"] for r in logged(caplog, "CURVE client key revoked")] == [gateway_fp]  # type: ignore[attr-defined]

        revoked_sub = _Subscriber(ctx, endpoint, keys["server_pub"], keys["client_sec"])
        kept_sub = _Subscriber(ctx, endpoint, keys["server_pub"], second_sec)
        subs += [revoked_sub, kept_sub]
        assert kept_sub.receives(pub)
        assert not revoked_sub.receives(pub, 1.0), "a revoked key connected after a refused reload"
        refusal = logged(caplog, "CURVE client refused")[0]
        assert refusal.levelno == logging.INFO and refusal.fields["fingerprint"] == gateway_fp  # type: ignore[attr-defined]

        # The whole directory renamed away: nothing can be read, so nobody is authorised any more.
        clients.rename(tmp_path / "moved")
        assert server.reload() == {fingerprint(load_public_key(second_pub))}
        assert server.authorised_fingerprints() == []
        late = _Subscriber(ctx, endpoint, keys["server_pub"], second_sec)
        subs.append(late)
        assert not late.receives(pub, 1.0)

        # Fixed: a complete, readable set applies again (keys can be added back).
        (tmp_path / "moved").rename(clients)
        (clients / "new.key").unlink()
        assert server.reload() == set()
        assert len(server.authorised_fingerprints()) == 2
    finally:
        for sub in subs:
            sub.sock.close()
        pub.close()
        server.stop()
        ctx.term()
