"""INT8 calibration data: image pairs from the TRAINING side of a dataset, never from its validation side.

``--calibration DATA`` takes what ``rddn eval --data`` takes: a DeepPCB-format root, a data-config YAML, or a
training-config YAML. The validation side is the held-out part of the same data (DeepPCB board groups from
``--val-groups`` or, for a bare root, the groups the checkpoint was trained with held out); calibration draws
``count`` pairs (seeded) from the rest and refuses to run if any of them is also a validation pair. The set's
identity (source, split, count, sha256 of the sorted pair list) goes into the artifact's metadata.

Frames reach the quantiser through the artifact's own preprocessing (``engines.artifact.resize_batch``), exactly
as the daemon feeds the graph.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from engines.artifact import CalibrationSet, resize_batch

DEFAULT_COUNT = 64


@dataclass(frozen=True)
class DataSplits:
    """The two sides of one dataset: calibration draws from ``train``, accuracy is measured on ``val``."""

    source: str
    train: Any  # training.data.DataConfig
    val: Any | None
    val_groups: tuple[str, ...]


def resolve_splits(data: str | Path, val_groups: Sequence[str] | None = None,
                   train_config: Mapping[str, Any] | None = None) -> DataSplits:
    """``DATA`` -> its training and validation sides (see the module docstring)."""
    from training.engine.evaluate import resolve_eval_data

    path = Path(data)
    groups = tuple(val_groups or ())
    if path.is_dir():
        groups = groups or trained_val_groups(train_config or {})
        if not groups:
            return DataSplits(str(path), resolve_eval_data(data), None, ())
        val_cfg = resolve_eval_data(data, val_groups=groups)
        return DataSplits(str(path), val_cfg.model_copy(update={"split": "train"}), val_cfg, groups)
    train_cfg = resolve_eval_data(data, val_groups=groups or None, split="train")
    val_cfg = resolve_eval_data(data, val_groups=groups or None, split="val")
    # a training config's explicit data.val is validation data; otherwise only a configured holdout is
    if not _has_explicit_val(path) and val_cfg.side(train=False) != "val":
        val_cfg = None
    return DataSplits(str(path), train_cfg, val_cfg, tuple(getattr(train_cfg, "val_groups", ()) or ()))


def _has_explicit_val(path: Path) -> bool:
    import yaml

    raw = yaml.safe_load(path.read_text()) if path.is_file() else None
    data = raw.get("data") if isinstance(raw, dict) else None
    return isinstance(data, dict) and data.get("val") is not None


def trained_val_groups(train_config: Mapping[str, Any]) -> tuple[str, ...]:
    """The DeepPCB groups the checkpoint's training run held out (``data.train.val_groups``), if any."""
    data = train_config.get("data") if isinstance(train_config, Mapping) else None
    train = data.get("train") if isinstance(data, Mapping) else None
    groups = train.get("val_groups") if isinstance(train, Mapping) else None
    return tuple(str(g) for g in groups) if isinstance(groups, (list, tuple)) else ()


@dataclass
class CalibrationData:
    """The chosen pairs and their metadata record."""

    reader: Any  # training.data.base.BaseReader over exactly the chosen records
    info: CalibrationSet

    def __len__(self) -> int:
        return len(self.reader)

    def feeds(self, size_hw: tuple[int, int], with_template: bool) -> Iterator[dict[str, np.ndarray]]:
        """One graph feed per pair, preprocessed as the daemon does (stretch to the input size)."""
        for sample in self.reader:
            feed = {"image": resize_batch([sample.image], size_hw)}
            if with_template:
                if sample.template is None:
                    raise ValueError(f"{sample.path}: calibration pair without a template, the model needs one")
                feed["template"] = resize_batch([sample.template], size_hw)
            yield feed


def select_calibration(splits: DataSplits, count: int = DEFAULT_COUNT, seed: int = 0,
                       class_names: Sequence[str] | None = None) -> CalibrationData:
    """Draw ``count`` training pairs (seeded, without replacement; all of them if fewer). ``class_names``: the
    model's, which the data must share (its validation side is scored against them)."""
    from training.data.dataset import build_reader

    if count <= 0:
        raise ValueError(f"--calibration-count must be positive, got {count}")
    if splits.val is None:
        raise ValueError(f"--calibration {splits.source}: no validation side to keep out of calibration (give "
                         "--val-groups, or a training config whose data holds out a validation split)")
    reader = build_reader(splits.train, train=True)
    val_reader = build_reader(splits.val, train=False)
    if not len(reader.records):
        raise ValueError(f"--calibration {splits.source}: the training side has no usable pairs")
    if class_names is not None and tuple(reader.class_names) != tuple(class_names):
        raise ValueError(f"--calibration {splits.source}: its classes {list(reader.class_names)} differ from the "
                         f"model's {list(class_names)}")
    leaked = _paths(reader.records) & _paths(val_reader.records)
    if leaked:
        raise ValueError(f"--calibration {splits.source}: {len(leaked)} pair(s) are on both the training and the "
                         f"validation side (e.g. {sorted(leaked)[0]}); calibration must never see validation data")
    order = np.random.default_rng(seed).permutation(len(reader.records))[:count]
    reader.records = [reader.records[i] for i in sorted(order)]
    root = Path(splits.train.root) if getattr(splits.train, "root", None) else None
    info = CalibrationSet(source=splits.source, split="train", excluded_groups=list(splits.val_groups),
                          count=len(reader.records), list_sha256=list_sha256(reader.records, root), seed=seed)
    return CalibrationData(reader, info)


def _paths(records: Sequence[Any]) -> set[str]:
    return {str(Path(r.image_path).resolve()) for r in records}


def list_sha256(records: Sequence[Any], root: Path | None) -> str:
    """sha256 of the sorted ``image [template]`` paths (relative to the dataset root): the set's identity,
    independent of where the dataset is mounted."""

    def rel(path: Path | None) -> str:
        if path is None:
            return "-"
        if root is not None:
            try:
                return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
            except ValueError:
                pass
        return Path(path).as_posix()

    lines = sorted(f"{rel(r.image_path)} {rel(r.template_path)}" for r in records)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()
