"""Station configuration: one YAML file per station, validated once, before anything starts.

Unknown keys are errors (a typo must not silently become a default) and every error names the file and the
dotted key, because the person reading it is standing next to a production line, not inside this code.
Relative paths are resolved against the directory of the YAML file so a config can travel with its folders.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from inspector.drift import DriftConfig
from inspector.metrics import MetricsConfig
from inspector.outputs.zeromq_replay import ReplayLimits
from inspector.security import (ConnectionLimits, CurveSettings, check_exposure, is_loopback_host,
                                reachable_from_network)
from inspector.supervisor import SupervisionConfig
from inspector.web.config import WebConfig

Severity = Literal["info", "warning", "critical"]
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}


class ConfigError(ValueError):
    """A configuration file is unreadable or invalid; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# Names that become path components (station, camera id, template position): letters, digits, '_', '.', '-',
# not starting with '.' (so never '.', '..' or a hidden file), at most 64 characters.
SAFE_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"
_SAFE_NAME_RE = re.compile(SAFE_NAME)


def check_path_name(what: str, value: str) -> str:
    """``value`` if it is a safe single path component (see ``SAFE_NAME``), else a ValueError naming ``what``."""
    if not _SAFE_NAME_RE.fullmatch(value):
        raise ValueError(f"{what} {value!r}: use 1-64 letters, digits, '_', '.', '-', not starting with '.' "
                         "(it becomes a directory name)")
    return value


class BusConfig(_Strict):
    """ZeroMQ endpoints: PUB for alarms/heartbeats, ROUTER for replay (Clone pattern)."""

    publish: str = "tcp://127.0.0.1:5556"
    replay: str = "tcp://127.0.0.1:5557"
    heartbeat_s: float = Field(1.0, gt=0)
    curve: CurveSettings = CurveSettings()  # CURVE encryption / client-key auth (docs/operations.md)
    replay_limits: ReplayLimits = ReplayLimits()  # page size, request size, per-peer rate (docs/operations.md)
    allow_plaintext: bool = False  # bind beyond loopback without CURVE: refused unless true (then warned)
    connections: ConnectionLimits = ConnectionLimits()  # caps and deadlines against connection floods

    @model_validator(mode="after")
    def _exposure(self) -> "BusConfig":
        self.exposure_warnings()  # raises for a non-loopback endpoint without CURVE and without allow_plaintext
        return self

    def exposure_warnings(self) -> list[str]:
        """What ``check-config`` and every daemon start warn about (see ``inspector.security.check_exposure``)."""
        how = "Enable bus.curve with authorized_clients_dir (docs/operations.md, 'Alarm bus security')."
        warnings = [check_exposure(f"bus.{key}", getattr(self, key), secured=self.curve.enabled,
                                   allow_plaintext=self.allow_plaintext, allow_key="bus.allow_plaintext",
                                   how_to_secure=how) for key in ("publish", "replay")]
        if self.curve.enabled and self.curve.authorized_clients_dir is None and any(
                reachable_from_network(getattr(self, k)) for k in ("publish", "replay")):
            warnings.append("bus.curve: encryption only (no authorized_clients_dir): any client holding the "
                            "server's public key is served; list the allowed client keys in authorized_clients_dir")
        return [w for w in warnings if w]


OpcUaPolicy = Literal["Aes256_Sha256_RsaPss", "Aes128_Sha256_RsaOaep", "Basic256Sha256"]
# What ``inspector opcua hash-password`` writes (inspector.outputs.opcua_security): scrypt$N$r$p$salt$key, base64.
PASSWORD_HASH_RE = re.compile(r"^scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9+/]+=*)\$([A-Za-z0-9+/]+=*)$")


