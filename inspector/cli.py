"""``inspector``: run the daemon, check configs, manage templates, query history, tail alarms, run the demo.

Exit codes: 0 ok, 1 runtime failure, 2 bad usage or invalid configuration (the message names file and key).
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from inspector.config import ConfigError, StationConfig, load_station_config
from inspector.review import FRAME_STATES


def parse_time(text: str) -> datetime:
    """ISO date/datetime or a relative age: ``90m``, ``24h``, ``7d``. A time without a UTC offset stays naive:
    the command reads it in its ``--timezone`` (UTC by default)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if match:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
        return datetime.now(timezone.utc) - timedelta(**{unit: float(match.group(1))})
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (use ISO 2026-01-31[T12:00][+01:00] or 24h / 7d)") from None


def parse_zone(text: str) -> ZoneInfo:
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown time zone {text!r} (an IANA name: UTC, Europe/Berlin)") from None


def _load(path: str) -> StationConfig:
    return load_station_config(Path(path))


# -- commands ------------------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from inspector.daemon import Daemon
    from inspector.logging_json import NativeStderrToJson, configure_logging

    handler = configure_logging(args.log_level)
    cfg = _load(args.config)
    with NativeStderrToJson(handler):  # the journal gets JSON only, native libraries' lines included
        try:
            return Daemon(cfg, config_path=Path(args.config)).run_forever()
        except (OSError, RuntimeError, ValueError) as exc:  # artifact missing, port taken, DB unreachable, ...
            logging.getLogger("inspector.daemon").error("inspection failed to start", extra={"fields": {
                "config": args.config, "error": f"{type(exc).__name__}: {exc}"}})
            return 1


def preflight(cfg: StationConfig) -> list[str]:
    """What would stop ``inspector run`` on this machine although the file itself is valid."""
    from inspector.backends import RUNTIMES, installed_runtimes

    problems = []
    det = cfg.detector
    if det.backend in RUNTIMES and installed_runtimes()[det.backend] is None:
        problems.append(f"detector.backend: {det.backend} is selected but the '{RUNTIMES[det.backend]}' package "
                        "is not installed on this machine")
    if det.backend in ("onnxruntime", "openvino", "tensorrt") and det.artifact:
        problems += _artifact_problems(det.backend, det.artifact)
    if det.backend == "torch" and det.artifact and not det.artifact.is_file():
        problems.append(f"detector.artifact: checkpoint {det.artifact} not found")
    if det.signing_public_key is not None and det.artifact is not None and det.artifact.is_dir():
        from engines.signing import SignatureError, verify_artifact

        try:
            verify_artifact(det.artifact, det.signing_public_key)
        except (SignatureError, ValueError, OSError) as exc:
            problems.append(f"detector.signing_public_key: the daemon would refuse this artifact: {exc}")
    if det.backend != "difference" and not det.verifies_hash:
        problems.append("detector.options.verify_hash: false: the model is loaded without checking its hash "
                        "(its results are recorded as from an unverified model)")
    for i, cam in enumerate(cfg.cameras):
        if not cam.drop_folder.is_dir():
            problems.append(f"cameras.{i}.drop_folder: {cam.drop_folder} does not exist yet (created at start)")
    if cfg.opcua.enabled:
        import importlib.util

        if importlib.util.find_spec("asyncua") is None:
            problems.append("opcua.enabled: the opcua extra is not installed (pip install 'rddn-inspector[opcua]')")
        problems += [f"opcua.certificate_users.{name}: {path} not found"
                     for name, path in cfg.opcua.certificate_users.items() if not path.is_file()]
    return problems


#: Artifact targets each artifact backend runs (OpenVINO also reads an ONNX Runtime artifact's ONNX directly).
BACKEND_TARGETS = {"onnxruntime": ("onnxruntime",), "openvino": ("openvino", "onnxruntime"), "tensorrt": ("tensorrt",)}


