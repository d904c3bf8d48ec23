"""``DataConfig`` -> reader -> transformed torch Dataset, and ``collate_batch`` (cross-team contract 3).

The config is the only thing the YAML/CLI sees; the split it implies is explicit:

- ``split="auto"`` (default): if a holdout is configured (``val_groups`` for DeepPCB, ``val_fraction`` for the
  others), ``build_dataset(cfg, train=True)`` gives the rest and ``train=False`` the held-out part; without a
  holdout both give everything in the list/annotation file.
- ``"train"`` / ``"val"`` force one side, ``"all"`` ignores the holdout (e.g. ``rddn eval`` on a test list).

Bad data follows ``bad_data``: ``skip`` reports (logging + :class:`DataIssueLog`) and leaves the sample out,
``fail`` raises :class:`BadDataError` naming the file. Annotations are checked when the dataset is built, images
when a sample is loaded; a sample that fails to load under ``skip`` is replaced by the next loadable one so an
epoch keeps its length.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.utils.data import Dataset

from training.data.base import BaseReader, ImageRecord, SkippedSampleError
from training.data.issues import DataIssueLog
from training.data.sample import Sample
from training.data.synthetic import SyntheticDataset, SyntheticSpec
from training.data.transforms import Compose, TensorSample, build_transforms, to_tensor

DataFormat = Literal["deeppcb", "tianchi_fabric", "tianchi_aluminum", "coco", "synthetic"]


class DataConfig(BaseModel):
    """One dataset (train or val side). Unknown keys are errors so a typo never silently becomes a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: DataFormat
    root: Path | None = None  # dataset root (all formats but synthetic)
    list_file: str = "trainval.txt"  # deeppcb: list of "image annotation" lines, relative to root
    val_groups: tuple[str, ...] = ()  # deeppcb: board groups held out for validation ("group20085" or "20085")
    annotation_file: str | None = None  # tianchi_fabric (default anno_train.json), coco (required)
    image_dir: str | None = None  # coco: images folder relative to root (default root)
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)  # tianchi/coco: hash-based holdout share
    split_seed: int = 0
    split: Literal["auto", "train", "val", "all"] = "auto"
    train_short_size: tuple[int, int] = (600, 1000)  # inclusive range of the short edge (multi-scale)
    train_max_size: int = Field(1600, gt=0)
    test_short_size: int = Field(800, gt=0)
    test_max_size: int = Field(1600, gt=0)
    flip_prob: float = Field(0.5, ge=0.0, le=1.0)  # horizontal flip (the paper's augmentation)
    vflip_prob: float = Field(0.0, ge=0.0, le=1.0)  # vertical flip
    rot90_prob: float = Field(0.0, ge=0.0, le=1.0)  # 90-degree rotation; 0.5/0.5/0.5: all 8 square symmetries
    size_divisor: int = Field(32, gt=0)  # collate pads H and W to a multiple of this
    bad_data: Literal["skip", "fail"] = "skip"
    # training side only: add every template as an extra defect-free sample (normal samples for PTG on
    # template datasets such as DeepPCB, which ship no normal images)
    templates_as_normals: bool = False
    synthetic: SyntheticSpec = SyntheticSpec()
    synthetic_samples: int = Field(200, gt=0)  # training-side count
    synthetic_val_samples: int = Field(50, gt=0)  # validation-side count (different seeds)
    synthetic_seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        lo, hi = self.train_short_size
        if not 0 < lo <= hi:
            raise ValueError(f"data.train_short_size must be 0 < lo <= hi, got {self.train_short_size}")
        if self.format != "synthetic" and self.root is None:
            raise ValueError(f"data.root is required for format={self.format}")
        if self.format == "coco" and not self.annotation_file:
            raise ValueError("data.annotation_file is required for format=coco")
        if self.val_groups and self.format != "deeppcb":
            raise ValueError(f"data.val_groups is for format=deeppcb; use data.val_fraction for format={self.format}")
        return self

    def has_templates(self) -> bool:
        """Whether every image comes with an aligned template (asked by the training config validation)."""
        if self.format in ("deeppcb", "tianchi_fabric", "synthetic"):
            return True
        if self.format == "tianchi_aluminum":
            return False
        from training.data.coco import TEMPLATE_FIELD, load_coco_json

        path = Path(self.annotation_file or "")
        path = path if path.is_absolute() else Path(self.root or ".") / path
        images = load_coco_json(path)["images"]  # a missing/broken file is an error here, naming the file
        return bool(images) and all(TEMPLATE_FIELD in img for img in images)

    def side(self, train: bool) -> str:
        """Which part of the data this config gives for ``train``: "train", "val" or "all"."""
        if self.split != "auto":
            return self.split
        has_holdout = bool(self.val_groups) or self.val_fraction > 0 or self.format == "synthetic"
        return ("train" if train else "val") if has_holdout else "all"


