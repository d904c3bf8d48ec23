"""Review page at scale: fill a results database with N frames (default 1,000,000) and time the page's queries.

The fill looks like a month of a real line: 2 cameras x 8 positions, a frame every 2.6 s, 90 % OK,
9.5 % defective (1-3 detections of 6 classes, one class rare), 0.5 % quarantined, an alarm per defective frame
(20 % critical), a third of the older defective frames reviewed (events + summaries as the page writes them).

Then, for each list filter, the first page, a page deep in the history (a cursor half-way back: keyset paging
must cost the same there), the tab badges, the filter menus, the live view's refresh and the trend figures are
timed through the same functions the page calls (``inspector.web.listing`` / ``trends``); also whole HTTP
requests per route through the ASGI app, and the CSV export of a week.

    .venv/bin/python benchmarks/review_page.py                        # 1M frames, SQLite in a temp dir
    .venv/bin/python benchmarks/review_page.py --frames 200000 --keep /tmp/review.db
    .venv/bin/python benchmarks/review_page.py --db postgresql+psycopg://postgres@127.0.0.1:55432/bench

Prints a markdown table (median / p95 ms over --repeat runs); --out writes it to a file.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import func, insert, select, text  # noqa: E402

from inspector.config import parse_station_config  # noqa: E402
from inspector.db.migrate import upgrade_database  # noqa: E402
from inspector.db.models import (Alarm, BusSession, DetectionRow, Frame, FrameReview, ModelRecord,  # noqa: E402
                                 ReviewEvent)
from inspector.db.records import ensure_station  # noqa: E402
from inspector.db.session import make_engine, make_session_factory  # noqa: E402
from inspector.web import listing, trends  # noqa: E402

CLASSES = ("open", "short", "mousebite", "spur", "copper", "pin-hole")
CLASS_P = np.array([0.3, 0.25, 0.2, 0.15, 0.09, 0.01])
POSITIONS = [f"P{i:02d}" for i in range(8)]
CHUNK = 20_000


def fill(factory, engine, cfg, n: int, seed: int, end: datetime) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    cams = ensure_station(factory, cfg)
    cam_ids = [cams[c.id] for c in cfg.cameras]
    with factory.begin() as db:
        model = ModelRecord(sha256="b" * 64, backend="onnxruntime", precision="fp32", class_names=list(CLASSES))
        session = BusSession(id=str(uuid.uuid4()), station_id=cfg.station, last_seq=0)
        db.add_all([model, session])
        db.flush()
        model_id, session_id = model.id, session.id
    period = 2.6  # seconds between frames of the station: 1M frames ~ 30 days
    start = end - timedelta(seconds=period * n)
    frame_id = det_id = seq = event_id = 0
    reviewed_before = end - timedelta(days=1)
    t0 = time.perf_counter()
    for base in range(0, n, CHUNK):
        m = min(CHUNK, n - base)
        status = rng.choice(["ok", "defective", "quarantined"], size=m, p=[0.9, 0.095, 0.005])
        frames, dets, alarms, events, reviews = [], [], [], [], []
        for i in range(m):
            frame_id += 1
            when = start + timedelta(seconds=period * (base + i))
            cam = cam_ids[(base + i) % len(cam_ids)]
            pos = POSITIONS[int(rng.integers(len(POSITIONS)))]
            st = str(status[i])
            frames.append(dict(id=frame_id, camera_id=cam, name=f"{pos}_{frame_id:09d}.jpg",
                               sha256=f"{frame_id:064x}", position=pos, serial=f"{frame_id:09d}", status=st,
                               reason="corrupt: truncated .jpg file" if st == "quarantined" else None,
                               source_path=f"/drop/{frame_id}.jpg", stored_path=f"/processed/{frame_id}.jpg",
                               processed_at=when, model_id=model_id, shift_x=0.5, shift_y=-0.5,
                               align_response=0.9, latency_ms=20.0, template_id=None))
            if st != "defective":
                continue
            k = int(rng.integers(1, 4))
            ids = []
            for c in rng.choice(len(CLASSES), size=k, p=CLASS_P):
                det_id += 1
                ids.append(det_id)
                x, y = rng.uniform(0, 600, 2)
                dets.append(dict(id=det_id, frame_id=frame_id, class_id=int(c), class_name=CLASSES[int(c)],
                                 score=float(rng.uniform(0.5, 1.0)), x1=x, y1=y, x2=x + 20, y2=y + 20))
            seq += 1
            severity = "critical" if rng.random() < 0.2 else "warning"
            alarms.append(dict(session_id=session_id, seq=seq, frame_id=frame_id, severity=severity,
                               state="published", payload="{}", created_at=when))
            if when < reviewed_before and rng.random() < 0.33:
                false = rng.random() < 0.3
                event_id += 1
                events.append(dict(id=event_id, frame_id=frame_id, action="false_call" if false else "confirm",
                                   reviewer="ann", created_at=when + timedelta(hours=2)))
                reviews.append(dict(frame_id=frame_id, state="false_call" if false else "confirmed",
                                    processed_at=when, confirmed=0 if false else k, false_calls=k if false else 0,
                                    reclassified=0, missed=0, pending=0, events=1, last_reviewer="ann",
                                    reviewed_at=when + timedelta(hours=2)))
        with engine.begin() as conn:
            conn.execute(insert(Frame.__table__), frames)
            for table, rows in ((DetectionRow.__table__, dets), (Alarm.__table__, alarms),
                                (ReviewEvent.__table__, events), (FrameReview.__table__, reviews)):
                if rows:
                    conn.execute(insert(table), rows)
        done = base + m
        if done % 200_000 == 0 or done == n:
            print(f"  filled {done:,} frames ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            for table in ("frames", "detections", "alarms", "review_events"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                  f"(SELECT max(id) FROM {table}))"))
            conn.execute(text("ANALYZE"))
        else:
            conn.execute(text("ANALYZE"))
    return {"frames": n, "detections": det_id, "alarms": seq, "reviews": event_id,
            "fill_s": round(time.perf_counter() - t0, 1), "start": start}


def timed(fn, repeat: int) -> str:
    """'wall median / p95 (CPU median)' in ms. CPU is this process's time: on SQLite it is the query's whole
    cost, independent of what else runs on the machine; wall includes waiting for the CPU (and the server)."""
    fn()  # warm (statement cache, OS page cache)
    wall, cpu = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t) * 1000.0)
        cpu.append((time.process_time() - c) * 1000.0)
    wall.sort()
    p95 = wall[min(len(wall) - 1, int(round(0.95 * (len(wall) - 1))))]
    return f"{statistics.median(wall):.1f} / {p95:.1f} ({statistics.median(cpu):.1f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--db", help="database URL (default: SQLite in a temp dir)")
    parser.add_argument("--keep", type=Path, help="SQLite file to fill (kept; reused if it already has frames)")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="review_bench_"))
    url = args.db or f"sqlite:///{args.keep or tmp / 'review.db'}"
    cfg = parse_station_config({"station": "bench", "state_dir": str(tmp), "database_url": url,
                                "cameras": [{"id": "cam1", "drop_folder": str(tmp / "d1")},
                                            {"id": "cam2", "drop_folder": str(tmp / "d2")}]}, "<bench>", tmp)
    engine = make_engine(url)
    upgrade_database(engine)
    factory = make_session_factory(engine)
    end = datetime(2026, 6, 1, tzinfo=timezone.utc)
    with factory() as db:
        existing = db.scalar(select(Frame.id).order_by(Frame.id.desc()).limit(1)) or 0
    if existing:
        with factory() as db:
            info = {"frames": existing, "fill_s": "(reused)",
                    **{name: db.scalar(select(func.count()).select_from(table)) for name, table in (
                        ("detections", DetectionRow), ("alarms", Alarm), ("reviews", FrameReview))}}
        print(f"reusing {existing:,} frames in {url}", file=sys.stderr)
    else:
        print(f"filling {args.frames:,} frames into {url.split('@')[-1]}", file=sys.stderr, flush=True)
        info = fill(factory, engine, cfg, args.frames, args.seed, end)

    with factory() as db:
        newest = db.scalar(select(Frame).order_by(Frame.processed_at.desc(), Frame.id.desc()).limit(1))
        middle_id = newest.id // 2
        middle = db.get(Frame, middle_id)
    deep = str(middle.id)
    day = timedelta(days=1)
    filters = {
        "all frames": listing.ListFilter(),
        "alarms (tab)": listing.ListFilter(kind="alarms"),
        "defective, unreviewed": listing.ListFilter(kind="defective", review="unreviewed"),
        "camera cam2": listing.ListFilter(camera="cam2"),
        "camera + position": listing.ListFilter(camera="cam1", position="P03"),
        "class open": listing.ListFilter(cls="open"),
        "class pin-hole (1 % of detections)": listing.ListFilter(cls="pin-hole"),
        "severity critical": listing.ListFilter(severity="critical"),
        "status quarantined": listing.ListFilter(status="quarantined"),
        "review false_call": listing.ListFilter(review="false_call"),
        "last 24 h, defective": listing.ListFilter(kind="defective", since=end - day),
        "a day 2 weeks ago": listing.ListFilter(since=end - 14 * day, until=end - 13 * day),
        "pos P05 + class short + critical": listing.ListFilter(position="P05", cls="short", severity="critical"),
    }
    lines = ["ms: wall median / p95 (CPU median)", "",
             "| list filter | first page | page at the middle of the history |", "| --- | --- | --- |"]
    with factory() as db:
        for name, f in filters.items():
            first = timed(lambda: listing.page(db, f, None, 50), args.repeat)
            middle_page = timed(lambda: listing.page(db, f, deep, 50), args.repeat)
            lines.append(f"| {name} | {first} | {middle_page} |")
            print(lines[-1], file=sys.stderr, flush=True)
        other = [
            ("tab badges (unreviewed alarms/detections, last 24 h)",
             lambda: listing.counts(db, listing.ListFilter(), now=end)),
            ("tab badges over a 7-day range", lambda: listing.counts(db, listing.ListFilter(since=end - 7 * day))),
            ("filter menus (facets)", lambda: listing.facets(db)),
            ("live refresh (rows newer than the top)",
             lambda: listing.page(db, listing.ListFilter(), None, 50, newer_than=newest.id - 3)),
            ("trend: defects per hour, 48 h", lambda: trends.defects_per_hour(db, listing.ListFilter(until=end))),
            ("trend: false-call rate per day, 30 d",
             lambda: trends.false_call_rate_per_day(db, listing.ListFilter(until=end))),
            ("trend: per-position heat map, 24 h", lambda: trends.position_heatmap(db, listing.ListFilter(until=end))),
            ("trend: per-position heat map, 7 d",
             lambda: trends.position_heatmap(db, listing.ListFilter(since=end - 7 * day, until=end))),
        ]
        lines += ["", "| other query | ms |", "| --- | --- |"]
        for name, fn in other:
            lines.append(f"| {name} | {timed(fn, max(3, args.repeat // 4))} |")
            print(lines[-1], file=sys.stderr, flush=True)
    http, export = http_figures(cfg, engine, args.repeat, newest.id)
    lines += ["", "| HTTP request (ASGI app, in process) | ms |", "| --- | --- |"]
    lines += [f"| {name} | {figure} |" for name, figure in http.items()]
    lines += ["", export]
    load = os.getloadavg()
    header = (f"{info['frames']:,} frames ({info.get('detections', '?')} detections, {info.get('alarms', '?')} alarms, "
              f"{info.get('reviews', '?')} reviewed), {engine.dialect.name}, fill {info['fill_s']} s, "
              f"{args.repeat} repeats, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on "
              f"{os.cpu_count()} CPUs")
    out = "\n".join([header, "", *lines])
    print(out)
    if args.out:
        args.out.write_text(out + "\n")
    engine.dispose()
    return 0


def http_figures(cfg, engine, repeat: int, newest_id: int) -> tuple[dict[str, str], str]:
    """Whole requests (routing, auth, query, template rendering) through the ASGI app, without a socket."""
    from fastapi.testclient import TestClient

    from inspector.web.app import create_app

    cfg = cfg.model_copy(update={"web": cfg.web.model_copy(update={"live": "poll", "poll_interval_s": 60})})
    with TestClient(create_app(cfg, engine=engine), base_url="http://127.0.0.1") as client:
        day = "since=2026-05-31T00:00"  # the fill ends 2026-06-01: the operator's last 24 h
        routes = {"GET / (alarms tab, last 24 h, first page)": f"/?kind=alarms&{day}",
                  "GET /ui/rows (unreviewed defective, last 24 h)": f"/ui/rows?kind=defective&review=unreviewed&{day}",
                  "GET /ui/frames/{id} (frame panel)": f"/ui/frames/{newest_id}",
                  "GET /api/frames?class=pin-hole": "/api/frames?class=pin-hole",
                  "GET /trends (48 h / 30 d / 24 h windows)": "/trends?until=2026-06-01T00:00"}
        out = {}
        for name, path in routes.items():
            def get(path=path):
                response = client.get(path)
                assert response.status_code == 200, (path, response.status_code, response.text[:200])
            out[name] = timed(get, max(3, repeat // 4))
        t, c = time.perf_counter(), time.process_time()
        body = client.get("/export.csv?kind=defective&since=2026-05-25T00:00&until=2026-06-01T00:00").text
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        rows = body.count("\n") - 1
    export = (f"CSV export (GET /export.csv, defective frames of one week, streamed in keyset pages of "
              f"{listing.MAX_PAGE}): {rows:,} rows in {wall:.1f} s wall, {cpu:.1f} s CPU ({rows / cpu:,.0f} rows per "
              "CPU-second)")
    return out, export


if __name__ == "__main__":
    sys.exit(main())
