"""DeepPCB-format reader (Tang et al. 2019): template/tested image pairs with ``x1 y1 x2 y2 type`` boxes.

Layout under ``root`` (the published one; the synthetic generator writes the same)::

    trainval.txt                      one line per pair: "groupG/G/<id>.jpg groupG/G_not/<id>.txt"
    groupG/G/<id>_test.jpg            tested image (the list line's extension: .jpg published, .png from
    groupG/G/<id>_temp.jpg            aligned defect-free template             ``inspector export-training``)
    groupG/G_not/<id>.txt             annotation lines "x1 y1 x2 y2 type", type 1..C
    classes.txt                       optional: one class name per line (type 1 first); default DeepPCB's six

The list's last line may lack a newline (the published trainval.txt does). An annotation file with no box
lines is a normal (defect-free) pair. ``split_by_group`` holds out whole board groups, because pairs of one
group show the same board design and would leak between train and validation otherwise.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from training.data.base import BaseReader, ImageRecord
from training.data.issues import BadDataPolicy, DataIssueLog

#: DeepPCB's defect types 1..6 in order.
DEEPPCB_CLASSES: tuple[str, ...] = ("open", "short", "mousebite", "spur", "copper", "pin-hole")
CLASSES_FILE = "classes.txt"


def read_list_file(path: Path) -> list[str]:
    """Non-empty, stripped lines of a DeepPCB list file (tolerates a missing final newline and CRLF)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DeepPCB list file not found: {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def group_of(list_line: str) -> str:
    """``groupNNNNN`` of a list line (its first path component)."""
    return list_line.split()[0].replace("\\", "/").split("/")[0]


def _normalise_group(name: str | int) -> str:
    text = str(name).strip()
    return text if text.startswith("group") else f"group{int(text):05d}"


def split_by_group(list_lines: Sequence[str], val_groups: Iterable[str | int]) -> tuple[list[str], list[str]]:
    """Split list lines into (train, val) by board group; order is kept, so the split is deterministic.

    ``val_groups`` accepts "group20085", "20085" or 20085. Unknown groups are an error (a typo would
    otherwise silently give an empty validation set).
    """
    wanted = {_normalise_group(g) for g in val_groups}
    present = {group_of(line) for line in list_lines}
    missing = wanted - present
    if missing:
        raise ValueError(f"val_groups {sorted(missing)} not in the list (groups present: {sorted(present)})")
    train = [line for line in list_lines if group_of(line) not in wanted]
    val = [line for line in list_lines if group_of(line) in wanted]
    return train, val


def read_class_names(root: Path) -> tuple[str, ...]:
    path = Path(root) / CLASSES_FILE
    if not path.is_file():
        return DEEPPCB_CLASSES
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not names:
        raise ValueError(f"{path} lists no class names")
    return names


class DeepPCBReader(BaseReader):
    """Reads a DeepPCB-format root. ``lines`` (already split) override reading ``list_file``."""

    def __init__(
        self,
        root: Path | str,
        list_file: str | Path = "trainval.txt",
        lines: Sequence[str] | None = None,
        bad_data: BadDataPolicy = "skip",
        issues: DataIssueLog | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"DeepPCB root not found: {self.root}")
        list_path = Path(list_file) if Path(list_file).is_absolute() else self.root / list_file
        if lines is None:
            lines = read_list_file(list_path)
        names = tuple(class_names) if class_names else read_class_names(self.root)
        super().__init__([], names, has_templates=True, issues=self.make_issue_log(issues, bad_data))
        self.list_path = list_path
        self.records = [r for r in (self._parse_line(list_path, n, line) for n, line in enumerate(lines, 1)) if r]

    def _parse_line(self, list_path: Path, lineno: int, line: str) -> ImageRecord | None:
        parts = line.split()
        if len(parts) != 2:
            self.issues.report("malformed_annotation", str(list_path), f"line {lineno}: expected 2 paths, got {line!r}")
            return None
        image_rel, ann_rel = parts
        stem, suffix = Path(image_rel).with_suffix(""), Path(image_rel).suffix or ".jpg"
        image_path = self.root / f"{stem}_test{suffix}"
        template_path = self.root / f"{stem}_temp{suffix}"
        ann_path = self.root / ann_rel
        for kind, p in (("missing_image", image_path), ("missing_template", template_path), ("malformed_annotation", ann_path)):
            if not p.is_file():
                self.issues.report(kind, str(p), f"listed in {list_path.name} line {lineno} but not found")
                return None
        parsed = self._parse_annotation(ann_path)
        if parsed is None:
            return None
        checked = self._check_boxes(str(ann_path), *parsed)
        if checked is None:
            return None
        boxes, labels = checked
        return ImageRecord(
            image_id=stem.name,
            image_path=image_path,
            template_path=template_path,
            boxes=boxes,
            labels=labels,
            is_normal=len(parsed[0]) == 0,
        )

    def _parse_annotation(self, path: Path) -> tuple[np.ndarray, np.ndarray] | None:
        boxes, labels = [], []
        for lineno, raw in enumerate(path.read_text().splitlines(), 1):
            fields = raw.replace(",", " ").split()
            if not fields:
                continue
            try:
                if len(fields) != 5:
                    raise ValueError(f"expected 5 fields, got {len(fields)}")
                x1, y1, x2, y2 = (float(v) for v in fields[:4])
                label = int(fields[4])
            except ValueError as exc:
                self.issues.report("malformed_annotation", str(path), f"line {lineno} {raw!r}: {exc}")
                return None
            boxes.append((x1, y1, x2, y2))
            labels.append(label)
        return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)
