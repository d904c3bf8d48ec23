"""``inspector demo``: a whole station on one machine, for a newcomer's first minutes.

It writes a station config (SQLite in the state dir, loopback ZeroMQ on free ports, the CPU backend), registers
one template per position from the synthetic generator, starts the daemon, the review page (``inspector serve``
on a free loopback port, its URL printed), a feeder that drops frames at a steady rate (some defective; half
written directly, half as temp name + rename, like real camera writers) and a live alarm tail; at the end it
prints the history summary and the commands to explore further.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from inspector.alarms_tail import AlarmTail, format_alarm
from inspector.config import load_station_config
from inspector.demo.frames import demo_spec, encode_jpeg, make_frame, position_name, position_templates
from inspector.logging_json import configure_logging

DEMO_MODEL_DIR = Path(__file__).resolve().parent / "model"
DEFAULT_SIZE = 256
log = logging.getLogger("inspector.demo")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def choose_backend(requested: str, model_dir: Path = DEMO_MODEL_DIR) -> tuple[dict[str, object], int | None]:
    """(detector section, model input size or None). ``auto``: the shipped ONNX model if present, otherwise the
    classical difference detector, said loudly."""
    model_dir = Path(model_dir).resolve()
    metadata = model_dir / "metadata.json"
    if requested in ("auto", "onnxruntime") and metadata.is_file():
        from engines.artifact import ArtifactMetadata

        meta = ArtifactMetadata.load(model_dir)
        return {"backend": "onnxruntime", "artifact": str(model_dir)}, meta.preprocessing.input_height
    if requested == "onnxruntime":
        print(f"demo: no demo model at {model_dir} (metadata.json + model.onnx); "
              "falling back to --backend difference", file=sys.stderr)
    elif requested == "auto":
        print(f"demo: no demo model installed at {model_dir}; using the classical template-difference "
              "detector (--backend difference) instead", file=sys.stderr)
    if requested != "difference":
        log.warning("demo model missing, falling back to the difference backend", extra={"fields": {
            "expected": str(metadata)}})
    return {"backend": "difference", "options": {"threshold": 40, "min_area": 12}}, None


def write_demo_config(state: Path, detector: dict[str, object], web_port: int = 8080) -> Path:
    state.mkdir(parents=True, exist_ok=True)
    config = {
        "station": "demo",
        "state_dir": ".",
        "bus": {"publish": f"tcp://127.0.0.1:{free_port()}", "replay": f"tcp://127.0.0.1:{free_port()}",
                "heartbeat_s": 1.0},
        "detector": detector,
        "thresholds": {"default": 0.5},
        "alarm_rules": [{"class": "*", "severity": "warning", "min_score": 0.5},
                        {"class": "*", "severity": "critical", "min_score": 0.8, "min_area": 200}],
        "reconcile_interval_s": 10,
        "web": {"port": web_port},
        "cameras": [{"id": "cam1", "drop_folder": "drop/cam1", "observer": "inotify"}],
    }
    path = state / "station.yaml"
    path.write_text("# written by `inspector demo`; try: inspector check-config " + str(path) + "\n"
                    + yaml.safe_dump(config, sort_keys=False))
    return path


class Feeder(threading.Thread):
    """Drops synthetic frames into the drop folder at ``rate`` per second."""

    def __init__(self, folder: Path, spec, rate: float, defect_rate: float, seed: int) -> None:
        super().__init__(name="demo-feeder", daemon=True)
        self.folder, self.spec, self.rate, self.defect_rate = folder, spec, rate, defect_rate
        self.rng = np.random.default_rng(seed)
        self.stop_event = threading.Event()
        self.dropped = 0
        self.defective = 0
        self.serial = int(time.time()) % 1_000_000 * 100

    def run(self) -> None:
        period = 1.0 / self.rate
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            index = int(self.rng.integers(self.spec.positions))
            defective = bool(self.rng.random() < self.defect_rate)
            sample = make_frame(self.spec, index, self.rng, defective)
            self.serial += 1
            name = f"{position_name(index)}_{self.serial:08d}.jpg"
            data = encode_jpeg(sample.image)
            if self.dropped % 2:
                tmp = self.folder / f".{name}.part"
                tmp.write_bytes(data)
                os.rename(tmp, self.folder / name)
            else:
                (self.folder / name).write_bytes(data)
            self.dropped += 1
            self.defective += int(len(sample.boxes) > 0)
            next_at += period
            self.stop_event.wait(max(0.0, next_at - time.monotonic()))


def start_review_page(cfg):
    """The review page on a thread beside the daemon, or None (said why) when the ``web`` extra is missing."""
    try:
        from inspector.web.serve import BackgroundServer
    except ImportError as exc:
        print(f"demo: review page not started ({exc}); install the web extra: pip install -e '.[web]'",
              file=sys.stderr)
        return None
    return BackgroundServer(cfg).start()


def run_demo(args: argparse.Namespace) -> int:
    from inspector.cli import main as cli_main
    from inspector.daemon import Daemon

    configure_logging(args.log_level)
    state = Path(args.state).resolve()
    detector, model_size = choose_backend(args.backend, Path(args.model) if args.model else DEMO_MODEL_DIR)
    config_path = write_demo_config(state, detector, args.web_port or free_port())
    cfg = load_station_config(config_path)
    size = args.size or model_size or DEFAULT_SIZE
    spec = demo_spec(size, positions=args.positions, max_shift=6, seed=args.seed)

    daemon = Daemon(cfg, config_path=config_path)
    daemon.start()
    for name, image in position_templates(spec).items():
        daemon.templates.add("cam1", name, image, source="demo synthetic generator")
    print(f"demo: station 'demo' running ({cfg.detector.backend} backend, {size}x{size} frames, "
          f"{args.positions} positions); alarms on {cfg.bus.publish}, replay on {cfg.bus.replay}")
    page = start_review_page(cfg) if not args.no_web else None
    if page is not None:
        print(f"demo: review page on {page.url} (alarms, crops beside the aligned template, confirm / false call "
              "with the keyboard; `?` lists the keys)")
    print(f"demo: dropping {args.rate:g} frames/s into {cfg.cameras[0].drop_folder} for {args.duration:g} s "
          "(Ctrl-C stops)\n", flush=True)

    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    tail = AlarmTail(cfg.bus.publish, cfg.bus.replay, cfg.station,
                     on_alarm=lambda a: print(format_alarm(a), flush=True), after=0)
    tail_thread = threading.Thread(target=tail.run, kwargs={"should_stop": stop.is_set}, daemon=True)
    tail_thread.start()
    feeder = Feeder(cfg.cameras[0].drop_folder, spec, args.rate, args.defect_rate, args.seed)
    feeder.start()
    try:
        stop.wait(args.duration)
    except KeyboardInterrupt:
        print("\ndemo: stopping (Ctrl-C)", flush=True)
    finally:
        feeder.stop_event.set()
        feeder.join(5)
        daemon.drain(30)
        time.sleep(0.3)  # let the tail receive the last alarms
        stop.set()
        tail_thread.join(5)
        tail.close()
        daemon.stop()
        if page is not None:
            page.stop()
        signal.signal(signal.SIGTERM, previous)

    print(f"\ndemo: {feeder.dropped} frames dropped ({feeder.defective} with defects), "
          f"{tail.state.delivered} alarms received ({tail.state.replayed} via replay)\n")
    print("== inspector history --summary both ==", flush=True)
    cli_main(["history", "--config", str(config_path), "--summary", "both"])
    print("\n== inspector history --limit 8 ==", flush=True)
    cli_main(["history", "--config", str(config_path), "--limit", "8"])
    print(f"\nExplore: inspector serve --config {config_path}   (the review page, http://127.0.0.1:{cfg.web.port}/)\n"
          f"         inspector history --config {config_path} [--class C] [--since 1h] [--format csv|json]\n"
          f"         inspector templates list --config {config_path}\n"
          f"         inspector run --config {config_path}   (then: inspector alarms tail --config {config_path})")
    return 0
