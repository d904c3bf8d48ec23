"""The daemon's side of the OPC UA tests, real parts: a migrated SQLite station database with a model and a bus
session, results committed the way the pipeline commits them (frame row + result row in one transaction), and
the OPC UA output started with the same context the daemon gives every output."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from inspector.config import StationConfig, parse_station_config
from inspector.db import make_engine, make_session_factory, upgrade_database
from inspector.db.models import Frame
from inspector.db.records import ensure_station, register_model
from inspector.outputs import OutputContext
from inspector.outputs.opcua import OpcUaOutput
from inspector.outputs.result import DetectionResult, FrameResult, ModelRef, QuarantineInfo, Verdict
from inspector.outputs.session import SessionSequencer, open_session, record
from opcua_client import make_identity

CLASSES = ["open", "short", "mousebite"]


def station_config(root: Path, opcua: dict[str, Any], station: str = "line1",
                   cameras: tuple[str, ...] = ("top", "bottom")) -> StationConfig:
    return parse_station_config({
        "station": station, "state_dir": str(root / "state"),
        "cameras": [{"id": cam, "drop_folder": str(root / f"drop-{cam}")} for cam in cameras],
        "opcua": {"enabled": True, "endpoint": "opc.tcp://127.0.0.1:0/rddn", **opcua}}, "<test>", root)


class StationDb:
    """One daemon run's database side: ``commit(...)`` commits a result with the session's next seq."""

    def __init__(self, cfg: StationConfig) -> None:
        self.cfg = cfg
        self.engine = make_engine(cfg.db_url)
        upgrade_database(self.engine)
        self.factory = make_session_factory(self.engine)
        self.camera_ids = ensure_station(self.factory, cfg)
        model_id = register_model(self.factory, "ab" * 32, "difference", "n/a", None, CLASSES, "config")
        self.model = ModelRef(id=model_id, sha256="ab" * 32, backend="difference", precision="n/a")
        self.session = open_session(self.factory, cfg.station)
        self.sequencer = SessionSequencer(self.session.id)

    def context(self) -> OutputContext:
        return OutputContext(self.cfg.station, self.session, self.factory)

    def commit(self, verdict: str, camera: str = "top", labels: tuple[str, ...] = (), severity: str | None = None,
               reason: str | None = None) -> FrameResult:
        now = datetime.now(timezone.utc)
        seq = self.sequencer.peek_result()
        name = f"A01_SN{uuid.uuid4().hex[:6]}.png"
        with self.factory.begin() as db:
            frame = Frame(camera_id=self.camera_ids[camera], name=name, sha256=uuid.uuid4().hex * 2, position="A01",
                          serial=name[4:-4], status={"OK": "ok", "NG": "defective"}.get(verdict, "quarantined"),
                          source_path=name, processed_at=now, model_id=self.model.id)
            db.add(frame)
            db.flush()
            result = FrameResult(
                station=self.cfg.station, camera=camera, session=self.session.id, seq=seq, verdict=Verdict(verdict),
                frame=name, frame_id=frame.id, position="A01", serial=frame.serial, sha256=frame.sha256,
                captured_at=None, received_at=now, processed_at=now, model=self.model, template=None, image=None,
                detections=[DetectionResult(class_name=label, class_id=CLASSES.index(label) + 1, score=0.9,
                                            box=(1.0, 2.0, 5.0, 6.0), area=16.0, severity=severity, rule=None)
                            for label in labels],
                severity=severity, rule=None, alarm_seq=None,
                quarantine=QuarantineInfo(reason=reason, message=f"{reason} frame") if reason else None,
                shift=None, stored=None, annotated=None)
            record(db, result)
        self.sequencer.advance(result)
        return result

    def close(self) -> None:
        self.engine.dispose()


class Station:
    """The database side plus the OPC UA output, started as the daemon starts it; ``plc`` is a client
    application whose certificate is in the trust list."""

    def __init__(self, root: Path, **opcua: Any) -> None:
        self.root = root
        self.cfg = station_config(root, opcua)
        self.db = StationDb(self.cfg)
        self.output = OpcUaOutput.from_config(self.cfg)
        self.plc = make_identity(root / "apps", "plc")
        self.plc.trust_on(self.cfg.opcua_pki_dir)

    def start(self) -> "Station":
        self.output.start(self.db.context())
        return self

    def stop(self) -> None:
        self.output.stop()
        self.db.close()

    @property
    def url(self) -> str:
        assert self.output.bound_endpoint is not None
        return self.output.bound_endpoint

    def result(self, verdict: str, **kwargs: Any) -> FrameResult:
        """Commit and publish one result, as the pipeline does."""
        result = self.db.commit(verdict, **kwargs)
        self.output.publish(result)
        return result