def build_reader(cfg: DataConfig, train: bool, issues: DataIssueLog | None = None) -> BaseReader | SyntheticDataset:
    """The untransformed reader (``Sample`` s) for one side of ``cfg``."""
    reader = _format_reader(cfg, train, issues if issues is not None else DataIssueLog(cfg.bad_data))
    if cfg.templates_as_normals and train and isinstance(reader, BaseReader):
        add_template_normals(reader)
    return reader


def add_template_normals(reader: BaseReader) -> None:
    """Append one normal sample per distinct template: the template itself (its own template, no boxes)."""
    seen: set[Path] = set()
    extra = []
    for r in reader.records:
        if r.template_path is not None and r.template_path not in seen:
            seen.add(r.template_path)
            extra.append(ImageRecord(f"{r.image_id}#template", r.template_path, r.template_path,
                                     np.zeros((0, 4), np.float32), np.zeros(0, np.int64), True))
    reader.records = reader.records + extra


def _format_reader(cfg: DataConfig, train: bool, issues: DataIssueLog) -> BaseReader | SyntheticDataset:
    side = cfg.side(train)
    root = Path(cfg.root) if cfg.root is not None else Path(".")
    if cfg.format == "deeppcb":
        from training.data.deeppcb import DeepPCBReader, read_list_file, split_by_group

        list_path = Path(cfg.list_file) if Path(cfg.list_file).is_absolute() else root / cfg.list_file
        lines = read_list_file(list_path)
        if side != "all" and cfg.val_groups:
            train_lines, val_lines = split_by_group(lines, cfg.val_groups)
            lines = train_lines if side == "train" else val_lines
        return DeepPCBReader(root, list_path, lines=lines, issues=issues)
    if cfg.format == "tianchi_fabric":
        from training.data.tianchi import TianchiFabricReader

        return TianchiFabricReader(
            root, cfg.annotation_file or "anno_train.json", split=side, val_fraction=cfg.val_fraction,
            split_seed=cfg.split_seed, issues=issues,
        )
    if cfg.format == "tianchi_aluminum":
        from training.data.tianchi import TianchiAluminumReader

        return TianchiAluminumReader(root, split=side, val_fraction=cfg.val_fraction, split_seed=cfg.split_seed, issues=issues)
    if cfg.format == "coco":
        from training.data.coco import CocoReader

        reader = CocoReader(root, cfg.annotation_file or "", image_dir=cfg.image_dir, issues=issues)
        if side != "all" and cfg.val_fraction > 0:
            from training.data.base import in_holdout

            keep_val = side == "val"
            reader.records = [r for r in reader.records if in_holdout(r.image_id, cfg.val_fraction, cfg.split_seed) == keep_val]
        return reader
    if side == "val":
        return SyntheticDataset(cfg.synthetic, cfg.synthetic_val_samples, seed=cfg.synthetic_seed + 1_000_003)
    return SyntheticDataset(cfg.synthetic, cfg.synthetic_samples, seed=cfg.synthetic_seed)


class DetectionDataset(Dataset):
    """A reader plus paired transforms; items are :class:`TensorSample` s.

    Under ``skip`` a sample that cannot be loaded is replaced by the next loadable index (wrapping), so the
    epoch length and the batch sampler's bookkeeping stay unchanged; the issue is in ``self.issues``.
    """

    def __init__(self, reader: BaseReader | SyntheticDataset, transform: Compose, issues: DataIssueLog | None = None) -> None:
        self.reader = reader
        self.transform = transform
        self.issues = issues if issues is not None else getattr(reader, "issues", DataIssueLog("skip"))
        if len(reader) == 0:
            raise ValueError(f"{type(reader).__name__} has no usable samples ({self.issues.summary()})")

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.reader.class_names)

    @property
    def has_templates(self) -> bool:
        return bool(self.reader.has_templates)

    @property
    def normal_flags(self) -> list[bool]:
        """Per index: is the sample defect-free? Known without loading pixels (for PTG batch mixing)."""
        if isinstance(self.reader, SyntheticDataset):
            return [self.reader.is_normal(i) for i in range(len(self.reader))]
        return [r.is_normal for r in self.reader.records]

    def __len__(self) -> int:
        return len(self.reader)

    def load_sample(self, index: int) -> Sample:
        """The untransformed sample at ``index`` (or the next loadable one under ``skip``)."""
        n = len(self.reader)
        for offset in range(n):
            try:
                return self.reader[(index + offset) % n]
            except SkippedSampleError:
                continue
        raise RuntimeError(f"no loadable sample left in the dataset ({self.issues.summary()})")

    def __getitem__(self, index: int) -> TensorSample:
        return self.transform(self.load_sample(index))


