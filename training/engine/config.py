"""``TrainConfig``: one YAML file describes a whole training run, validated before anything heavy starts.

Sections: ``model`` (the model engineer's ModelConfig), ``data`` (train/val DataConfig of the data engineer),
``optimizer``, ``schedule`` and the loop's own switches. Defaults are the paper's (Sec. III-C): SGD, lr 0.01 for
a batch of 8 scaled linearly, momentum 0.9, weight decay 1e-4, 500 warm-up iterations, 24 epochs, x0.1 at
epochs 16 and 22.

Errors name the file and the dotted key (``model.reference.input``), and impossible combinations (a model that
needs templates on a dataset without them) are rejected here, naming both keys.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from training.data import DataConfig
from training.model.config import ModelConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OptimizerConfig(_Strict):
    """SGD; ``base_lr`` is for a total batch of ``base_batch_size`` and scales linearly with the real one."""

    base_lr: float = Field(0.01, gt=0)
    base_batch_size: int = Field(8, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    grad_clip_norm: float | None = Field(None, gt=0)  # max L2 norm of all gradients; None = no clipping

    def scaled_lr(self, total_batch_size: int) -> float:
        """Linear scaling rule (Goyal et al.): the paper's 0.01 at batch 8 becomes 0.0025 at batch 2."""
        return self.base_lr * total_batch_size / self.base_batch_size


class ScheduleConfig(_Strict):
    """Linear warm-up, then multiply lr by ``gamma`` at each milestone epoch."""

    epochs: int = Field(24, gt=0)
    milestones: tuple[float, ...] = (16, 22)  # epochs; scaled with max_iters / time budget (see schedule.py)
    gamma: float = Field(0.1, gt=0, le=1)
    warmup_iters: int = Field(500, ge=0)
    warmup_factor: float = Field(0.001, gt=0, le=1)

    @model_validator(mode="after")
    def _milestones_inside(self) -> "ScheduleConfig":
        ms = list(self.milestones)
        if ms != sorted(ms) or any(not 0 < m <= self.epochs for m in ms):
            raise ValueError(f"schedule.milestones {ms} must increase and lie in (0, schedule.epochs={self.epochs}]")
        return self


class DataSection(_Strict):
    """The training set, more training sets to add to it (``extra``: e.g. a station's reviewed frames from
    ``inspector export-training`` next to the original dataset; classes mapped by name onto ``train``'s, sizes
    and augmentation as ``train`` says) and an optional validation set (evaluated every ``eval_every_epochs``)."""

    train: DataConfig
    extra: tuple[DataConfig, ...] = ()
    val: DataConfig | None = None


class TrainConfig(_Strict):
    name: str = "rddn"
    model: ModelConfig
    data: DataSection
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    batch_size: int = Field(2, gt=0)  # per process; the total batch is batch_size x world size
    workers: int = Field(2, ge=0)
    amp: bool = True  # mixed precision, CUDA only (ignored on CPU)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    threads: int | None = Field(None, gt=0)  # torch.set_num_threads for CPU runs
    output_dir: Path = Path("runs/rddn")
    eval_every_epochs: int = Field(1, ge=0)  # 0 = never during training (use rddn eval afterwards)
    checkpoint_every_iters: int | None = Field(None, gt=0)  # last.pt is also written at every epoch end
    max_iters: int | None = Field(None, gt=0)  # overrides epochs x iters/epoch for short runs
    time_budget_minutes: float | None = Field(None, gt=0)  # stop cleanly (checkpoint) when used up
    # "wall": elapsed real time; "process": this process's CPU time, which keeps equal-budget comparisons fair
    # on a shared machine whose load changes between runs (use with workers: 0 so loading is counted too)
    time_budget_clock: Literal["wall", "process"] = "wall"
    ptg_normals_per_batch: int = Field(1, ge=1)  # normal samples per batch when model.reference.feature=ptg
    log_every: int = Field(20, gt=0)  # progress-bar refresh; the metrics log gets every iteration
    progress_bar: bool = True

    @model_validator(mode="after")
    def _combinations(self) -> "TrainConfig":
        needs = self.model.reference.needs_template
        sides = [("train", self.data.train), ("val", self.data.val),
                 *((f"extra.{i}", e) for i, e in enumerate(self.data.extra))]
        for split, data in sides:
            if data is None or not needs:
                continue
            if not data_has_templates(data):
                raise ValueError(
                    f"model.reference (input={self.model.reference.input}, feature={self.model.reference.feature}) "
                    f"needs a template for every image, but data.{split} (format={data_format(data)}) has no "
                    "templates; use reference.input=mean_std with feature=none or ptg, or a dataset with templates"
                )
        if self.model.reference.feature == "ptg" and self.ptg_normals_per_batch >= self.batch_size:
            raise ValueError(
                f"ptg_normals_per_batch={self.ptg_normals_per_batch} must be below batch_size={self.batch_size} "
                "(model.reference.feature=ptg mixes normal and defect samples in every batch)"
            )
        return self


def data_format(data: DataConfig) -> str:
    return str(getattr(data, "format", type(data).__name__))


def data_has_templates(data: DataConfig) -> bool:
    """Whether a dataset config yields a template per image (asked of the data package when it can tell)."""
    probe = getattr(data, "has_templates", None)
    if callable(probe):
        return bool(probe())
    if probe is not None:
        return bool(probe)
    return True


# -- YAML loading ---------------------------------------------------------------------------------------

def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], YAML-parsed value): ``--set model.reference.feature=ptg``."""
    if "=" not in text:
        raise ValueError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. model.reference.feature=ptg")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ValueError(f"--set {text!r}: empty key")
    return parts, yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (creating sections as needed); the YAML stays the single source."""
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ValueError(f"--set {text!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return raw


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid training config {source}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {loc}: {err['msg']}")
    return "\n".join(lines)


class ConfigError(ValueError):
    """A config file that cannot be read or validated; the message names the file and the keys."""


BASE_KEY = "base"


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``, section by section (a variant config states only what differs)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml_with_base(path: Path, what: str = "training config", _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML mapping; ``base: other.yaml`` (relative to this file) is loaded first and overridden by this one.
    ``what`` names the file's role in the error messages."""
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level of a {what} must be a mapping")
    base = raw.pop(BASE_KEY, None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a file name, got {base!r}")
    return deep_merge(read_yaml_with_base(path.parent / base, what, _seen + (path.resolve(),)), raw)


def load_train_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML training config (and its ``base`` chain), apply ``--set`` overrides, validate. Relative data
    paths stay as written (relative to the working directory, which for the CLI is the repository root)."""
    path = Path(path)
    raw = read_yaml_with_base(path)
    try:
        raw = apply_overrides(raw, overrides)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return train_config_from_dict(raw, source=str(path))


def train_config_from_dict(raw: Mapping[str, Any], source: str = "<dict>") -> TrainConfig:
    try:
        return TrainConfig.model_validate(dict(raw))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from exc


def dump_train_config(cfg: TrainConfig, path: Path) -> Path:
    """The resolved config next to the checkpoints: what actually ran, overrides included."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path