def _artifact_problems(backend: str, artifact: Path) -> list[str]:
    from engines.artifact import ArtifactMetadata

    if not (artifact / "metadata.json").is_file():
        return [f"detector.artifact: no metadata.json in {artifact}"]
    try:
        meta = ArtifactMetadata.load(artifact)
    except ValueError as exc:
        return [f"detector.artifact: {artifact / 'metadata.json'} is not valid artifact metadata: {exc}"]
    if meta.target not in BACKEND_TARGETS[backend]:
        return [f"detector.artifact: {artifact} is a '{meta.target}' artifact; backend {backend} runs "
                f"{' or '.join(BACKEND_TARGETS[backend])} artifacts"]
    return []


def runtimes_line() -> str:
    """Which inference runtimes are installed here, with versions (read from package metadata, nothing imported)."""
    from inspector.backends import installed_runtimes

    return ", ".join(f"{name} {version or 'not installed'}" for name, version in installed_runtimes().items())


def cmd_check_config(args: argparse.Namespace) -> int:
    from inspector.security import redact_secrets

    cfg = _load(args.file)
    for warning in cfg.exposure_warnings():  # allowed explicitly, but said every time
        print(f"{args.file}: warning: {warning}", file=sys.stderr)
    problems = preflight(cfg)
    for problem in problems:
        print(f"{args.file}: warning: {problem}", file=sys.stderr)
    if problems and args.strict:
        return 2
    cams = ", ".join(f"{c.id} ({c.observer}: {c.drop_folder})" for c in cfg.cameras)
    print(f"{args.file}: OK - station '{cfg.station}', backend {cfg.detector.backend}, cameras: {cams}, "
          f"database {redact_secrets(cfg.db_url)}")
    print(f"runtimes: {runtimes_line()}")
    return 0


def cmd_templates_add(args: argparse.Namespace) -> int:
    from inspector.db.records import open_station_database
    from inspector.templates import TemplateStore

    cfg = _load(args.config)
    engine, factory, camera_ids = open_station_database(cfg)
    try:
        store = TemplateStore(cfg, factory, camera_ids)
        if args.from_frame is not None:
            from inspector.template_learning import use_frame_as_template

            row = use_frame_as_template(store, args.from_frame, by=_user(), position=args.position)
        else:
            if args.image is None:
                raise ConfigError("templates add: give IMAGE or --from-frame FRAME_ID")
            if args.camera is None or args.position is None:
                raise ConfigError("templates add: --camera and --position are required with IMAGE")
            row = store.add(args.camera, args.position, Path(args.image))
        print(f"template {row.position} v{row.version} sha256={row.sha256[:12]} active -> {row.path}")
    finally:
        engine.dispose()
    return 0


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def cmd_templates_learn(args: argparse.Namespace) -> int:
    from inspector.db.records import open_station_database
    from inspector.template_learning import learn_template
    from inspector.templates import TemplateStore

    cfg = _load(args.config)
    engine, factory, camera_ids = open_station_database(cfg)
    try:
        store = TemplateStore(cfg, factory, camera_ids)
        learned = learn_template(store, cfg.alignment, args.camera, args.position,
                                 frames=args.frames or cfg.templates.learn_frames, since=args.since,
                                 min_frames=args.min_frames, by=_user())
    finally:
        engine.dispose()
    row, ref = learned.template, learned.reference
    shifts = [max(abs(dx), abs(dy)) for dx, dy in learned.shifts]
    asked = args.frames or cfg.templates.learn_frames
    print(f"template {row.position} v{row.version} sha256={row.sha256[:12]} active -> {row.path}\n"
          f"  median of {len(learned.frames)} OK frames (ids {', '.join(map(str, learned.frames))}), aligned to "
          f"{f'v{ref.version}' if ref is not None else 'the newest of them (no version before)'}; "
          f"|shift| up to {max(shifts):.1f} px"
          + (f"\n  only {len(learned.frames)} of the {asked} asked for were available" if len(learned.frames) < asked
             else ""))
    for reason, ids in learned.skipped.items():
        print(f"  skipped {len(ids)} frame(s): {reason} ({', '.join(map(str, ids[:10]))}{' ...' if len(ids) > 10 else ''})")
    print(f"  a running daemon uses it within templates.recheck_s = {cfg.templates.recheck_s:g} s")
    return 0


