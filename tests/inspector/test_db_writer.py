"""One writer: every database write of the daemon (frame commits, published-alarm marks from the marker thread,
reload, the session's stop) goes through one connection, never two at once (the SQLite WAL-reset bug needs two
connections writing or checkpointing at the same time; docs/operations.md)."""
from __future__ import annotations

import threading
from collections import Counter

from sqlalchemy import Engine, event, select

from inspector.daemon import Daemon
from inspector.db import Alarm, make_engine, make_session_factory, upgrade_database
from inspector.db.records import ensure_station
from inspector.db.writer import DbWriter
from inspector.templates import TemplateStore

WRITES = ("INSERT", "UPDATE", "DELETE", "CREATE", "ALTER", "DROP", "REPLACE")


def test_every_write_of_the_daemon_goes_through_one_connection(write_config, frames, wait):
    from inspector.config import load_station_config

    path = write_config(reconcile_interval_s=0.5)
    cfg = load_station_config(path)
    setup = make_engine(cfg.db_url)  # schema and templates first, from another "process": not the daemon's writes
    upgrade_database(setup)
    factory = make_session_factory(setup)
    store = TemplateStore(cfg, factory, ensure_station(factory, cfg))
    for name, image in frames.templates.items():
        store.add("cam1", name, image)
    setup.dispose()

    writes: list[tuple[int, str, str]] = []  # (DBAPI connection, thread, statement)

    def spy(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().split(None, 1)[0].upper() in WRITES:
            writes.append((id(conn.connection.dbapi_connection), threading.current_thread().name,
                           " ".join(statement.split()[:3])))

    event.listen(Engine, "before_cursor_execute", spy)
    daemon = Daemon(cfg, config_path=path)
    try:
        daemon.start()
        drop = cfg.cameras[0].drop_folder
        for i in range(4):
            frames.drop(drop, f"P0{i % 2}_w{i}.jpg", i % 2, defective=True, via_rename=bool(i % 2))
        wait(lambda: daemon.sequencer.last_seq == 4 and daemon.wait_idle(0.1), timeout=20)
        with daemon.factory() as db:
            wait(lambda: db.scalars(select(Alarm.state)).all() == ["published"] * 4, timeout=10)
        write_config(reconcile_interval_s=0.5, cameras=[  # a camera more: reload writes it on the supervisor thread
            {"id": "cam1", "drop_folder": str(drop)}, {"id": "cam2", "drop_folder": str(drop.parent / "drop2")}])
        daemon.request_reload()
        wait(lambda: any(t == "supervisor" for _, t, _ in writes), timeout=10)
    finally:
        daemon.stop()  # the session's stop time, on this thread
        event.remove(Engine, "before_cursor_execute", spy)
    connections = Counter(c for c, _, _ in writes)
    threads = {t for _, t, _ in writes}
    assert len(connections) == 1, f"writes on {len(connections)} connections: {writes}"
    assert {"frame-worker", "bus-marker", "supervisor", "MainThread"} <= threads, threads
    statements = {s for _, _, s in writes}
    assert {"INSERT INTO frames", "INSERT INTO alarms", "UPDATE alarms SET", "UPDATE bus_sessions SET"} <= statements


def test_the_writer_survives_a_lost_connection_and_rolls_back_failures(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'w.db'}")
    upgrade_database(engine)
    writer = DbWriter(engine)
    from inspector.db import Station

    try:
        with writer.begin() as db:
            db.add(Station(id="a"))
            raise RuntimeError("a unit of work that fails")
    except RuntimeError:
        pass
    with writer.begin() as db:
        db.add(Station(id="b"))
    writer._conn.invalidate()  # the server closed it (PostgreSQL restart): the next unit opens a new one
    with writer.begin() as db:
        db.add(Station(id="c"))
    with make_session_factory(engine)() as db:
        assert sorted(db.scalars(select(Station.id))) == ["b", "c"]
    assert writer.writes == 2
    writer.close()
    engine.dispose()


def test_a_stop_during_a_reload_waits_for_it_and_leaves_no_watcher_running(write_config, wait, monkeypatch):
    """SIGTERM while the supervisor reloads a camera change: stop lets the reload finish its watcher swap, then
    stops every watcher. Before, stop iterated the watchers while the reload replaced them (RuntimeError:
    dictionary changed size during iteration) or stopped the old ones and the reload then started new ones that
    outlived the daemon."""
    from inspector.config import load_station_config
    from inspector.daemon import HealthState

    path = write_config(reconcile_interval_s=0.5)
    daemon = Daemon(load_station_config(path), config_path=path)
    daemon.start()
    started, release = threading.Event(), threading.Event()
    start_watchers = daemon._start_watchers
    swapped: list = []

    def parked_start() -> None:  # the reload, parked between stopping the old watchers and starting the new
        started.set()
        release.wait(10)
        start_watchers()
        swapped.extend(daemon.watchers.values())

    monkeypatch.setattr(daemon, "_start_watchers", parked_start)
    drop = load_station_config(path).cameras[0].drop_folder
    write_config(reconcile_interval_s=0.5, cameras=[
        {"id": "cam1", "drop_folder": str(drop)}, {"id": "cam2", "drop_folder": str(drop.parent / "drop2")}])
    daemon.request_reload()
    wait(started.is_set, timeout=10)
    stopper = threading.Thread(target=daemon.stop)
    stopper.start()
    wait(lambda: daemon.state == HealthState.STOPPING, timeout=5)
    stopper.join(0.5)  # stop has had its chance to run ahead of the parked reload
    release.set()
    stopper.join(30)
    assert not stopper.is_alive() and daemon.state == HealthState.STOPPED
    assert len(swapped) == 2 and daemon.watchers == {}
    assert not any(watcher.is_alive() for watcher in swapped)
