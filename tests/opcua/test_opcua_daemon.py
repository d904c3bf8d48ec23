"""The OPC UA server inside the real daemon (watcher, pipeline, SQLite, difference detector): a PLC that follows
docs/operations.md (its Python example is run as the PLC here) sees one ResultReady per frame, goes away, comes
back after a daemon restart, and fetches exactly the results it missed, by id, from the database."""
from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from sqlalchemy import select

from inspector.config import parse_station_config
from inspector.daemon import Daemon
from inspector.db.models import ResultRow
from inspector.demo.frames import demo_spec, encode_jpeg, make_frame, position_templates
from inspector.outputs.opcua_security import hash_password
from opcua_client import eventually, make_identity, run

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
PASSWORD = "line1-plc-password"


def plc_example() -> dict[str, Any]:
    """The code block the docs mark as the PLC example, executed: its functions are the PLC here."""
    text = DOCS.read_text()
    match = re.search(r"<!-- opcua-plc-example:[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert match, "docs/operations.md lost its OPC UA PLC example"
    namespace: dict[str, Any] = {}
    exec(compile(match.group(1), str(DOCS), "exec"), namespace)  # noqa: S102 - our own documentation
    return namespace


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], bool], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


class Line:
    """A camera writing frames: good ones (the template), defective ones, and a truncated one."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.spec = demo_spec(96, positions=1, max_shift=0, seed=3)
        self.templates = position_templates(self.spec)
        self.rng = np.random.default_rng(3)
        folder.mkdir(parents=True, exist_ok=True)

    def drop(self, serial: str, kind: str) -> None:
        if kind == "ok":
            data = encode_jpeg(self.templates["P00"])
        else:
            data = encode_jpeg(make_frame(self.spec, 0, self.rng, defective=True).image)
            data = data[: len(data) // 2] if kind == "corrupt" else data
        tmp = self.folder / f".P00_{serial}.tmp"
        tmp.write_bytes(data)
        tmp.rename(self.folder / f"P00_{serial}.jpg")


def test_plc_misses_nothing_across_a_daemon_restart(tmp_path: Path) -> None:
    plc_code = plc_example()
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/rddn-inspector"
    cfg = parse_station_config({
        "station": "line1", "state_dir": str(tmp_path / "state"), "detector": {"backend": "difference"},
        "bus": {"publish": "tcp://127.0.0.1:*", "replay": "tcp://127.0.0.1:*"},
        "cameras": [{"id": "top", "drop_folder": str(tmp_path / "drop")}],
        "opcua": {"enabled": True, "endpoint": endpoint, "users": {"plc": hash_password(PASSWORD)}}}, "<t>", tmp_path)
    plc = make_identity(tmp_path / "plc", "plc")
    plc.trust_on(cfg.opcua_pki_dir)
    line = Line(cfg.cameras[0].drop_folder)

    def start() -> Daemon:
        daemon = Daemon(cfg)
        daemon.start()
        if not daemon.templates.active("top", "P00"):
            daemon.templates.add("top", "P00", line.templates["P00"], source="test")
        return daemon

    def results_in_db(daemon: Daemon) -> list[tuple[str, int, str]]:
        with daemon.factory() as db:
            return [(r.session_id, r.seq, r.payload) for r in db.scalars(select(ResultRow).order_by(ResultRow.id))]

    def connect() -> Any:
        return plc_code["connect"](endpoint, plc.uri, plc.cert, plc.key, "plc", PASSWORD)

    handled: list[str] = []  # result ids the PLC acted on, in order
    first = start()
    try:
        async def live() -> None:
            client = await connect()
            try:
                events = plc_code["OnResult"]()
                await plc_code["subscribe"](client, events)
                for serial, kind in (("s1", "ok"), ("s2", "defect"), ("s3", "corrupt")):
                    line.drop(serial, kind)
                await eventually(lambda: len(events.results) >= 3)
                await asyncio.sleep(0.3)
                assert [(e["Serial"], e["Verdict"]) for e in events.results] == [
                    ("s1", "OK"), ("s2", "NG"), ("s3", "NOT_INSPECTED")]
                handled.extend(e["ResultId"] for e in events.results)
            finally:
                await client.disconnect()
        run(live)
        line.drop("s4", "defect")  # the PLC is away: committed, no one listening on OPC UA
        line.drop("s5", "ok")
        wait_for(lambda: len(results_in_db(first)) == 5 and first.wait_idle(0.1))
    finally:
        first.stop()

    second = start()  # a new session; the previous one ended at seq 5
    try:
        line.drop("s6", "ok")
        wait_for(lambda: len(results_in_db(second)) == 6 and second.wait_idle(0.1))

        async def come_back() -> tuple[list[dict[str, Any]], list[Any]]:
            client = await connect()
            try:
                events = plc_code["OnResult"]()
                await plc_code["subscribe"](client, events)
                names = ("Session", "PreviousSession", "PreviousLastSequence", "LastSequence")
                told = [await plc_code["node"](client, f"VisionSystem.{n}").read_value() for n in names]
                return await plc_code["missed"](client, handled[-1]), told
            finally:
                await client.disconnect()
        missed, told = run(come_back)
        old_session = handled[0].rsplit(":", 1)[0]
        assert told == [second.sequencer.session_id, old_session, 5, 1]  # results, not alarms (2 in that run)
        handled.extend(f"{r['session']}:{r['seq']}" for r in missed)

        stored = results_in_db(second)
        assert handled == [f"{session}:{seq}" for session, seq, _ in stored]  # every result once, in order
        assert [r["serial"] for r in missed] == ["s4", "s5", "s6"]
        assert [r["verdict"] for r in missed] == ["NG", "OK", "OK"]
        assert [json.loads(p) for _, _, p in stored[3:]] == missed  # the committed results themselves
        assert stored[3][0] == stored[4][0] != stored[5][0]  # s4, s5 in the first session, s6 in the second
    finally:
        second.stop()