def cmd_templates_list(args: argparse.Namespace) -> int:
    from inspector.db.records import open_station_database
    from inspector.history import render
    from inspector.templates import TemplateStore

    cfg = _load(args.config)
    engine, factory, camera_ids = open_station_database(cfg)
    try:
        rows = TemplateStore(cfg, factory, camera_ids).list(args.camera, include_inactive=not args.active_only)
        records = [{"camera": cam, "position": t.position, "version": t.version, "active": t.active,
                    "sha256": t.sha256[:12], "size": f"{t.width}x{t.height}",
                    "created": t.created_at.isoformat(timespec="seconds"), "source": t.source,
                    "residual": (f"{t.residual_recent:.2f}/{t.residual_baseline:.2f}"
                                 if t.residual_recent is not None and t.residual_baseline is not None else None),
                    "frames": t.residual_frames, "drifted": t.drifted, "path": t.path}
                   for cam, t in rows]
        print(render(records, args.format))
    finally:
        engine.dispose()
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from inspector.db.migrate import upgrade_database
    from inspector.db.session import make_engine, make_session_factory
    from inspector.history import (HistoryFilter, as_records, check_names, query_history, query_review_events,
                                   render, summary_per_class, summary_per_day)

    station = args.station
    if args.db:
        url = args.db
    elif args.config:
        cfg = _load(args.config)
        url, station = cfg.db_url, station or cfg.station
    else:
        raise ConfigError("history: give --config FILE or --db URL")
    if args.limit < 1:
        raise ConfigError(f"history: --limit counts frames and must be at least 1, not {args.limit}")
    zone = args.timezone
    since, until = ((t.replace(tzinfo=zone) if t is not None and t.tzinfo is None else t)
                    for t in (args.since, args.until))
    engine = make_engine(url)
    upgrade_database(engine)
    f = HistoryFilter(station=station, camera=args.camera, position=args.position, cls=args.cls, since=since,
                      until=until, min_score=args.min_score, status=args.status, review=args.review,
                      limit=args.limit)
    try:
        with make_session_factory(engine)() as db:
            check_names(db, f)
            if args.reviews:
                print(render(query_review_events(db, f, zone), args.format))
            elif args.summary in ("class", "day", "both"):
                out: dict[str, object] = {}
                if args.summary in ("class", "both"):
                    out["per_class"] = summary_per_class(db, f)
                if args.summary in ("day", "both"):
                    out["per_day"] = summary_per_day(db, f, zone)
                if args.format == "json":
                    print(json.dumps(out, indent=2))
                else:
                    for title, records in out.items():
                        if args.format == "table":
                            print(f"== {title.replace('_', ' ')} ==")
                        print(render(records, args.format))
            else:
                print(render(as_records(query_history(db, f, zone)), args.format))
    finally:
        engine.dispose()
    return 0


