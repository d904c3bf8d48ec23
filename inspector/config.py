"""Station configuration: one YAML file per station, validated once, before anything starts.

Unknown keys are errors (a typo must not silently become a default) and every error names the file and the
dotted key, because the person reading it is standing next to a production line, not inside this code.
Relative paths are resolved against the directory of the YAML file so a config can travel with its folders.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from inspector.drift import DriftConfig
from inspector.metrics import MetricsConfig
from inspector.security import CurveSettings
from inspector.supervisor import SupervisionConfig

Severity = Literal["info", "warning", "critical"]
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}


class ConfigError(ValueError):
    """A configuration file is unreadable or invalid; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class BusConfig(_Strict):
    """ZeroMQ endpoints: PUB for alarms/heartbeats, ROUTER for replay (Clone pattern)."""

    publish: str = "tcp://127.0.0.1:5556"
    replay: str = "tcp://127.0.0.1:5557"
    heartbeat_s: float = Field(1.0, gt=0)
    curve: CurveSettings = CurveSettings()  # CURVE encryption / client-key auth (docs/operations.md)


class DetectorConfig(_Strict):
    """Which backend runs which artifact. ``artifact`` is an artifact dir (onnxruntime/tensorrt), a checkpoint
    file (torch) or empty (difference: the classical template-difference detector)."""

    backend: Literal["tensorrt", "onnxruntime", "torch", "difference"] = "onnxruntime"
    artifact: Path | None = None
    options: dict[str, object] = {}

    @model_validator(mode="after")
    def _artifact_required(self) -> "DetectorConfig":
        if self.backend != "difference" and self.artifact is None:
            raise ValueError(f"detector.artifact is required for backend '{self.backend}'")
        return self


class Thresholds(_Strict):
    """Per-class score thresholds: detections below them are dropped before storage and alarms."""

    default: float = Field(0.5, ge=0.0, le=1.0)
    classes: dict[str, float] = {}

    def for_class(self, label: str) -> float:
        return self.classes.get(label, self.default)


class AlarmRule(_Strict):
    """A detection of ``class`` (``*`` = any) with score >= min_score and box area >= min_area raises an alarm
    of ``severity``. A frame's alarm takes the highest severity among the rules its detections match."""

    cls: str = Field(alias="class")
    severity: Severity = "warning"
    min_score: float = Field(0.0, ge=0.0, le=1.0)
    min_area: float = Field(0.0, ge=0.0)

    def matches(self, label: str, score: float, area: float) -> bool:
        return (self.cls in ("*", label)) and score >= self.min_score and area >= self.min_area


class Directories(_Strict):
    """Where frames go after processing. Empty means ``<state_dir>/<name>``."""

    processed: Path | None = None
    quarantine: Path | None = None
    annotated: Path | None = None
    templates: Path | None = None


class Retention(_Strict):
    """``processed_days``/``quarantine_days``/``annotated_days``: date folders older than that are purged
    (None keeps forever). ``delete_ok_frames``: frames with no detection are deleted instead of moved."""

    processed_days: int | None = Field(None, ge=0)
    quarantine_days: int | None = Field(None, ge=0)
    annotated_days: int | None = Field(None, ge=0)
    delete_ok_frames: bool = False


class AlignmentConfig(_Strict):
    """Template-to-frame registration (the paper's Fig. 9: 5-10 px misalignment hurts TR badly)."""

    method: Literal["phase", "ecc", "none"] = "phase"
    max_shift: float = Field(32.0, ge=0)  # larger estimates are treated as failures (shift set to 0)
    downscale: int = Field(2, ge=1, le=8)  # phase correlation on a 1/downscale image: speed, sub-pixel anyway


class TemplateSettings(_Strict):
    """Template versions in a running daemon: how soon a new version is picked up, when one has drifted, and
    the defaults of ``inspector templates learn``."""

    recheck_s: float = Field(5.0, ge=0)  # the active version is re-checked (one indexed query) this often
    learn_frames: int = Field(15, ge=1, le=201)  # OK frames per learned template (per-pixel median)
    drift: DriftConfig = DriftConfig()


