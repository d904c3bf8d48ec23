"""Real parts, no mocks: temporary folders, a real SQLite file, real ZeroMQ sockets on random loopback ports,
the real difference detector, the project's synthetic frames."""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from inspector.alarms_tail import AlarmTail
from inspector.config import StationConfig, parse_station_config
from inspector.daemon import Daemon
from inspector.demo.frames import demo_spec, encode_jpeg, make_frame, position_templates

sys.path.insert(0, str(Path(__file__).resolve().parent))  # helpers beside the tests (webkit) import by name


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s: {getattr(predicate, '__name__', predicate)}")


@pytest.fixture
def wait() -> Callable[..., object]:
    return wait_until


def station_dict(root: Path, **overrides: object) -> dict:
    data: dict = {
        "station": "teststation",
        "state_dir": str(root / "state"),
        "bus": {"publish": "tcp://127.0.0.1:*", "replay": "tcp://127.0.0.1:*", "heartbeat_s": 0.2},
        "detector": {"backend": "difference"},
        "thresholds": {"default": 0.5},
        "alarm_rules": [{"class": "*", "severity": "warning", "min_score": 0.5},
                        {"class": "defect", "severity": "critical", "min_score": 0.5, "min_area": 150}],
        "reconcile_interval_s": 1.0,
        "cameras": [{"id": "cam1", "drop_folder": str(root / "drop1"), "observer": "inotify"}],
    }
    data.update(overrides)
    return data


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., StationConfig]:
    def build(**overrides: object) -> StationConfig:
        return parse_station_config(station_dict(tmp_path, **overrides), "<test>", tmp_path)
    return build


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a station YAML (same defaults as ``make_config``) and return its path."""
    import yaml

    def write(name: str = "station.yaml", **overrides: object) -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(station_dict(tmp_path, **overrides), sort_keys=False))
        return path
    return write


def build_tiny_artifact(directory: Path, with_template: bool, size: int = 32, batch: int | str = "N") -> Path:
    """A graph honouring the contract: score = mean(|image - template|)/255 (or mean(image)/255), two
    detection slots of which ``num_detections`` = 1 are valid, fixed box (2, 4, 10, 8), label index 1.
    ``batch``: the graph's batch dimension, symbolic by default (an int gives a static batch, as exports have)."""
    import onnx
    from onnx import TensorProto, helper

    from engines.artifact import ArtifactMetadata, Preprocessing, sha256_file

    dims = [batch, 3, size, size]
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)]
    nodes = []
    if with_template:
        inputs.append(helper.make_tensor_value_info("template", TensorProto.FLOAT, dims))
        nodes += [helper.make_node("Sub", ["image", "template"], ["d"]), helper.make_node("Abs", ["d"], ["signal"])]
    else:
        nodes.append(helper.make_node("Identity", ["image"], ["signal"]))
    init = [
        helper.make_tensor("k255", TensorProto.FLOAT, [], [255.0]),
        helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
        helper.make_tensor("one", TensorProto.INT64, [1], [1]),
        helper.make_tensor("box", TensorProto.FLOAT, [1, 2, 4], [2, 4, 10, 8, 0, 0, 1, 1]),
        helper.make_tensor("lab", TensorProto.INT64, [1, 2], [1, 0]),
        helper.make_tensor("tail24", TensorProto.INT64, [2], [2, 4]),
        helper.make_tensor("tail2", TensorProto.INT64, [1], [2]),
        helper.make_tensor("count", TensorProto.INT64, [1], [1]),
    ]
    nodes += [
        helper.make_node("ReduceMean", ["signal"], ["m"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Div", ["m", "k255"], ["s"]),
        helper.make_node("Unsqueeze", ["s", "one"], ["s1"]),
        helper.make_node("Mul", ["s1", "half"], ["s2"]),
        helper.make_node("Concat", ["s1", "s2"], ["scores"], axis=1),
        helper.make_node("Shape", ["image"], ["shape"], start=0, end=1),
        helper.make_node("Concat", ["shape", "tail24"], ["bshape"], axis=0),
        helper.make_node("Concat", ["shape", "tail2"], ["lshape"], axis=0),
        helper.make_node("Expand", ["box", "bshape"], ["boxes"]),
        helper.make_node("Expand", ["lab", "lshape"], ["labels"]),
        helper.make_node("Expand", ["count", "shape"], ["num_detections"]),
    ]
    outputs = [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [batch, 2, 4]),
               helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, 2]),
               helper.make_tensor_value_info("labels", TensorProto.INT64, [batch, 2]),
               helper.make_tensor_value_info("num_detections", TensorProto.INT64, [batch])]
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(model, directory / "model.onnx")
    ArtifactMetadata(target="onnxruntime", model_file="model.onnx", class_names=["scratch", "short"],
                     preprocessing=Preprocessing(input_height=size, input_width=size, pixel_mean=(0, 0, 0),
                                                 pixel_std=(1, 1, 1)),
                     needs_template=with_template, max_detections=2,
                     model_sha256=sha256_file(directory / "model.onnx")).save(directory)
    return directory