class OpcUaConfig(_Strict):
    """OPC UA server for the line's PLCs (an OPC 40100 Machine Vision subset, docs/operations.md). Off unless
    ``enabled``; every endpoint is SignAndEncrypt with the listed policies; a client needs a trusted application
    certificate (``<pki_dir>/trusted/certs``) and a user: name + password hash, or an X.509 user certificate."""

    enabled: bool = False
    endpoint: str = "opc.tcp://127.0.0.1:4840/rddn-inspector"  # loopback unless you mean the network
    security_policies: list[OpcUaPolicy] = Field(
        default_factory=lambda: ["Aes256_Sha256_RsaPss", "Aes128_Sha256_RsaOaep", "Basic256Sha256"], min_length=1)
    users: dict[str, str] = {}  # user name -> password hash (inspector opcua hash-password)
    certificate_users: dict[str, Path] = {}  # user name -> that user's X.509 certificate (PEM or DER)
    allow_anonymous: bool = False
    trust_all_clients: bool = False  # accept any client application certificate (users still authenticate)
    pki_dir: Path | None = None  # default <state_dir>/opcua/pki: own/ (server key, 0600), trusted/, rejected/
    max_sessions: int = Field(16, ge=1, le=256)
    result_queue: int = Field(1000, ge=1, le=100_000)  # results waiting for the server thread; oldest dropped

    @field_validator("endpoint")
    @classmethod
    def _endpoint_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "opc.tcp" or not parts.hostname or parts.port is None:
            raise ValueError(f"endpoint must look like opc.tcp://HOST:PORT/PATH, got {value!r}")
        return value

    @field_validator("users")
    @classmethod
    def _password_hashes(cls, value: dict[str, str]) -> dict[str, str]:
        bad = sorted(name for name, digest in value.items() if not PASSWORD_HASH_RE.match(digest))
        if bad:
            raise ValueError(f"users {bad}: not a password hash; store the output of `inspector opcua "
                             "hash-password`, never the password itself")
        return value

    @model_validator(mode="after")
    def _someone_can_log_in(self) -> "OpcUaConfig":
        if self.enabled and not (self.users or self.certificate_users or self.allow_anonymous):
            raise ValueError("opcua is enabled but nobody can log in: add users or certificate_users "
                             "(or allow_anonymous: true)")
        if self.allow_anonymous and self.trust_all_clients and not self.loopback:
            raise ValueError("allow_anonymous with trust_all_clients on a non-loopback endpoint would let anyone "
                             "on the network read results; keep one of them off")
        return self

    @property
    def loopback(self) -> bool:
        return is_loopback_host(urlsplit(self.endpoint).hostname or "")


class DetectorConfig(_Strict):
    """Which backend runs which artifact. ``artifact`` is an artifact dir (onnxruntime/openvino/tensorrt), a
    checkpoint file (torch) or empty (difference: the classical template-difference detector). ``options`` go to
    the backend (e.g. ``intra_op_threads`` for onnxruntime, ``threads``/``performance_hint`` for openvino)."""

    backend: Literal["tensorrt", "onnxruntime", "openvino", "torch", "difference"] = "onnxruntime"
    artifact: Path | None = None
    options: dict[str, object] = {}
    # Ed25519 public key (PEM or OpenSSH): the artifact must carry a valid signature by it (rddn compile --sign-key)
    signing_public_key: Path | None = None

    @model_validator(mode="after")
    def _artifact_required(self) -> "DetectorConfig":
        if self.backend != "difference" and self.artifact is None:
            raise ValueError(f"detector.artifact is required for backend '{self.backend}'")
        if self.signing_public_key is not None:
            if self.backend not in ("onnxruntime", "tensorrt"):
                raise ValueError(f"detector.signing_public_key: backend '{self.backend}' loads no signed artifact "
                                 "(signatures cover onnxruntime/tensorrt artifact directories)")
            if not self.verifies_hash:
                raise ValueError("detector.options.verify_hash: false contradicts detector.signing_public_key "
                                 "(a signed artifact is always checked file by file)")
        return self

    @property
    def verifies_hash(self) -> bool:
        """False when ``options.verify_hash: false`` (the model file is loaded without checking its sha256)."""
        return self.options.get("verify_hash", True) is not False


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
    id: str = Field(pattern=SAFE_NAME)  # becomes a directory name under processed/, quarantine/, templates/
    drop_folder: Path
    pattern: str = r"^(?P<position>[A-Za-z0-9-]+)_(?P<serial>[A-Za-z0-9-]+)\.(?:jpg|jpeg|png|bmp|tif|tiff)$"
    extensions: list[str] = [".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"]
    template_store: Path | None = None  # default <state_dir>/templates/<camera>
    observer: Literal["inotify", "polling"] = "inotify"
    poll_interval_s: float = Field(1.0, gt=0)
    # A frame is taken once its size, mtime and ctime have been unchanged for ``stable_s`` (whatever the observer:
    # a close event alone proves nothing) and its bytes are whole; a file that stays unchanged but not whole for
    # ``incomplete_after_s`` is quarantined as incomplete.
    stable_s: float = Field(0.5, gt=0)
    incomplete_after_s: float = Field(30.0, gt=0)
    timestamp_timezone: str = "UTC"  # zone of timestamps in names that carry no UTC offset (IANA name)

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

    @field_validator("timestamp_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone '{value}' (use an IANA name such as UTC or Europe/Berlin)") from None
        return value

    @model_validator(mode="after")
    def _incomplete_after_settle(self) -> "CameraConfig":
        if self.incomplete_after_s < self.stable_s:
            raise ValueError(f"incomplete_after_s ({self.incomplete_after_s}) must be at least stable_s "
                             f"({self.stable_s})")
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timestamp_timezone)