def cmd_alarms_tail(args: argparse.Namespace) -> int:
    from inspector.alarms_tail import AlarmTail, format_alarm, format_result

    station = args.station
    publish, replay = args.publish, args.replay
    server_key = args.server_key
    if args.config:
        cfg = _load(args.config)
        publish, replay, station = publish or cfg.bus.publish, replay or cfg.bus.replay, station or cfg.station
        if server_key is None and cfg.bus.curve.enabled:
            server_key = cfg.bus.curve.server_secret_key  # on the daemon's host: its public half is in there
    if not publish or not replay:
        raise ConfigError("alarms tail: give --config FILE or both --publish and --replay endpoints")
    secure = None
    if server_key is not None:
        from inspector.security import secure_client

        secure = lambda sock: secure_client(sock, Path(server_key), args.client_key)  # noqa: E731

    def show(formatter):
        return lambda message: print(json.dumps(message) if args.json else formatter(message), flush=True)

    def show_status(status: dict) -> None:
        if status.get("type") != "heartbeat" or args.heartbeats:
            print(json.dumps(status) if args.json else
                  f"-- {status['type']} station={status['station']} session={status['session']} "
                  f"last_seq={status.get('last_seq')} last_result_seq={status.get('last_result_seq')}", flush=True)

    streams = "alarms and results" if args.results else "alarms"
    print(f"-- {streams} keyed on (session, seq): seq is gap-free per session and stream, a restart starts a new "
          f"session; gaps are filled from {replay}", file=sys.stderr, flush=True)
    tail = AlarmTail(publish, replay, station, show(format_alarm), show_status, after=args.after, session=args.session,
                     secure=secure, on_result=show(format_result) if args.results else None,
                     result_after=args.result_after)
    try:
        state = tail.run(args.duration)
    except KeyboardInterrupt:
        state = tail.state
    finally:
        tail.close()
    for kind, st in state.streams.items():
        print(f"-- {st.delivered} {kind}(s), {st.replayed} replayed, {st.gaps} gap(s) filled; last (session, seq) = "
              f"({st.session}, {st.last_seq})", file=sys.stderr)
    return 0