class CameraConfig(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    drop_folder: Path
    pattern: str = r"^(?P<position>[A-Za-z0-9-]+)_(?P<serial>[A-Za-z0-9-]+)\.(?:jpg|jpeg|png|bmp|tif|tiff)$"
    extensions: list[str] = [".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"]
    template_store: Path | None = None  # default <state_dir>/templates/<camera>
    observer: Literal["inotify", "polling"] = "inotify"
    poll_interval_s: float = Field(1.0, gt=0)
    stable_s: float = Field(0.5, ge=0)  # polling: size and mtime unchanged this long -> complete

    @field_validator("pattern")
    @classmethod
    def _pattern_has_position(cls, value: str) -> str:
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from exc
        if "position" not in compiled.groupindex:
            raise ValueError("pattern must have a named group 'position' (optional: 'serial', 'timestamp')")
        unknown = set(compiled.groupindex) - {"position", "serial", "timestamp"}
        if unknown:
            raise ValueError(f"pattern has unknown named groups {sorted(unknown)}")
        return value

    @field_validator("extensions")
    @classmethod
    def _lower_dot(cls, value: list[str]) -> list[str]:
        return [e.lower() if e.startswith(".") else "." + e.lower() for e in value]


class StationConfig(_Strict):
    station: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    state_dir: Path = Path("state")
    database_url: str | None = None  # default sqlite:///<state_dir>/inspector.db
    bus: BusConfig = BusConfig()
    detector: DetectorConfig = DetectorConfig(backend="difference")
    thresholds: Thresholds = Thresholds()
    alarm_rules: list[AlarmRule] = [AlarmRule(cls="*", severity="warning")]
    directories: Directories = Directories()
    retention: Retention = Retention()
    alignment: AlignmentConfig = AlignmentConfig()
    templates: TemplateSettings = TemplateSettings()  # hot pick-up, learning, drift (inspector.drift)
    reconcile_interval_s: float = Field(30.0, gt=0)
    queue_size: int = Field(1000, ge=1)
    workers: int = Field(2, ge=1, le=16)  # frames analysed (decode/align/detect) concurrently; commits stay serial
    save_annotated: bool = True
    metrics: MetricsConfig = MetricsConfig()  # Prometheus endpoint (loopback; port null = off)
    supervision: SupervisionConfig = SupervisionConfig()  # detector deadline/restarts, DB retry, watchdog
    cameras: list[CameraConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_cameras(self) -> "StationConfig":
        ids = [c.id for c in self.cameras]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"cameras: duplicate camera id(s) {dupes}")
        return self

    # Resolved locations: one place decides the defaults so every module agrees.
    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'inspector.db'}"

    def dir_for(self, name: Literal["processed", "quarantine", "annotated", "templates"]) -> Path:
        return getattr(self.directories, name) or self.state_dir / name

    def template_dir(self, camera: CameraConfig) -> Path:
        return camera.template_store or self.dir_for("templates") / camera.id

    def camera(self, camera_id: str) -> CameraConfig:
        for cam in self.cameras:
            if cam.id == camera_id:
                return cam
        raise KeyError(f"station '{self.station}' has no camera '{camera_id}' (have {[c.id for c in self.cameras]})")

    def severity_for(self, label: str, score: float, area: float) -> str | None:
        """Highest severity among the alarm rules this detection matches, or None."""
        best: str | None = None
        for rule in self.alarm_rules:
            if rule.matches(label, score, area) and (best is None or SEVERITY_RANK[rule.severity] > SEVERITY_RANK[best]):
                best = rule.severity
        return best


def _format_errors(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid station configuration ({exc.error_count()} error(s))"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<top level>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {path}: {key}: {msg}")
    return "\n".join(lines)


def _resolve_paths(cfg: StationConfig, base: Path) -> StationConfig:
    """Make every relative path absolute against ``base`` (the config file's directory)."""

    def fix(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else (base / p).resolve())

    dirs = cfg.directories.model_copy(update={k: fix(getattr(cfg.directories, k)) for k in Directories.model_fields})
    det = cfg.detector.model_copy(update={"artifact": fix(cfg.detector.artifact)})
    cams = [c.model_copy(update={"drop_folder": fix(c.drop_folder), "template_store": fix(c.template_store)})
            for c in cfg.cameras]
    curve = cfg.bus.curve.model_copy(update={"server_secret_key": fix(cfg.bus.curve.server_secret_key),
                                             "authorized_clients_dir": fix(cfg.bus.curve.authorized_clients_dir)})
    bus = cfg.bus.model_copy(update={"curve": curve})
    url = cfg.database_url
    if url and url.startswith("sqlite:///") and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
        url = "sqlite:///" + str(fix(Path(url[len("sqlite:///"):])))
    return cfg.model_copy(update={"state_dir": fix(cfg.state_dir), "directories": dirs, "detector": det,
                                  "cameras": cams, "database_url": url, "bus": bus})


def parse_station_config(data: object, source: Path | str = "<config>", base: Path | None = None) -> StationConfig:
    """Validate an already-loaded mapping; ``source`` names it in errors, ``base`` resolves relative paths."""
    path = Path(source)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    try:
        cfg = StationConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(path, exc)) from None
    return _resolve_paths(cfg, base if base is not None else Path.cwd())


def load_station_config(path: Path | str) -> StationConfig:
    """Read and validate a station YAML file; raises ConfigError naming the file (and key) on any problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read station configuration: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_station_config(data, path, path.resolve().parent)