class StationConfig(_Strict):
    station: str = Field(pattern=SAFE_NAME)
    state_dir: Path = Path("state")
    database_url: str | None = None  # default sqlite:///<state_dir>/inspector.db
    bus: BusConfig = BusConfig()
    opcua: OpcUaConfig = OpcUaConfig()  # OPC UA Machine Vision server for PLCs (off by default)
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
    web: WebConfig = WebConfig()  # the review page (`inspector serve`): loopback unless logins are configured
    cameras: list[CameraConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_cameras(self) -> "StationConfig":
        ids = [c.id for c in self.cameras]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"cameras: duplicate camera id(s) {dupes}")
        return self

    def exposure_warnings(self) -> list[str]:
        """Listeners reachable from the network without authentication (allowed explicitly): warned at start."""
        return self.bus.exposure_warnings() + self.metrics.exposure_warnings()

    # Resolved locations: one place decides the defaults so every module agrees.
    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'inspector.db'}"

    @property
    def opcua_pki_dir(self) -> Path:
        return self.opcua.pki_dir or self.state_dir / "opcua" / "pki"

    def dir_for(self, name: Literal["processed", "quarantine", "annotated", "templates"]) -> Path:
        return getattr(self.directories, name) or self.state_dir / name

    def template_dir(self, camera: CameraConfig) -> Path:
        return camera.template_store or self.dir_for("templates") / camera.id

    def camera(self, camera_id: str) -> CameraConfig:
        for cam in self.cameras:
            if cam.id == camera_id:
                return cam
        raise KeyError(f"station '{self.station}' has no camera '{camera_id}' (have {[c.id for c in self.cameras]})")

    def alarm_rule_for(self, label: str, score: float, area: float) -> int | None:
        """Index of the first alarm rule of the highest severity this detection matches, or None."""
        best: int | None = None
        for i, rule in enumerate(self.alarm_rules):
            if rule.matches(label, score, area) and (
                    best is None or SEVERITY_RANK[rule.severity] > SEVERITY_RANK[self.alarm_rules[best].severity]):
                best = i
        return best

    def severity_for(self, label: str, score: float, area: float) -> str | None:
        """Highest severity among the alarm rules this detection matches, or None."""
        index = self.alarm_rule_for(label, score, area)
        return None if index is None else self.alarm_rules[index].severity


