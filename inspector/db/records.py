"""Small helpers that make sure the station's reference rows exist (station, cameras, model) before frames do.

``factory`` is anything with ``begin()``: the daemon passes its ``DbWriter``, the command line a sessionmaker."""
from __future__ import annotations

from sqlalchemy import select

from inspector.config import StationConfig
from inspector.db.models import Camera, ModelRecord, Station
from inspector.db.writer import Transactions


def ensure_station(factory: Transactions, cfg: StationConfig) -> dict[str, int]:
    """Insert the station and its cameras if missing; returns camera name -> camera row id."""
    with factory.begin() as session:
        if session.get(Station, cfg.station) is None:
            session.add(Station(id=cfg.station))
            session.flush()
        ids: dict[str, int] = {}
        for cam in cfg.cameras:
            row = session.scalar(select(Camera).where(Camera.station_id == cfg.station, Camera.name == cam.id))
            if row is None:
                row = Camera(station_id=cfg.station, name=cam.id, drop_folder=str(cam.drop_folder))
                session.add(row)
                session.flush()
            else:
                row.drop_folder = str(cam.drop_folder)
            ids[cam.id] = row.id
        return ids


def register_model(factory: Transactions, sha256: str, backend: str, precision: str, path: str | None,
                   class_names: list[str], verification: str) -> int:
    """Row id of the (sha256, backend, verification) model, inserting it the first time it is seen."""
    with factory.begin() as session:
        row = session.scalar(select(ModelRecord).where(ModelRecord.sha256 == sha256, ModelRecord.backend == backend,
                                                       ModelRecord.verification == verification))
        if row is None:
            row = ModelRecord(sha256=sha256, backend=backend, precision=precision, path=path, class_names=class_names,
                              verification=verification)
            session.add(row)
            session.flush()
        return row.id


def open_station_database(cfg: StationConfig):
    """(engine, session factory, camera ids) with the schema migrated: what every CLI command starts with."""
    from inspector.db.migrate import upgrade_database
    from inspector.db.session import make_engine, make_session_factory

    engine = make_engine(cfg.db_url)
    upgrade_database(engine)
    factory = make_session_factory(engine)
    return engine, factory, ensure_station(factory, cfg)