def cmd_opcua_hash_password(args: argparse.Namespace) -> int:
    """Print the hash to put under ``opcua.users.<name>`` (the password itself is never stored)."""
    import getpass

    from inspector.outputs.opcua_security import hash_password

    if args.stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("OPC UA password: ")
        if getpass.getpass("again: ") != password:
            print("error: the passwords differ", file=sys.stderr)
            return 2
    if len(password) < 8:
        print("error: use at least 8 characters", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


def cmd_opcua_certificate(args: argparse.Namespace) -> int:
    """The server certificate (made now if missing) and the client certificates trusted / rejected so far."""
    from inspector.outputs.opcua_security import certificates_in, common_name, station_server_certificate, thumbprint

    cfg = _load(args.config)
    own = station_server_certificate(cfg)
    print(f"server certificate: {own.certificate}{' (new)' if own.created else ''}\n"
          f"  thumbprint (SHA-1): {own.thumbprint}\n  valid until: {own.not_after:%Y-%m-%d}\n"
          f"  endpoint: {cfg.opcua.endpoint} ({', '.join(cfg.opcua.security_policies)}; SignAndEncrypt)")
    for kind in ("trusted", "rejected"):
        folder = cfg.opcua_pki_dir / kind / "certs"
        rows = certificates_in(folder)
        print(f"{kind} client certificates ({folder}): {len(rows) or 'none'}")
        for path, cert in rows:
            print(f"  {thumbprint(cert)}  {common_name(cert)}  until {cert.not_valid_after_utc:%Y-%m-%d}  {path.name}")
    return 0


def cmd_export_training(args: argparse.Namespace) -> int:
    from inspector.db.records import open_station_database
    from inspector.training_export import ExportError, export_training

    cfg = _load(args.config)
    engine, factory, camera_ids = open_station_database(cfg)
    try:
        s = export_training(cfg, factory, camera_ids, Path(args.out), since=args.since, until=args.until,
                            cameras=args.camera)
    except ExportError as exc:
        raise ConfigError(f"export-training: {exc}") from None
    finally:
        engine.dispose()
    boxes = ", ".join(f"{n} {k}" for k, n in sorted(s.boxes.items())) or "none"
    print(f"{s.out}: {s.pairs} reviewed pairs ({s.pairs - s.normals} with defects, {s.normals} normal: false calls "
          f"and frames confirmed clean), boxes: {boxes}; classes {s.class_names}")
    for reason, ids in s.skipped.items():
        print(f"  skipped {len(ids)} frame(s): {reason}")
    waiting = sum(s.not_exported.values())
    if waiting:
        print(f"  not exported: {waiting} frame(s) with detections still unreviewed or partly reviewed "
              f"({', '.join(f'{k} {v}' for k, v in s.not_exported.items())})")
    print(f"  train on it: data.train (or data.extra) = {{format: deeppcb, root: {s.out}}}; "
          f"evaluate: rddn eval --checkpoint C --data {s.out} --out DIR")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    if args.hash_password:
        import getpass

        from inspector.web.auth import hash_password

        password = sys.stdin.readline().rstrip("\n") if not sys.stdin.isatty() else getpass.getpass("password: ")
        print(hash_password(password))
        return 0
    if args.new_token:
        from inspector.web.auth import new_token

        token, digest = new_token()
        print(f"token (give to the client, shown once): {token}\nweb.tokens entry: sha256: {digest}")
        return 0
    if not args.config:
        raise ConfigError("serve: --config FILE is required")
    from inspector.logging_json import configure_logging
    from inspector.web.serve import serve

    configure_logging(args.log_level)
    cfg = _load(args.config)
    try:
        return serve(cfg, args.host, args.port,
                     on_ready=lambda url: print(f"review page for station '{cfg.station}': {url}", flush=True))
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def cmd_demo(args: argparse.Namespace) -> int:
    from inspector.demo.runner import run_demo

    return run_demo(args)


# -- parser --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inspector", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the inspection daemon (SIGTERM stops cleanly, SIGHUP reloads)")
    p.add_argument("--config", required=True, help="station YAML")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a station YAML without starting anything")
    p.add_argument("file")
    p.add_argument("--strict", action="store_true",
                   help="also fail (exit 2) when the artifact or a drop folder is missing on this machine")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("templates", help="template store")
    tsub = p.add_subparsers(dest="templates_command", required=True)
    t = tsub.add_parser("add", help="register a new active template version for a camera position")
    t.add_argument("--config", required=True)
    t.add_argument("--camera")
    t.add_argument("--position")
    t.add_argument("--from-frame", type=int, help="promote a stored good frame (frame id from `history`)")
    t.add_argument("image", nargs="?")
    t.set_defaults(func=cmd_templates_add)
    t = tsub.add_parser("learn", help="a new version from the N most recent OK frames (aligned, per-pixel median)")
    t.add_argument("--config", required=True)
    t.add_argument("--camera", required=True)
    t.add_argument("--position", required=True)
    t.add_argument("--frames", type=int, help="OK frames to use (default templates.learn_frames, 15)")
    t.add_argument("--since", type=parse_time, help="only frames processed since (ISO time or age: 24h, 7d)")
    t.add_argument("--min-frames", type=int, default=3, help="fail unless at least this many are usable (3)")
    t.set_defaults(func=cmd_templates_learn)
    t = tsub.add_parser("list", help="list template versions (residual: recent/baseline median, grey levels)")
    t.add_argument("--config", required=True)
    t.add_argument("--camera")
    t.add_argument("--active-only", action="store_true")
    t.add_argument("--format", choices=("table", "csv", "json"), default="table")
    t.set_defaults(func=cmd_templates_list)

    p = sub.add_parser("history", help="query results: frames/detections, per-class and per-day summaries")
    p.add_argument("--config")
    p.add_argument("--db", help="database URL (instead of --config)")
    p.add_argument("--station")
    p.add_argument("--camera")
    p.add_argument("--position")
    p.add_argument("--class", dest="cls")
    p.add_argument("--since", type=parse_time, help="ISO time or age (24h, 7d); without an offset: in --timezone")
    p.add_argument("--until", type=parse_time)
    p.add_argument("--min-score", type=float)
    p.add_argument("--status", choices=("ok", "defective", "quarantined"))
    p.add_argument("--review", choices=FRAME_STATES, help="frames in this review state")
    p.add_argument("--reviews", action="store_true",
                   help="list the review decisions (who, when, what; --since/--until: decision time)")
    p.add_argument("--limit", type=int, default=1000, help="at most this many frames (newest first), all their rows")
    p.add_argument("--timezone", type=parse_zone, default=ZoneInfo("UTC"),
                   help="show times in this zone (IANA name; default UTC); every time carries its UTC offset")
    p.add_argument("--summary", choices=("none", "class", "day", "both"), default="none")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("alarms", help="alarm bus tools")
    asub = p.add_subparsers(dest="alarms_command", required=True)
    a = asub.add_parser("tail", help="print alarms (--results: every frame's result too), keyed on (session, seq); "
                                     "fills sequence gaps from the replay endpoint")
    a.add_argument("--config")
    a.add_argument("--publish", help="PUB endpoint (instead of --config)")
    a.add_argument("--replay", help="replay endpoint (instead of --config)")
    a.add_argument("--station")
    a.add_argument("--after", type=int, help="also replay the current session's alarms after this seq (0 = all)")
    a.add_argument("--session", help="resume this session (with --after)")
    a.add_argument("--results", action="store_true", help="also print result.<station>.<camera> (every frame)")
    a.add_argument("--result-after", type=int, help="results: like --after for the result seq (default: --after)")
    a.add_argument("--duration", type=float, help="stop after this many seconds")
    a.add_argument("--heartbeats", action="store_true", help="print heartbeats too")
    a.add_argument("--json", action="store_true")
    a.add_argument("--server-key", type=Path, help="CURVE: the daemon's public key file (NAME.key)")
    a.add_argument("--client-key", type=Path, help="CURVE: this client's secret key file (NAME.key_secret)")
    a.set_defaults(func=cmd_alarms_tail)

    p = sub.add_parser("opcua", help="OPC UA server tools (users, certificates)")
    osub = p.add_subparsers(dest="opcua_command", required=True)
    o = osub.add_parser("hash-password", help="hash a password for opcua.users in the station config")
    o.add_argument("--stdin", action="store_true", help="read the password from standard input")
    o.set_defaults(func=cmd_opcua_hash_password)
    o = osub.add_parser("certificate", help="show (and make, on first use) the server certificate and trust list")
    o.add_argument("--config", required=True)
    o.set_defaults(func=cmd_opcua_certificate)

    p = sub.add_parser("export-training", help="reviewed frames + templates as a DeepPCB/COCO dataset for rddn train")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True, help="new directory to write (must not exist or be empty)")
    p.add_argument("--since", type=parse_time, help="frames processed since (ISO time or age: 24h, 7d)")
    p.add_argument("--until", type=parse_time)
    p.add_argument("--camera", action="append", help="only this camera (repeatable; default all)")
    p.set_defaults(func=cmd_export_training)

    p = sub.add_parser("serve", help="the defect review page (web; loopback unless web.users/tokens are set)")
    p.add_argument("--config", help="station YAML (its database, directories and web section)")
    p.add_argument("--host", help="listen address (default web.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default web.port, 8080; 0 picks a free one)")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--hash-password", action="store_true",
                   help="read a password (stdin or prompt) and print its hash for web.users[].password_hash")
    p.add_argument("--new-token", action="store_true", help="print a new API token and its web.tokens digest")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="a demo station on synthetic frames, with a live alarm tail")
    p.add_argument("--state", default="demo_state", help="state directory (default ./demo_state)")
    p.add_argument("--duration", type=float, default=120.0, help="seconds to run (Ctrl-C stops earlier)")
    p.add_argument("--rate", type=float, default=2.0, help="frames per second dropped into the folder")
    p.add_argument("--defect-rate", type=float, default=0.3, help="share of frames with defects")
    p.add_argument("--backend", choices=("auto", "onnxruntime", "difference"), default="auto")
    p.add_argument("--model", help="ONNX Runtime artifact dir (default: inspector/demo/model, shipped)")
    p.add_argument("--positions", type=int, default=4)
    p.add_argument("--size", type=int, default=None, help="frame side in px (default: the model's input size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-level", default="WARNING", help="daemon JSON log level on stdout (default WARNING)")
    p.add_argument("--web-port", type=int, help="review page port on 127.0.0.1 (default: a free one)")
    p.add_argument("--no-web", action="store_true", help="do not start the review page")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except ValueError as exc:
        from inspector.history import HistoryError
        from inspector.templates import TemplateError

        if isinstance(exc, (TemplateError, HistoryError)):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