def _format_errors(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid station configuration ({exc.error_count()} error(s))"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<top level>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        msg = msg.removeprefix("Value error, ")
        lines.append(f"  {path}: {key}: {msg}")
    return "\n".join(lines)


def _resolve_paths(cfg: StationConfig, base: Path) -> StationConfig:
    """Make every relative path absolute against ``base`` (the config file's directory)."""

    def fix(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else (base / p).resolve())

    dirs = cfg.directories.model_copy(update={k: fix(getattr(cfg.directories, k)) for k in Directories.model_fields})
    det = cfg.detector.model_copy(update={"artifact": fix(cfg.detector.artifact),
                                          "signing_public_key": fix(cfg.detector.signing_public_key)})
    cams = [c.model_copy(update={"drop_folder": fix(c.drop_folder), "template_store": fix(c.template_store)})
            for c in cfg.cameras]
    curve = cfg.bus.curve.model_copy(update={"server_secret_key": fix(cfg.bus.curve.server_secret_key),
                                             "authorized_clients_dir": fix(cfg.bus.curve.authorized_clients_dir)})
    bus = cfg.bus.model_copy(update={"curve": curve})
    opcua = cfg.opcua.model_copy(update={"pki_dir": fix(cfg.opcua.pki_dir), "certificate_users": {
        name: fix(path) for name, path in cfg.opcua.certificate_users.items()}})
    web = cfg.web.model_copy(update={"tls_certfile": fix(cfg.web.tls_certfile), "tls_keyfile": fix(cfg.web.tls_keyfile)})
    url = cfg.database_url
    if url and url.startswith("sqlite:///") and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
        url = "sqlite:///" + str(fix(Path(url[len("sqlite:///"):])))
    return cfg.model_copy(update={"state_dir": fix(cfg.state_dir), "directories": dirs, "detector": det,
                                  "cameras": cams, "database_url": url, "bus": bus, "opcua": opcua,
                                  "web": web})


def _is_within(path: Path, other: Path) -> bool:
    return path == other or path.is_relative_to(other)


def check_layout(cfg: StationConfig) -> list[str]:
    """Folders that would mix or escape (after resolving symbolic links): every problem, by dotted key.

    A drop folder is watched and emptied: it must not be a file-system root, the state directory or one of its
    ancestors, and must not overlap (contain or sit inside) the folders the daemon writes (processed,
    quarantine, annotated, templates) or another camera's drop folder; otherwise processed frames would be
    picked up again, or a folder the daemon moves files out of would include its own results. The written
    folders must not overlap each other either (a camera's template store inside ``directories.templates`` is
    the default layout and fine).
    """
    def real(p: Path) -> Path:
        return Path(os.path.realpath(p))

    state = real(cfg.state_dir)
    written = {f"directories.{name}": real(cfg.dir_for(name))  # type: ignore[arg-type]
               for name in ("processed", "quarantine", "annotated", "templates")}
    stores = {f"cameras.{i}.template_store": real(cfg.template_dir(c))
              for i, c in enumerate(cfg.cameras) if c.template_store is not None}
    drops = {f"cameras.{i}.drop_folder": real(c.drop_folder) for i, c in enumerate(cfg.cameras)}
    problems = []
    if state == Path(state.anchor):
        problems.append(f"state_dir: {state} is a file-system root")
    for key, drop in drops.items():
        if drop == Path(drop.anchor):
            problems.append(f"{key}: {drop} is a file-system root")
        elif _is_within(state, drop):
            problems.append(f"{key}: {drop} is the state directory or contains it ({state})")
        for other_key, other in {**written, **stores}.items():
            if _is_within(drop, other) or _is_within(other, drop):
                problems.append(f"{key}: {drop} overlaps {other_key} ({other})")
    keys = list(drops)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if _is_within(drops[a], drops[b]) or _is_within(drops[b], drops[a]):
                problems.append(f"{b}: {drops[b]} overlaps {a} ({drops[a]})")
    names = list(written)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if _is_within(written[a], written[b]) or _is_within(written[b], written[a]):
                problems.append(f"{b}: {written[b]} overlaps {a} ({written[a]})")
    for key, store in stores.items():
        for name, other in written.items():
            if name != "directories.templates" and (_is_within(store, other) or _is_within(other, store)):
                problems.append(f"{key}: {store} overlaps {name} ({other})")
    return problems


def parse_station_config(data: object, source: Path | str = "<config>", base: Path | None = None) -> StationConfig:
    """Validate an already-loaded mapping; ``source`` names it in errors, ``base`` resolves relative paths."""
    path = Path(source)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    try:
        cfg = StationConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(path, exc)) from None
    cfg = _resolve_paths(cfg, base if base is not None else Path.cwd())
    problems = check_layout(cfg)
    if problems:
        raise ConfigError("\n".join([f"{path}: invalid station configuration ({len(problems)} error(s))",
                                      *(f"  {path}: {p}" for p in problems)]))
    return cfg


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
