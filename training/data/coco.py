"""COCO-JSON reader with an optional per-image template (``"template_file_name"`` next to ``"file_name"``).

Layout: ``annotation_file`` (standard COCO detection JSON, relative to ``root`` unless absolute) and images
(and templates) under ``image_dir`` (relative to ``root``; default ``root`` itself). Boxes are COCO ``[x, y, w, h]`` and become
x1y1x2y2. Category ids are mapped to labels 1..C in ascending id order (stable whatever order the JSON lists
them), and ``class_names`` are the category names in that order. Images without (non-crowd) annotations are
normal. Crowd annotations are ignored. If any image has a ``template_file_name`` the dataset has templates and
an image lacking one is reported as ``missing_template``.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from training.data.base import BaseReader, ImageRecord, read_json
from training.data.issues import BadDataPolicy, DataIssueLog

TEMPLATE_FIELD = "template_file_name"


def load_coco_json(path: Path) -> dict:
    path = Path(path)
    data = read_json(path, "COCO annotation file")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a COCO JSON object with images, annotations and categories")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: missing or non-list key {key!r}")
    if not data["categories"]:
        raise ValueError(f"{path}: 'categories' is empty")
    return data


class CocoReader(BaseReader):
    """COCO detection JSON -> Samples; see the module docstring for the conventions."""

    def __init__(
        self,
        root: Path | str,
        annotation_file: str | Path,
        image_dir: str | Path | None = None,
        bad_data: BadDataPolicy = "skip",
        issues: DataIssueLog | None = None,
    ) -> None:
        self.root = Path(root)
        ann_path = Path(annotation_file) if Path(annotation_file).is_absolute() else self.root / annotation_file
        data = load_coco_json(ann_path)
        cats = sorted(data["categories"], key=lambda c: int(c["id"]))
        self.category_ids: list[int] = [int(c["id"]) for c in cats]
        self.label_of_category = {cid: i for i, cid in enumerate(self.category_ids, 1)}
        images_dir = Path(image_dir) if image_dir is not None else self.root
        if image_dir is not None and not images_dir.is_absolute():
            images_dir = self.root / images_dir
        has_templates = any(TEMPLATE_FIELD in img for img in data["images"])
        super().__init__([], [str(c["name"]) for c in cats], has_templates, self.make_issue_log(issues, bad_data))
        self.image_dir = images_dir
        per_image: dict[int, list[dict]] = defaultdict(list)
        for ann in data.get("annotations", []):
            if not ann.get("iscrowd", 0):
                per_image[ann.get("image_id")].append(ann)
        self.records = [r for r in (self._record(img, per_image, ann_path) for img in data["images"]) if r]

    def _record(self, img: dict, per_image: dict[int, list[dict]], ann_path: Path) -> ImageRecord | None:
        try:
            image_path = self.image_dir / img["file_name"]
            anns = per_image.get(img["id"], [])
            xywh = np.asarray([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
            cats = [int(a["category_id"]) for a in anns]
        except (KeyError, TypeError, ValueError) as exc:
            self.issues.report("malformed_annotation", str(ann_path), f"image entry {img!r:.120}: {exc!r}")
            return None
        unknown = sorted({c for c in cats if c not in self.label_of_category})
        if unknown:
            self.issues.report("unknown_class", str(ann_path), f"{img['file_name']}: category id(s) {unknown} not in categories")
            return None
        if not image_path.is_file():
            self.issues.report("missing_image", str(image_path), f"listed in {ann_path.name} but not found")
            return None
        template_path = None
        if TEMPLATE_FIELD in img:
            template_path = self.image_dir / img[TEMPLATE_FIELD]
            if not template_path.is_file():
                self.issues.report("missing_template", str(template_path), f"template of {img['file_name']} not found")
                return None
        boxes = xywh.copy()
        boxes[:, 2:] += boxes[:, :2]
        labels = np.asarray([self.label_of_category[c] for c in cats], np.int64)
        checked = self._check_boxes(f"{ann_path} ({img['file_name']})", boxes, labels)
        if checked is None:
            return None
        return ImageRecord(
            image_id=str(img["id"]),
            image_path=image_path,
            template_path=template_path,
            boxes=checked[0],
            labels=checked[1],
            is_normal=not anns,
        )
