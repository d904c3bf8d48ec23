"""Fault-suite harness (imported by the tests via conftest's sys.path entry): a real station on temp folders, the real ``inspector run`` as a subprocess (difference
backend: a real classical detector, fast), its real SQLite/PostgreSQL database, and real ZeroMQ clients.

Nothing here imitates the daemon: the helpers only create inputs (frames, templates, configs), start/kill the
process, and read what it produced (rows, files, bus messages).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import pytest
import yaml
import zmq
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

ROOT = Path(__file__).resolve().parents[2]
FRAME_SIZE = 128
DAEMON_CMD = [sys.executable, "-m", "inspector.cli", "run", "--config"]  # what the systemd unit runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until truthy (returned) or fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def position_template(position: str, size: int = FRAME_SIZE) -> np.ndarray:
    """A textured board (smoothed noise, seeded by position) so phase correlation has something to lock on."""
    rng = np.random.default_rng(sum(map(ord, position)) * 7919)
    noise = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)
    board = cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)
    return cv2.GaussianBlur(board, (3, 3), 0)


def make_frame(position: str, defective: bool, seed: int, size: int = FRAME_SIZE) -> np.ndarray:
    """The position's board with mild sensor noise; defective frames get a bright 12x12 blob away from edges."""
    rng = np.random.default_rng(seed)
    img = position_template(position, size).astype(np.int16)
    img += rng.integers(-4, 5, img.shape, dtype=np.int16)
    if defective:
        x, y = rng.integers(24, size - 36, 2)
        img[y:y + 12, x:x + 12] = 255
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(image: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image)
    assert ok
    return buf.tobytes()


class StationHarness:
    """One station: config YAML, folders, templates, a daemon subprocess, and readers for its outputs."""

    def __init__(self, root: Path, positions: tuple[str, ...] = ("P1", "P2"), database_url: str | None = None,
                 extra: dict[str, object] | None = None, camera: str = "cam0") -> None:
        self.root = root
        self.camera = camera
        self.positions = positions
        self.drop = root / "drop" / camera
        self.state = root / "state"
        self.drop.mkdir(parents=True, exist_ok=True)
        self.publish_endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.replay_endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.config: dict[str, object] = {
            "station": "s1",
            "state_dir": str(self.state),
            "bus": {"publish": self.publish_endpoint, "replay": self.replay_endpoint, "heartbeat_s": 0.2},
            "detector": {"backend": "difference"},
            "thresholds": {"default": 0.5},
            "alarm_rules": [{"class": "*", "severity": "critical", "min_score": 0.5}],
            "reconcile_interval_s": 1.0,
            "save_annotated": False,
            "cameras": [{"id": camera, "drop_folder": str(self.drop)}],
        }
        if database_url:
            self.config["database_url"] = database_url
        for key, value in (extra or {}).items():
            if isinstance(value, dict) and isinstance(self.config.get(key), dict):
                self.config[key] = {**self.config[key], **value}  # type: ignore[dict-item]
            else:
                self.config[key] = value
        self.config_path = root / "station.yaml"
        self.write_config()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "daemon.log"
        self.starts = 0
        self._started_lines = 0
        self._factory: sessionmaker[Session] | None = None

    # -- setup ---------------------------------------------------------------------------------------------
    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def station_config(self):
        from inspector.config import load_station_config

        return load_station_config(self.config_path)

    @property
    def factory(self) -> sessionmaker[Session]:
        if self._factory is None:
            from inspector.db import make_engine, make_session_factory, upgrade_database

            engine = make_engine(self.station_config().db_url)
            upgrade_database(engine)
            self._factory = make_session_factory(engine)
        return self._factory

    def register_templates(self) -> None:
        """Through the daemon's own template store (what ``inspector templates add`` does)."""
        from inspector.db.records import ensure_station
        from inspector.templates import TemplateStore

        cfg = self.station_config()
        store = TemplateStore(cfg, self.factory, ensure_station(self.factory, cfg))
        for pos in self.positions:
            store.add(self.camera, pos, position_template(pos))

    # -- frames --------------------------------------------------------------------------------------------
    def drop_bytes(self, name: str, data: bytes, via_rename: bool = False) -> Path:
        path = self.drop / name
        if via_rename:
            tmp = self.drop / f".{name}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, path)
        else:
            path.write_bytes(data)
        return path

    def drop_frame(self, position: str, serial: str, defective: bool, seed: int, via_rename: bool = False,
                   ext: str = ".png") -> tuple[str, bytes]:
        name = f"{position}_{serial}{ext}"
        data = encode(make_frame(position, defective, seed), ext)
        self.drop_bytes(name, data, via_rename)
        return name, data

    # -- process -------------------------------------------------------------------------------------------
    def start(self, env: dict[str, str] | None = None, wait_ready: bool = True,
              command: list[str] | None = None) -> subprocess.Popen[bytes]:
        """Run the daemon (``inspector run --config``, or ``command`` + config path) with its log in ``log_path``."""
        assert self.proc is None or self.proc.poll() is not None, "daemon already running"
        full_env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        full_env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})})
        self._started_lines = self.log_text().count('"inspection started"')
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*(command or DAEMON_CMD), str(self.config_path)],
            cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        self.starts += 1
        if wait_ready:
            self.wait_started()
        return self.proc

    def wait_started(self, timeout: float = 60.0) -> None:
        """Started = this run's "inspection started" log line (written after bus birth and the first reconcile)."""
        def started() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log_tail()}")
            return self.log_text().count('"inspection started"') > self._started_lines

        wait_until(started, timeout, what="daemon start")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"daemon ignored SIGTERM for {timeout}s:\n{self.log_tail()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_lines(self) -> list[dict[str, object]]:
        out = []
        for line in self.log_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    # -- outputs -------------------------------------------------------------------------------------------
    def frames(self) -> list[dict[str, object]]:
        from inspector.db.models import Frame

        with self.factory() as db:
            rows = db.scalars(select(Frame).order_by(Frame.id)).all()
            return [{"id": r.id, "name": r.name, "sha256": r.sha256, "status": r.status, "reason": r.reason,
                     "stored_path": r.stored_path, "detections": len(r.detections)} for r in rows]

    def alarms(self) -> list[dict[str, object]]:
        from inspector.db.models import Alarm

        with self.factory() as db:
            rows = db.scalars(select(Alarm).order_by(Alarm.id)).all()
            return [{"session": r.session_id, "seq": r.seq, "frame_id": r.frame_id, "payload": r.payload}
                    for r in rows]

    def drop_files(self) -> list[str]:
        return sorted(p.name for p in self.drop.iterdir()) if self.drop.is_dir() else []

    def quarantine_reasons(self) -> dict[str, dict[str, object]]:
        root = self.state / "quarantine"
        return {p.name[: -len(".reason.json")]: json.loads(p.read_text()) for p in root.rglob("*.reason.json")}

    def results(self) -> list[dict[str, object]]:
        from inspector.db.models import ResultRow

        with self.factory() as db:
            rows = db.scalars(select(ResultRow).order_by(ResultRow.id)).all()
            return [{"session": r.session_id, "seq": r.seq, "frame_id": r.frame_id, "verdict": r.verdict,
                     "payload": r.payload} for r in rows]

    def replay_page(self, session: str | None, after: int = 0, stream: str = "alarm", ctx: zmq.Context | None = None,
                    setup: Callable[[zmq.Socket], None] | None = None, timeout_ms: int = 5000,
                    **request: object) -> tuple[dict, list[dict]]:
        """One page of ``session``'s ``stream`` after ``after`` (DEALER, as a PLC gateway would)."""
        ctx = ctx or zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        if setup:
            setup(sock)
        sock.connect(self.replay_endpoint)
        try:
            body = {"session": session, "after": after, "stream": stream, **request}
            sock.send_multipart([b"", json.dumps(body).encode()])
            if not sock.poll(timeout_ms):
                raise AssertionError("replay endpoint did not answer")
            frames = sock.recv_multipart()
        finally:
            sock.close()
        frames = [f for f in frames if f]
        return json.loads(frames[0]), [json.loads(f) for f in frames[1:]]

    def replay(self, session: str | None, after: int = 0, stream: str = "alarm", ctx: zmq.Context | None = None,
               setup: Callable[[zmq.Socket], None] | None = None, timeout_ms: int = 5000) -> tuple[dict, list[dict]]:
        """Every message of ``session``'s ``stream`` after ``after``, following the pages; the last page's header
        with ``pages`` (how many) added."""
        messages: list[dict] = []
        pages = 0
        while True:
            header, page = self.replay_page(session, after, stream, ctx, setup, timeout_ms)
            pages += 1
            messages.extend(page)
            if header.get("type") != "replay" or not header["more"]:
                return {**header, "pages": pages}, messages
            after = header["next_after"]