def combine_readers(readers: Sequence[BaseReader | SyntheticDataset], sources: Sequence[str]) -> BaseReader:
    """One reader over several datasets (``data.train`` + ``data.extra``): the records one after the other, each
    extra's labels mapped by class name onto the first's classes (an extra may know fewer classes, in any
    order, never one the first does not know: its defects would have no label)."""
    for reader, source in zip(readers, sources):
        if not isinstance(reader, BaseReader):
            raise ValueError(f"{source}: format synthetic cannot be combined with other datasets (it has no records)")
    first = readers[0]
    names = tuple(first.class_names)
    records = list(first.records)
    for reader, source in zip(readers[1:], sources[1:]):
        unknown = [n for n in reader.class_names if n not in names]
        if unknown:
            raise ValueError(f"{source}: classes {unknown} are not among {sources[0]}'s {list(names)}")
        if reader.has_templates != first.has_templates:
            raise ValueError(f"{source}: has_templates={reader.has_templates} but {sources[0]} has "
                             f"{first.has_templates}; combined datasets must all have templates or none")
        lut = np.asarray([0] + [names.index(n) + 1 for n in reader.class_names], np.int64)
        records += [dataclasses.replace(r, labels=lut[r.labels]) for r in reader.records]
    return BaseReader(records, names, first.has_templates, first.issues)


def build_dataset(cfg: DataConfig, train: bool, extra: Sequence[DataConfig] = ()) -> DetectionDataset:
    """Contract 3: the torch Dataset for one side of ``cfg`` with the paper's train/test transforms; ``extra``
    datasets (training: ``data.extra``) are read with their own format and added, transformed as ``cfg`` says."""
    reader = build_reader(cfg, train)
    if extra:
        issues = getattr(reader, "issues", None)
        reader = combine_readers([reader, *(build_reader(e, train, issues) for e in extra)],
                                 ["data.train", *(f"data.extra.{i}" for i in range(len(extra)))])
    transform = build_transforms(
        train,
        train_short_sizes=cfg.train_short_size,
        train_max_size=cfg.train_max_size,
        test_short_size=cfg.test_short_size,
        test_max_size=cfg.test_max_size,
        flip_prob=cfg.flip_prob,
        vflip_prob=cfg.vflip_prob,
        rot90_prob=cfg.rot90_prob,
    )
    return DetectionDataset(reader, transform)


class Batch(tuple):
    """``(images, templates, targets, image_sizes)`` that also carries ``meta`` (one dict per image:
    image_id, path, orig_size (h, w), scale (sx, sy)) for mapping predictions back to original pixels."""

    meta: list[dict]

    def __new__(cls, items: tuple, meta: list[dict] | None = None) -> "Batch":
        # ``meta`` has a default because unpickling (DataLoader workers) calls ``Batch(items)`` and then
        # restores ``__dict__``
        obj = super().__new__(cls, items)
        obj.meta = meta if meta is not None else []
        return obj


def _pad_to(size: int, divisor: int) -> int:
    return int(np.ceil(size / divisor) * divisor)


def collate_batch(samples: Sequence[TensorSample | Sample], size_divisor: int = 32) -> Batch:
    """Zero-pad a list of samples into one batch (contract 3 / contract 1 input).

    Returns ``(images [N,3,H,W] float32 0..255, templates [N,3,H,W] or None, targets, image_sizes)`` with H, W
    multiples of ``size_divisor``; ``targets[i] = {"boxes", "labels", "is_normal"}``; ``image_sizes[i]`` is the
    unpadded (h, w). Templates are all-or-none: a batch mixing both is an error naming the images.
    """
    if not samples:
        raise ValueError("collate_batch got an empty list")
    items = [s if isinstance(s, TensorSample) else to_tensor(s, (s.height, s.width)) for s in samples]
    with_t = [s.template is not None for s in items]
    if any(with_t) and not all(with_t):
        missing = [s.image_id or s.path for s in items if s.template is None]
        raise ValueError(f"batch mixes images with and without templates; without: {missing}")
    sizes = [(int(s.image.shape[1]), int(s.image.shape[2])) for s in items]
    H = _pad_to(max(h for h, _ in sizes), size_divisor)
    W = _pad_to(max(w for _, w in sizes), size_divisor)
    images = torch.zeros((len(items), 3, H, W), dtype=torch.float32)
    templates = torch.zeros_like(images) if all(with_t) else None
    for i, (s, (h, w)) in enumerate(zip(items, sizes)):
        images[i, :, :h, :w] = s.image
        if templates is not None:
            templates[i, :, :h, :w] = s.template
    targets = [
        {"boxes": s.boxes.reshape(-1, 4).float(), "labels": s.labels.reshape(-1).long(), "is_normal": torch.tensor(bool(s.is_normal))}
        for s in items
    ]
    meta = [{"image_id": s.image_id, "path": s.path, "orig_size": s.orig_size, "scale": s.scale} for s in items]
    return Batch((images, templates, targets, sizes), meta)
