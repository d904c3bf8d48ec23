"""Socket hardening on real loopback sockets: a listener's connections are capped (in total and per peer
address), connections that never complete a ZMTP handshake are closed after the deadline, and a real
subscriber still gets through while a flood holds every other slot."""
from __future__ import annotations

import socket
import time

import pytest
import zmq

from inspector.security import ConnectionGuard, ConnectionLimits, harden_socket


def _server(limits: ConnectionLimits) -> tuple[zmq.Context, zmq.Socket, ConnectionGuard, int]:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    harden_socket(pub, limits)
    guard = ConnectionGuard(pub, limits, "test-pub")
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    guard.bound(pub.getsockopt_string(zmq.LAST_ENDPOINT))
    return ctx, pub, guard, port


def _idle(port: int, n: int, source: str = "127.0.0.1") -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        socks.append(s)
    return socks


def _closed_by_server(socks: list[socket.socket]) -> int:
    closed = 0
    for s in socks:
        try:
            if s.recv(64) == b"":
                closed += 1
        except BlockingIOError:
            continue
        except OSError:
            closed += 1
    return closed


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_connections_beyond_the_cap_are_shut_and_a_subscriber_still_gets_in() -> None:
    limits = ConnectionLimits(max_connections=40, max_per_peer=1000, handshake_timeout_s=30)
    ctx, pub, guard, port = _server(limits)
    flood = _idle(port, 200)
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    try:
        _wait(lambda: guard.shed >= 150, 20, "the guard to shed the connections beyond its cap")
        assert guard.connections <= limits.max_connections
        # the shed ones see the server close them (long before the 30 s handshake deadline)
        _wait(lambda: _closed_by_server(flood) >= 150, 10, "shed connections to be closed")
        for s in flood:  # the flood leaves: its slots come back
            s.close()
        _wait(lambda: guard.connections == 0, 10, "disconnect events")
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(f"tcp://127.0.0.1:{port}")
        deadline = time.monotonic() + 10
        while not sub.poll(50):
            pub.send(b"alarm")
            assert time.monotonic() < deadline, "a real subscriber could not get in after the flood"
    finally:
        for s in flood:
            s.close()
        sub.close()
        pub.close()
        guard.stop()
        ctx.term()


def test_one_peer_address_cannot_take_every_slot() -> None:
    limits = ConnectionLimits(max_connections=100, max_per_peer=10, handshake_timeout_s=30)
    ctx, pub, guard, port = _server(limits)
    try:
        greedy = _idle(port, 40, "127.0.0.1")
    except OSError:
        pytest.fail("cannot connect from 127.0.0.1")
    try:
        other = _idle(port, 5, "127.0.0.2")  # another host on the line (any 127/8 source works on Linux)
    except OSError as exc:
        for s in greedy:
            s.close()
        pytest.skip(f"cannot bind a second loopback source address here: {exc}")
    try:
        _wait(lambda: guard.shed >= 30, 20, "per-peer shedding")
        time.sleep(0.3)
        assert _closed_by_server(other) == 0, "a well-behaved peer lost its connections to a greedy one"
        assert guard.connections == 15
    finally:
        for s in greedy + other:
            s.close()
        pub.close()
        guard.stop()
        ctx.term()


def test_connections_that_never_handshake_are_closed_after_the_deadline() -> None:
    limits = ConnectionLimits(max_connections=100, handshake_timeout_s=0.5)
    ctx, pub, guard, port = _server(limits)
    idle = _idle(port, 20)
    try:
        _wait(lambda: _closed_by_server(idle) == 20, 10, "libzmq to close silent connections")
        _wait(lambda: guard.connections == 0, 5, "the guard to count them gone")
        assert guard.shed == 0  # closed by the deadline, not by the cap
    finally:
        for s in idle:
            s.close()
        pub.close()
        guard.stop()
        ctx.term()
