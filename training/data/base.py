"""What every dataset reader shares: annotation records, eager validation, lazy image loading.

A reader parses its annotation format once at construction into :class:`ImageRecord` s (cheap checks happen
here: files exist, classes known, boxes well formed) and loads pixels only in ``__getitem__`` (unreadable
files and boxes outside the real image size can only be found there). All problems go through one
:class:`~training.data.issues.DataIssueLog`, so the ``skip``/``fail`` policy is applied the same way for
every format.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from training.data.issues import BadDataPolicy, DataIssueLog
from training.data.sample import Sample


class SkippedSampleError(RuntimeError):
    """A sample that cannot be loaded under the ``skip`` policy (already reported to the issue log)."""


@dataclass
class ImageRecord:
    """One parsed annotation entry, before any pixel is read."""

    image_id: str
    image_path: Path
    template_path: Path | None
    boxes: np.ndarray  # float32 [K, 4] x1y1x2y2
    labels: np.ndarray  # int64 [K] in 1..C
    is_normal: bool


def read_rgb(path: Path) -> np.ndarray | None:
    """Read an image as uint8 RGB [H, W, 3]; None if missing or undecodable.

    ``np.fromfile`` + ``imdecode`` instead of ``imread`` so non-ASCII paths (the Tianchi aluminium set uses
    Chinese folder names) work on every platform.
    """
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_json(path: Path, what: str) -> object:
    """A JSON file, or an error naming ``what`` and the file (missing: FileNotFoundError, broken: ValueError)."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def in_holdout(image_id: str, val_fraction: float, seed: int = 0) -> bool:
    """Deterministic, order-independent train/val assignment by a hash of the image id.

    Adding or removing files never moves the other images between splits (unlike a shuffled index split).
    """
    if val_fraction <= 0.0:
        return False
    digest = hashlib.sha1(f"{seed}:{image_id}".encode()).hexdigest()
    return int(digest[:8], 16) / 0xFFFFFFFF < val_fraction


class BaseReader(Sequence[Sample]):
    """A list of :class:`ImageRecord` s that loads :class:`Sample` s lazily.

    Subclasses parse their format, call :meth:`validate_record` per entry and hand the surviving records to
    ``__init__``. ``class_names`` excludes background; labels are 1..C.
    """

    def __init__(
        self,
        records: list[ImageRecord],
        class_names: Sequence[str],
        has_templates: bool,
        issues: DataIssueLog | None = None,
    ) -> None:
        self.records = records
        self.class_names: tuple[str, ...] = tuple(class_names)
        self.has_templates = has_templates
        self.issues = issues if issues is not None else DataIssueLog("skip")

    # -- construction-time checks -------------------------------------------------------------------------
    @staticmethod
    def make_issue_log(issues: DataIssueLog | None, bad_data: BadDataPolicy) -> DataIssueLog:
        return issues if issues is not None else DataIssueLog(bad_data)

    def _check_boxes(self, path: str, boxes: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Drop degenerate/non-finite boxes, reject unknown classes. None means: skip the whole record."""
        return validate_boxes(path, boxes, labels, len(self.class_names), self.issues)

    # -- Sequence protocol --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"{type(self).__name__} indices must be integers, got {type(index).__name__}")
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"{type(self).__name__} index {index} out of range (len {len(self)})")
        return self.load(self.records[index])

    def __iter__(self) -> Iterator[Sample]:
        """Iterate over the loadable samples (bad ones are reported and left out under ``skip``)."""
        for i in range(len(self)):
            try:
                yield self[i]
            except SkippedSampleError:
                continue

    @property
    def image_ids(self) -> list[str]:
        return [r.image_id for r in self.records]

    # -- lazy loading -------------------------------------------------------------------------------------
    def _skip(self, kind: str, path: Path | str, detail: str) -> SkippedSampleError:
        self.issues.report(kind, str(path), detail)  # raises BadDataError under "fail"
        return SkippedSampleError(f"{kind}: {path}: {detail}")

    def load(self, record: ImageRecord) -> Sample:
        image = read_rgb(record.image_path)
        if image is None:
            raise self._skip("unreadable_image", record.image_path, "cannot read or decode the image")
        template = None
        if record.template_path is not None:
            template = read_rgb(record.template_path)
            if template is None:
                raise self._skip("missing_template", record.template_path, "cannot read or decode the template")
            if template.shape != image.shape:
                raise self._skip(
                    "template_mismatch",
                    record.template_path,
                    f"template shape {template.shape} differs from image shape {image.shape}",
                )
        elif self.has_templates:
            raise self._skip("missing_template", record.image_path, "this dataset needs a template per image")
        boxes, labels = clip_boxes(str(record.image_path), record.boxes, record.labels, image.shape[:2], self.issues)
        return Sample(
            image=image,
            template=template,
            boxes=boxes,
            labels=labels,
            is_normal=record.is_normal,
            image_id=record.image_id,
            path=str(record.image_path),
        )


def validate_boxes(
    path: str, boxes: np.ndarray, labels: np.ndarray, num_classes: int, issues: DataIssueLog
) -> tuple[np.ndarray, np.ndarray] | None:
    """Annotation-level checks that need no pixels.

    Unknown class -> the record is skipped (a defect we cannot name must not become background).
    Degenerate (x2 <= x1 or y2 <= y1), non-finite, or wholly negative boxes -> that box is dropped.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.asarray(labels, np.int64).reshape(-1)
    bad_label = (labels < 1) | (labels > num_classes)
    if bad_label.any():
        issues.report("unknown_class", path, f"label(s) {sorted(set(labels[bad_label].tolist()))} not in 1..{num_classes}")
        return None
    finite = np.isfinite(boxes).all(axis=1)
    safe = np.where(finite[:, None], boxes, 0.0)
    keep = finite & (safe[:, 2] > safe[:, 0]) & (safe[:, 3] > safe[:, 1]) & (safe[:, 2] > 0) & (safe[:, 3] > 0)
    for box in boxes[~keep]:
        issues.report("box_dropped", path, f"degenerate or invalid box {box.tolist()}")
    return boxes[keep], labels[keep]


def clip_boxes(
    path: str, boxes: np.ndarray, labels: np.ndarray, hw: tuple[int, int], issues: DataIssueLog
) -> tuple[np.ndarray, np.ndarray]:
    """Clip boxes to the real image size: partly outside -> clipped (repaired); wholly outside -> dropped."""
    h, w = hw
    if len(boxes) == 0:
        return boxes.copy(), labels.copy()
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, w)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, h)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    changed = (clipped != boxes).any(axis=1)
    for orig in boxes[~keep]:
        issues.report("box_dropped", path, f"box {orig.tolist()} lies outside the {w}x{h} image")
    for orig, new in zip(boxes[keep & changed], clipped[keep & changed]):
        issues.report("box_clipped", path, f"box {orig.tolist()} clipped to {new.tolist()} ({w}x{h})", repaired=True)
    return clipped[keep], labels[keep].copy()
