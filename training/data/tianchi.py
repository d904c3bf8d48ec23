"""Readers for the two Tianchi sets of the RDDN paper: Fabric (with templates) and Aluminum (without).

**Tianchi Fabric** (2019 Guangdong industrial-intelligence challenge, patterned fabric, round 2: each image
comes with an aligned defect-free template). Expected layout under ``root``::

    <annotation_file>                   JSON list: {"name": "<file>.jpg", "defect_name": "<name>",
                                                    "bbox": [x1, y1, x2, y2]}  (one entry per box)
    <any dirs>/<stem>/<stem>.jpg        the image, in its own folder (published: defect/<stem>/...)
    <any dirs>/<stem>/template_<stem>.jpg   its template (if the folder holds exactly one ``template_*``
                                        image of another name, that one is used)
    normal/<stem>/<stem>.jpg (+ template)   defect-free images: no annotation entry, inside a ``normal`` dir

``defect_name`` may be the challenge's Chinese name, the English name of :data:`FABRIC_CLASSES` or the
challenge's category code 1..15 (same order). The English names are those of the paper's Table II.

**Tianchi Aluminum** (2018 Tianchi aluminium profile surface defect challenge, round 2). Expected layout::

    <any dirs>/<image>.jpg + <image>.json   LabelMe JSON: {"shapes": [{"label": "...", "points": [[x, y], ...]}]}
    无瑕疵样本/<image>.jpg  (or normal/)      defect-free images (no JSON needed)

An image with no JSON, an empty ``shapes`` list, or inside a normal folder is normal (``is_normal``). Labels may
be Chinese (as published) or the English names of :data:`ALUMINUM_CLASSES` (the paper's Table I). There are
no templates; RDDN uses PTG on this set. The box of a shape is the bounding box of its points.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from training.data.base import BaseReader, ImageRecord, in_holdout, read_json
from training.data.issues import BadDataPolicy, DataIssueLog, logger

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

#: Fabric classes in the challenge's category-code order 1..15 (English as in the paper's Table II).
FABRIC_CLASSES: tuple[str, ...] = (
    "stained", "broken figures", "water mark", "knots", "seam allowance", "joining stencil mark", "insect",
    "broken hole", "pleats", "flaw", "misprinting", "wax spot", "color shade", "crease mark", "others",
)
FABRIC_CHINESE: tuple[str, ...] = (
    "沾污", "错花", "水印", "花毛", "缝头", "缝头印", "虫粘", "破洞", "褶子", "织疵", "漏印", "蜡斑", "色差", "网折", "其他",
)
#: Aluminum classes (the paper's Table I order) and the 2018 challenge's Chinese names.
ALUMINUM_CLASSES: tuple[str, ...] = (
    "non-conductive", "flow mark", "abrasion mark", "color mismatch", "orange peel", "bubble", "leakage",
    "dirty spot", "corner leakage", "pit",
)
ALUMINUM_CHINESE: tuple[str, ...] = ("不导电", "喷流", "擦花", "杂色", "桔皮", "漆泡", "漏底", "脏点", "角位漏底", "起坑")
ALUMINUM_NORMAL_DIRS: tuple[str, ...] = ("无瑕疵样本", "normal", "正常")


def _name_table(english: Sequence[str], chinese: Sequence[str]) -> dict[str, int]:
    """Every accepted spelling of a class -> label 1..C (Chinese, English, code; case/_/- insensitive)."""
    table: dict[str, int] = {}
    for label, (en, zh) in enumerate(zip(english, chinese), 1):
        for key in (en, zh, str(label), en.replace(" ", "_"), en.replace(" ", "-"), en.replace(" ", "")):
            table[key.lower()] = label
    return table


FABRIC_LABELS = _name_table(FABRIC_CLASSES, FABRIC_CHINESE)
ALUMINUM_LABELS = _name_table(ALUMINUM_CLASSES, ALUMINUM_CHINESE)


def _walk_images(root: Path) -> list[Path]:
    """All image files under root, sorted (deterministic order whatever the file system returns)."""
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            if f.lower().endswith(IMAGE_SUFFIXES):
                found.append(Path(dirpath) / f)
    return sorted(found)


def _keep_split(image_id: str, split: str, val_fraction: float, seed: int) -> bool:
    if split == "all":
        return True
    held = in_holdout(image_id, val_fraction, seed)
    return held if split == "val" else not held


class TianchiFabricReader(BaseReader):
    """Tianchi Fabric: JSON box list + per-sample folders with a ``template_`` image. See the module doc."""

    def __init__(
        self,
        root: Path | str,
        annotation_file: str | Path = "anno_train.json",
        split: str = "all",
        val_fraction: float = 0.0,
        split_seed: int = 0,
        bad_data: BadDataPolicy = "skip",
        issues: DataIssueLog | None = None,
        normal_dirs: Sequence[str] = ("normal",),
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"Tianchi Fabric root not found: {self.root}")
        ann_path = Path(annotation_file) if Path(annotation_file).is_absolute() else self.root / annotation_file
        super().__init__([], FABRIC_CLASSES, has_templates=True, issues=self.make_issue_log(issues, bad_data))
        entries = self._load_entries(ann_path)
        images = {p.name: p for p in _walk_images(self.root) if not p.name.startswith("template_")}
        records = []
        for name in sorted(entries):
            path = images.get(name)
            if path is None:
                self.issues.report("missing_image", str(self.root / name), f"annotated in {ann_path.name} but not found under {self.root}")
                continue
            rec = self._record(path, entries[name], str(ann_path))
            if rec is not None:
                records.append(rec)
        normal_set = {n.lower() for n in normal_dirs}
        ignored = 0
        for name, path in sorted(images.items()):
            if name in entries:
                continue
            if normal_set & {part.lower() for part in path.relative_to(self.root).parts[:-1]}:
                rec = self._record(path, [], str(path))
                if rec is not None:
                    records.append(rec)
            else:  # unannotated outside a normal folder: cannot tell normal from unlabelled, so leave it out
                ignored += 1
        if ignored:
            logger.info("%s: %d unannotated images outside %s folders ignored", self.root, ignored, list(normal_dirs))
        self.records = [r for r in records if _keep_split(r.image_id, split, val_fraction, split_seed)]

    def _load_entries(self, ann_path: Path) -> dict[str, list[tuple[list[float], int]]]:
        data = read_json(ann_path, "Tianchi Fabric annotation file")
        if not isinstance(data, list):
            raise ValueError(f"{ann_path}: expected a JSON list of {{name, defect_name, bbox}} entries")
        entries: dict[str, list[tuple[list[float], int]]] = defaultdict(list)
        bad_names: set[str] = set()
        for i, item in enumerate(data):
            try:
                name = str(item["name"])
                bbox = [float(v) for v in item["bbox"]]
                defect = str(item["defect_name"]).strip().lower()
                if len(bbox) != 4:
                    raise ValueError(f"bbox needs 4 numbers, got {len(bbox)}")
            except (KeyError, TypeError, ValueError) as exc:
                self.issues.report("malformed_annotation", str(ann_path), f"entry {i}: {exc!r}")
                if isinstance(item, dict) and "name" in item:
                    bad_names.add(str(item["name"]))
                continue
            if defect not in FABRIC_LABELS:
                self.issues.report("unknown_class", str(ann_path), f"entry {i} ({name}): unknown defect_name {item['defect_name']!r}")
                bad_names.add(name)
                continue
            entries[name].append((bbox, FABRIC_LABELS[defect]))
        for name in bad_names:  # a partly unreadable annotation set must not train as if complete
            entries.pop(name, None)
        return dict(entries)

    def _record(self, path: Path, boxes: list[tuple[list[float], int]], ann: str) -> ImageRecord | None:
        template = self._find_template(path)
        if template is None:
            self.issues.report("missing_template", str(path), f"no template_{path.name} next to the image")
            return None
        arr = np.asarray([b for b, _ in boxes], np.float32).reshape(-1, 4)
        labels = np.asarray([lab for _, lab in boxes], np.int64)
        checked = self._check_boxes(f"{ann} ({path.name})", arr, labels)
        if checked is None:
            return None
        return ImageRecord(path.stem, path, template, checked[0], checked[1], is_normal=not boxes)

    @staticmethod
    def _find_template(path: Path) -> Path | None:
        exact = path.with_name(f"template_{path.name}")
        if exact.is_file():
            return exact
        others = [p for p in path.parent.iterdir() if p.name.startswith("template_") and p.suffix.lower() in IMAGE_SUFFIXES]
        return others[0] if len(others) == 1 else None


class TianchiAluminumReader(BaseReader):
    """Tianchi Aluminum: LabelMe JSON per image, normal images without JSON. See the module doc."""

    def __init__(
        self,
        root: Path | str,
        split: str = "all",
        val_fraction: float = 0.0,
        split_seed: int = 0,
        bad_data: BadDataPolicy = "skip",
        issues: DataIssueLog | None = None,
        normal_dirs: Sequence[str] = ALUMINUM_NORMAL_DIRS,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"Tianchi Aluminum root not found: {self.root}")
        super().__init__([], ALUMINUM_CLASSES, has_templates=False, issues=self.make_issue_log(issues, bad_data))
        normal_set = {n.lower() for n in normal_dirs}
        records = []
        for path in _walk_images(self.root):
            in_normal_dir = bool(normal_set & {part.lower() for part in path.relative_to(self.root).parts[:-1]})
            json_path = path.with_suffix(".json")
            if in_normal_dir or not json_path.is_file():
                records.append(ImageRecord(path.stem, path, None, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), True))
                continue
            rec = self._record(path, json_path)
            if rec is not None:
                records.append(rec)
        self.records = [r for r in records if _keep_split(r.image_id, split, val_fraction, split_seed)]

    def _record(self, path: Path, json_path: Path) -> ImageRecord | None:
        try:
            data = json.loads(json_path.read_text(encoding="utf-8"))
            shapes = data.get("shapes", [])
            boxes, labels = [], []
            for shape in shapes:
                pts = np.asarray(shape["points"], np.float32).reshape(-1, 2)
                if len(pts) == 0:
                    raise ValueError("shape without points")
                boxes.append((pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()))
                labels.append(str(shape["label"]).strip())
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            self.issues.report("malformed_annotation", str(json_path), f"not a LabelMe JSON with shapes/points: {exc!r}")
            return None
        unknown = sorted({name for name in labels if name.lower() not in ALUMINUM_LABELS})
        if unknown:
            self.issues.report("unknown_class", str(json_path), f"unknown label(s) {unknown}")
            return None
        labels = [ALUMINUM_LABELS[name.lower()] for name in labels]
        checked = self._check_boxes(str(json_path), np.asarray(boxes, np.float32), np.asarray(labels, np.int64))
        if checked is None:
            return None
        return ImageRecord(path.stem, path, None, checked[0], checked[1], is_normal=not shapes)
