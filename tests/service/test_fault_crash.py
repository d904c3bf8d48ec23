"""Crash safety: kill -9 the daemon at random points during a burst of frames, restart, repeat. Every frame ends
up processed exactly once (one row, no duplicate, its file moved out of the drop folder with the right content),
and one result, and every session's alarm and result sequences are gap-free and fully served by the replay
endpoint."""
from __future__ import annotations

import hashlib
import random
import time
from collections import Counter
from pathlib import Path

import pytest

from service_harness import wait_until

BURST = 36
KILLS = 4


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """SQLite (the default file in the state dir) and, when a server is available, a fresh PostgreSQL database."""
    return None if request.param == "sqlite" else request.getfixturevalue("fresh_postgres_url")


@pytest.mark.slow
def test_kill9_during_bursts_loses_nothing_and_duplicates_nothing(station, database_url: str | None) -> None:
    st = station(database_url=database_url)
    st.register_templates()
    rng = random.Random(1234)
    expected: dict[str, tuple[str, bool]] = {}  # name -> (sha256, defective)
    serial = 0

    def burst(n: int) -> None:
        nonlocal serial
        for _ in range(n):
            serial += 1
            defective = serial % 3 == 0
            name, data = st.drop_frame(rng.choice(st.positions), f"s{serial:04d}", defective, seed=serial,
                                       via_rename=serial % 2 == 0)
            expected[name] = (hashlib.sha256(data).hexdigest(), defective)

    killed_at: list[int] = []
    for round_no in range(KILLS):
        st.start()
        before = len(st.frames())
        burst(BURST // KILLS)
        if round_no % 2 == 0:
            # kill right after the k-th new commit: lands between commit, publish and the file move
            k = rng.randint(1, BURST // KILLS - 1)
            wait_until(lambda: len(st.frames()) >= before + k, 30, interval=0.005, what=f"{k} new rows")
        else:
            time.sleep(rng.uniform(0.0, 0.3))  # anywhere: start-up reconcile, decode, detect, ...
        st.kill9()
        assert st.proc is not None and st.proc.returncode == -9
        killed_at.append(len(st.frames()) - before)
    assert any(0 < n < BURST // KILLS for n in killed_at), f"no kill landed mid-burst: {killed_at}"
    burst(4)  # frames that arrive while the daemon is down
    st.start()
    wait_until(lambda: len(st.frames()) >= len(expected) and not st.drop_files(), 60,
               what=f"all {len(expected)} frames processed and the drop folder empty")
    assert st.stop() == 0

    rows = st.frames()
    names = Counter(r["name"] for r in rows)
    assert sorted(names) == sorted(expected), "lost or unexpected frames"
    assert max(names.values()) == 1, f"duplicate rows: {[n for n, c in names.items() if c > 1]}"
    for r in rows:
        sha, defective = expected[str(r["name"])]
        assert r["sha256"] == sha
        assert r["status"] == ("defective" if defective else "ok"), r
        stored = Path(str(r["stored_path"]))
        assert stored.is_file() and hashlib.sha256(stored.read_bytes()).hexdigest() == sha

    alarms = st.alarms()
    defective_ids = {r["id"] for r in rows if r["status"] == "defective"}
    alarm_frames = Counter(a["frame_id"] for a in alarms)
    assert set(alarm_frames) == defective_ids and max(alarm_frames.values()) == 1, "one alarm per defective frame"
    by_session: dict[str, list[int]] = {}
    for a in alarms:
        by_session.setdefault(str(a["session"]), []).append(int(a["seq"]))
    for session, seqs in by_session.items():
        assert sorted(seqs) == list(range(1, len(seqs) + 1)), f"gap in session {session}: {sorted(seqs)}"

    # Every frame has exactly one committed result (quarantined ones too), each session's results gap-free.
    results = st.results()
    result_frames = Counter(r["frame_id"] for r in results)
    assert set(result_frames) == {r["id"] for r in rows} and max(result_frames.values()) == 1, "one result per frame"
    results_by_session: dict[str, list[int]] = {}
    for r in results:
        results_by_session.setdefault(str(r["session"]), []).append(int(r["seq"]))
    for session, seqs in results_by_session.items():
        assert sorted(seqs) == list(range(1, len(seqs) + 1)), f"result gap in session {session}: {sorted(seqs)}"

    # Replay (from a fresh daemon run, as a restarted PLC gateway would) serves every session completely.
    st.start()
    try:
        for stream, sessions in (("alarm", by_session), ("result", results_by_session)):
            for session, seqs in sessions.items():
                header, payloads = st.replay(session, after=0, stream=stream)
                assert [p["seq"] for p in payloads] == sorted(seqs) and header["last_seq"] == len(seqs), stream
                assert all(p["session"] == session and p["type"] == stream for p in payloads)
    finally:
        assert st.stop() == 0
