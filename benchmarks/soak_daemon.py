"""Soak: the real daemon process (``inspector run``) for a long stretch, with periodic ``kill -9`` + restart.

Why a separate benchmark from ``daemon_throughput.py``: that one measures speed in-process; this one measures
what the line cares about over days, in the deployed shape (a subprocess as systemd runs it): sustained frames/s
including crash recoveries, daemon RSS growth between restarts, restart-to-first-frame time, and at the end
the invariants: every frame exactly once with one result, every alarm and result session gap-free and fully
replayable (paged).

    .venv/bin/python benchmarks/soak_daemon.py                                  # 1000 frames, kill every 250
    .venv/bin/python benchmarks/soak_daemon.py --frames 10000 --kill-every 0    # memory flatness, no kills
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import yaml
import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inspector.config import load_station_config  # noqa: E402
from inspector.db import make_engine, make_session_factory, upgrade_database  # noqa: E402
from inspector.alarms_tail import ReplayError, request_replay  # noqa: E402
from inspector.db.models import Alarm, Frame, ResultRow  # noqa: E402
from inspector.db.records import ensure_station  # noqa: E402
from inspector.demo.frames import demo_spec, encode_jpeg, make_frame, position_name, position_templates  # noqa: E402
from inspector.templates import TemplateStore  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return float("nan")


class SoakStation:
    def __init__(self, root: Path, size: int, positions: int) -> None:
        self.root, self.drop, self.state = root, root / "drop", root / "state"
        self.drop.mkdir(parents=True)
        self.replay = f"tcp://127.0.0.1:{free_port()}"
        config = {"station": "soak", "state_dir": str(self.state), "save_annotated": False,
                  "reconcile_interval_s": 5.0, "detector": {"backend": "difference"},
                  "bus": {"publish": f"tcp://127.0.0.1:{free_port()}", "replay": self.replay},
                  "cameras": [{"id": "cam0", "drop_folder": str(self.drop),
                               "pattern": r"^(?P<position>P\d+)_(?P<serial>\d+)\.jpg$"}]}
        self.config_path = root / "soak.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        cfg = load_station_config(self.config_path)
        engine = make_engine(cfg.db_url)
        upgrade_database(engine)
        self.factory = make_session_factory(engine)
        self.spec = demo_spec(size=size, positions=positions, max_shift=4)
        store = TemplateStore(cfg, self.factory, ensure_station(self.factory, cfg))
        for name, image in position_templates(self.spec).items():
            store.add("cam0", name, image)
        self.log = open(root / "daemon.log", "ab")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start the daemon; returns seconds until its "inspection started" log line."""
        t0 = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "inspector.cli", "run", "--config", str(self.config_path)],
                                     cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "OMP_NUM_THREADS": "1"})
        want = (self.root / "daemon.log").read_bytes().count(b'"inspection started"') + 1
        while (self.root / "daemon.log").read_bytes().count(b'"inspection started"') < want:
            if self.proc.poll() is not None:
                raise SystemExit(f"daemon exited with {self.proc.returncode}; see {self.root / 'daemon.log'}")
            time.sleep(0.05)
        return time.monotonic() - t0

    def frames_done(self) -> int:
        with self.factory() as db:
            return int(db.query(Frame).count())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--kill-every", type=int, default=250, help="kill -9 + restart after this many frames (0: never)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--positions", type=int, default=4)
    parser.add_argument("--backlog", type=int, default=64, help="max frames waiting in the drop folder")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="rddn-soak-"))
    st = SoakStation(root, args.size, args.positions)
    rng = np.random.default_rng(0)
    frames = [(i % args.positions, bool(rng.random() < 0.3)) for i in range(args.frames)]
    # a bounded pool of distinct encoded images, re-used under new names (content differs by name only)
    pool = {(p, d): [encode_jpeg(make_frame(st.spec, p, rng, d).image) for _ in range(8)]
            for p in range(args.positions) for d in (False, True)}

    starts = [st.start()]
    assert st.proc is not None
    rss: list[tuple[int, float]] = [(0, rss_mb(st.proc.pid))]
    kills = 0
    t0 = time.monotonic()
    sent = 0
    next_kill = args.kill_every or None
    while True:
        done = st.frames_done()
        while sent < args.frames and sent - done < args.backlog:
            p, defective = frames[sent]
            data = pool[(p, defective)][sent % 8]
            tmp = st.drop / f".{sent}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, st.drop / f"{position_name(p)}_{sent:07d}.jpg")
            sent += 1
        if next_kill is not None and done >= next_kill and sent < args.frames:
            rss.append((done, rss_mb(st.proc.pid)))
            st.proc.send_signal(signal.SIGKILL)
            st.proc.wait()
            kills += 1
            starts.append(st.start())
            next_kill += args.kill_every
        if done >= args.frames and not any(st.drop.glob("*.jpg")):
            break
        if st.proc.poll() is not None:
            raise SystemExit(f"daemon died on its own (rc {st.proc.returncode}); see {root / 'daemon.log'}")
        time.sleep(0.05)
    elapsed = time.monotonic() - t0
    rss.append((args.frames, rss_mb(st.proc.pid)))
    st.proc.send_signal(signal.SIGTERM)
    rc = st.proc.wait(60)

    with st.factory() as db:
        names = Counter(n for (n,) in db.query(Frame.name).all())
        stage_rows = [r for (r,) in db.query(Frame.stage_ms).all() if r]
        alarms = db.query(Alarm.session_id, Alarm.seq).all()
        results = db.query(ResultRow.session_id, ResultRow.seq, ResultRow.frame_id).all()
    streams: dict[str, dict[str, list[int]]] = {"alarm": {}, "result": {}}
    for kind, rows in (("alarm", alarms), ("result", results)):
        for session, seq, *_ in rows:
            streams[kind].setdefault(session, []).append(seq)
    sessions = streams["alarm"]
    gap_free = all(sorted(s) == list(range(1, len(s) + 1)) for kind in streams.values() for s in kind.values())
    one_result_per_frame = len(results) == sum(names.values()) and len({f for *_, f in results}) == len(results)
    ctx = zmq.Context()
    replay_ok = True
    st.start()
    for kind, by_session in streams.items():
        for session, seqs in by_session.items():
            try:
                _, replayed = request_replay(ctx, st.replay, session, 0, kind, timeout_ms=10_000)  # every page
            except ReplayError as exc:
                print(f"replay of {kind} session {session} failed: {exc}")
                replay_ok = False
                continue
            replay_ok &= [m["seq"] for m in replayed] == sorted(seqs)
    st.proc.send_signal(signal.SIGTERM)
    st.proc.wait(60)
    ctx.term()

    print(f"frames: {args.frames} in {elapsed:.1f} s = {args.frames / elapsed:.1f} frames/s "
          f"(incl. {kills} kill -9 + restarts), {args.size}x{args.size} JPEG, difference detector")
    print(f"start to 'inspection started': first {starts[0]:.2f} s, restarts "
          f"{np.mean(starts[1:]) if len(starts) > 1 else float('nan'):.2f} s mean")
    for stage in ("decode", "align", "detect", "db", "publish", "store"):
        values = [r.get(stage, 0.0) for r in stage_rows if stage in r]
        if values:
            print(f"  {stage:8s} p50 {np.percentile(values, 50):7.2f} ms  p99 {np.percentile(values, 99):7.2f} ms")
    print("daemon RSS (MB) at frame: " + ", ".join(f"{n}: {m:.0f}" for n, m in rss))
    print(f"exactly once: {len(names) == args.frames and max(names.values()) == 1} "
          f"({len(names)} distinct of {args.frames}, max rows per frame {max(names.values())})")
    print(f"one result per frame: {one_result_per_frame} ({len(results)} results)")
    print(f"alarm sessions: {len(sessions)}, alarms and results gap-free: {gap_free}, fully replayable (paged): "
          f"{replay_ok}; SIGTERM exit {rc}")
    if args.keep:
        print(f"work directory kept: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    ok = (len(names) == args.frames and max(names.values()) == 1 and one_result_per_frame and gap_free and replay_ok
          and rc == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