@pytest.fixture
def tiny_artifact() -> Callable[..., Path]:
    """``tiny_artifact(dir, with_template[, size, batch])``: an ONNX Runtime artifact honouring engines/artifact.py's
    contract."""
    return build_tiny_artifact


class Frames:
    """Synthetic frames: 2 positions, 128 px, up to 4 px misregistration."""

    def __init__(self, seed: int = 0) -> None:
        self.spec = demo_spec(128, positions=2, max_shift=4, seed=seed)
        self.templates = position_templates(self.spec)
        self.rng = np.random.default_rng(seed)

    def jpeg(self, position: int, defective: bool, margin: int = 12) -> tuple[bytes, np.ndarray]:
        """A frame whose defects (if any) lie ``margin`` px inside: the difference detector ignores a border
        (alignment warps leave replicated edges), so edge defects are out of scope of these tests."""
        size = self.spec.width
        while True:
            sample = make_frame(self.spec, position, self.rng, defective)
            b = sample.boxes
            if len(b) == 0 or (b.min() >= margin and b[:, 2:].max() <= size - margin):
                return encode_jpeg(sample.image), sample.boxes

    def drop(self, folder: Path, name: str, position: int = 0, defective: bool = False,
             via_rename: bool = False) -> np.ndarray:
        """Write a frame directly or as temp name + rename (both writer styles seen on lines)."""
        data, boxes = self.jpeg(position, defective)
        folder.mkdir(parents=True, exist_ok=True)
        if via_rename:
            tmp = folder / f".{name}.tmp"
            tmp.write_bytes(data)
            os.rename(tmp, folder / name)
        else:
            (folder / name).write_bytes(data)
        return boxes


@pytest.fixture
def frames() -> Frames:
    return Frames()


@pytest.fixture
def start_daemon(frames: Frames):
    started: list[Daemon] = []

    def start(cfg: StationConfig, templates: bool = True, **kwargs) -> Daemon:
        daemon = Daemon(cfg, **kwargs)
        daemon.start()
        started.append(daemon)
        if templates:
            for cam in cfg.cameras:
                for name, image in frames.templates.items():
                    daemon.templates.add(cam.id, name, image, source="test")
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


class TailThread:
    """An AlarmTail (alarms and results) polled on a background thread; messages collected in order, each one
    validated against its committed JSON Schema as it arrives (live or replayed)."""

    def __init__(self, daemon: Daemon, after: int | None = 0, session: str | None = None,
                 validate: Callable[[dict], dict] = lambda m: m) -> None:
        assert daemon.bus is not None
        self.alarms: list[dict] = []
        self.results: list[dict] = []
        self.statuses: list[dict] = []
        self.invalid: list[tuple[dict, Exception]] = []

        def collect(into: list[dict]) -> Callable[[dict], None]:
            def take(message: dict) -> None:
                try:
                    validate(message)
                except Exception as exc:  # noqa: BLE001 - reported by the test, not lost on this thread
                    self.invalid.append((message, exc))
                into.append(message)
            return take

        self.tail = AlarmTail(daemon.bus.bound_publish, daemon.bus.bound_replay, daemon.cfg.station,
                              on_alarm=collect(self.alarms), on_status=collect(self.statuses), after=after,
                              session=session, on_result=collect(self.results))
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self.tail.run, kwargs={"should_stop": self._stop.is_set}, daemon=True)
        self.thread.start()

    def seqs(self) -> list[int]:
        return [a["seq"] for a in self.alarms]

    def result_seqs(self) -> list[int]:
        return [r["seq"] for r in self.results]

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.tail.close()
        assert not self.invalid, f"bus messages that do not match their schema: {self.invalid[:3]}"


@pytest.fixture
def tails(validate_bus_message):
    made: list[TailThread] = []

    def make(daemon: Daemon, after: int | None = 0, session: str | None = None) -> TailThread:
        t = TailThread(daemon, after, session, validate_bus_message)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()
