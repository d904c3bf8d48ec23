"""COCO mAP through pycocotools, from our in-memory per-image lists (no files written).

Why pycocotools rather than our own loop: ``coco_map`` must be the number everybody else's COCO tooling
prints (101-point interpolation, IoU 0.50:0.95), so it is computed by the reference implementation.
"""
from __future__ import annotations

import contextlib
import io
import math
from typing import Mapping, Sequence

import numpy as np

Arrays = Mapping[str, np.ndarray]


def to_coco_dicts(preds: Sequence[Arrays], gts: Sequence[Arrays], num_classes: int) -> tuple[dict, list[dict]]:
    """(ground-truth dataset dict, result list) with image ids 0..N-1 and category ids 1..C; boxes as xywh."""
    images, anns, results = [], [], []
    for i, g in enumerate(gts):
        boxes = np.asarray(g["boxes"], np.float64).reshape(-1, 4)
        w = float(max(boxes[:, 2].max(initial=1.0), 1.0))
        h = float(max(boxes[:, 3].max(initial=1.0), 1.0))
        images.append({"id": i, "width": w, "height": h})
        for box, label in zip(boxes, np.asarray(g["labels"]).reshape(-1)):
            bw, bh = float(box[2] - box[0]), float(box[3] - box[1])
            anns.append({
                "id": len(anns) + 1, "image_id": i, "category_id": int(label),
                "bbox": [float(box[0]), float(box[1]), bw, bh], "area": bw * bh, "iscrowd": 0,
            })
    for i, p in enumerate(preds):
        boxes = np.asarray(p["boxes"], np.float64).reshape(-1, 4)
        for box, score, label in zip(boxes, np.asarray(p["scores"]).reshape(-1), np.asarray(p["labels"]).reshape(-1)):
            results.append({
                "image_id": i, "category_id": int(label), "score": float(score),
                "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
            })
    categories = [{"id": c, "name": str(c)} for c in range(1, num_classes + 1)]
    return {"images": images, "annotations": anns, "categories": categories}, results


def coco_metrics(preds: Sequence[Arrays], gts: Sequence[Arrays], num_classes: int) -> dict:
    """{"map": AP@[.5:.95], "map50": AP@.5, "per_class_ap": [AP@[.5:.95] per class], "precision": array}.

    NaN where undefined (no ground truth at all, or none for a class); 0 when there are ground truths but no
    predictions.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dataset, results = to_coco_dicts(preds, gts, num_classes)
    if not dataset["annotations"]:
        return {"map": math.nan, "map50": math.nan, "per_class_ap": [math.nan] * num_classes, "precision": None}
    if not results:
        per_class = [0.0 if any(a["category_id"] == c for a in dataset["annotations"]) else math.nan for c in range(1, num_classes + 1)]
        return {"map": 0.0, "map50": 0.0, "per_class_ap": per_class, "precision": None}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and tables
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.imgIds = list(range(len(gts)))
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # [T, R, K, A, M]
    per_class = []
    for k in range(num_classes):
        p = precision[:, :, k, 0, -1]
        per_class.append(float(p[p > -1].mean()) if (p > -1).any() else math.nan)
    return {"map": float(ev.stats[0]), "map50": float(ev.stats[1]), "per_class_ap": per_class, "precision": precision}