class BusListener:
    """A background SUB socket collecting (topic, json) from a station's PUB endpoint."""

    def __init__(self, endpoint: str, setup: Callable[[zmq.Socket], None] | None = None,
                 topics: tuple[bytes, ...] = (b"",)) -> None:
        import threading

        self.messages: list[tuple[str, dict[str, object]]] = []
        self.times: list[float] = []  # time.monotonic() when each message arrived
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.linger = 0
        for t in topics:
            self._sock.setsockopt(zmq.SUBSCRIBE, t)
        if setup:
            setup(self._sock)
        self._sock.connect(endpoint)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._sock.poll(50):
                topic, body = self._sock.recv_multipart()
                self.times.append(time.monotonic())
                self.messages.append((topic.decode(), json.loads(body)))

    def of_type(self, prefix: str) -> list[dict[str, object]]:
        return [m for t, m in list(self.messages) if t.startswith(prefix)]

    def of_type_after(self, first: str, then: str) -> list[dict[str, object]]:
        """Messages of topic prefix ``then`` that arrived after the first one of ``first`` (e.g. healthy after
        degraded: a subscriber's welcome also says healthy, so "any healthy" proves no recovery)."""
        out, seen = [], False
        for topic, message in list(self.messages):
            if seen and topic.startswith(then):
                out.append(message)
            seen = seen or topic.startswith(first)
        return out

    def arrivals(self, prefix: str) -> list[float]:
        """Arrival times (monotonic) of the messages whose topic starts with ``prefix``."""
        return [at for at, (t, _) in zip(list(self.times), list(self.messages)) if t.startswith(prefix)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()
        self._ctx.term()
