"""Detection metrics: VOC all-point AP@0.5, COCO mAP (pycocotools), and the DeepPCB protocol (contract 4).

Inputs are one dict per image of numpy arrays: predictions {"boxes" [D,4] x1y1x2y2, "scores" [D], "labels"
[D] in 1..C}, ground truths {"boxes" [K,4], "labels" [K]}.

Matching (shared by every metric here): per image and class, detections in descending score order each take
the *unmatched* ground truth with the highest IoU; it is a true positive when that IoU passes the threshold,
and every ground truth is matched at most once (as pycocotools). ``iou > thr`` (strict) is the DeepPCB rule,
``iou >= thr`` the COCO one. Classes without ground truth get AP = NaN and are left out of the means.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

#: DeepPCB protocol (Tang et al. 2019): a detection counts when IoU > 0.33 with a same-class box.
DEEPPCB_IOU = 0.33

Arrays = Mapping[str, np.ndarray]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [N, M] of x1y1x2y2 boxes (continuous coordinates: area = (x2-x1)(y2-y1), no +1)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


@dataclass
class ClassMatches:
    """All detections of one class over the dataset, sorted by descending score, with their TP flags."""

    scores: np.ndarray  # [D] descending
    tp: np.ndarray  # bool [D]
    image_index: np.ndarray  # int [D]
    num_gt: int


def _sorted_desc(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-scores, kind="mergesort")  # stable: ties keep input order, as pycocotools


def match_class(
    preds: Sequence[Arrays], gts: Sequence[Arrays], label: int, iou_thr: float, strict: bool = False
) -> ClassMatches:
    """Greedy score-ordered matching of class ``label`` over all images (see the module docstring)."""
    scores, tps, images, num_gt = [], [], [], 0
    for i, (p, g) in enumerate(zip(preds, gts)):
        gmask = np.asarray(g["labels"]) == label
        gboxes = np.asarray(g["boxes"], np.float64).reshape(-1, 4)[gmask]
        num_gt += len(gboxes)
        pmask = np.asarray(p["labels"]) == label
        if not pmask.any():
            continue
        pboxes = np.asarray(p["boxes"], np.float64).reshape(-1, 4)[pmask]
        pscores = np.asarray(p["scores"], np.float64).reshape(-1)[pmask]
        order = _sorted_desc(pscores)
        ious = box_iou(pboxes[order], gboxes)
        taken = np.zeros(len(gboxes), bool)
        for d in range(len(order)):
            free = np.where(taken, -1.0, ious[d])
            best = int(np.argmax(free)) if len(free) else -1
            best_iou = free[best] if best >= 0 else -1.0
            hit = best >= 0 and (best_iou > iou_thr if strict else best_iou >= iou_thr)
            if hit:
                taken[best] = True
            tps.append(hit)
        scores.append(pscores[order])
        images.extend([i] * len(order))
    all_scores = np.concatenate(scores) if scores else np.zeros(0)
    tp = np.asarray(tps, bool)
    idx = np.asarray(images, np.int64)
    order = _sorted_desc(all_scores)
    return ClassMatches(all_scores[order], tp[order], idx[order], num_gt)


def precision_recall(m: ClassMatches) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall after each detection (in descending score order)."""
    ctp = np.cumsum(m.tp)
    cfp = np.cumsum(~m.tp)
    recall = ctp / m.num_gt if m.num_gt else np.full(len(ctp), np.nan)
    precision = ctp / np.maximum(ctp + cfp, 1)
    return precision.astype(np.float64), recall.astype(np.float64)


def _envelope(precision: np.ndarray) -> np.ndarray:
    """Monotonically non-increasing precision envelope (max precision at any higher recall)."""
    return np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision


def voc_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC (2010+) all-point interpolated AP: area under the precision envelope, summed where recall steps."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = _envelope(np.concatenate([[0.0], precision, [0.0]]))
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def coco_interpolated_ap(precision: np.ndarray, recall: np.ndarray, points: int = 101) -> float:
    """COCO's AP: the envelope sampled at ``points`` recall thresholds 0, 0.01, .., 1 (0 beyond max recall)."""
    env = _envelope(precision)
    thresholds = np.linspace(0.0, 1.0, points)
    inds = np.searchsorted(recall, thresholds, side="left")
    q = np.where(inds < len(env), env[np.minimum(inds, len(env) - 1)] if len(env) else 0.0, 0.0)
    return float(np.mean(q))


def average_precision(preds: Sequence[Arrays], gts: Sequence[Arrays], label: int, iou_thr: float, strict: bool = False) -> float:
    """All-point AP of one class (NaN when the class has no ground truth)."""
    m = match_class(preds, gts, label, iou_thr, strict)
    if m.num_gt == 0:
        return math.nan
    p, r = precision_recall(m)
    return voc_ap(p, r) if len(p) else 0.0


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def best_fscore(matches: Sequence[ClassMatches]) -> dict[str, float]:
    """F-score at the best score threshold, detections of all classes pooled (the DeepPCB F-score)."""
    num_gt = sum(m.num_gt for m in matches)
    scores = np.concatenate([m.scores for m in matches]) if matches else np.zeros(0)
    tp = np.concatenate([m.tp for m in matches]) if matches else np.zeros(0, bool)
    out = {"fscore": 0.0, "precision": 0.0, "recall": 0.0, "threshold": math.inf}
    if num_gt == 0 or len(scores) == 0:
        if num_gt == 0:
            out["fscore"] = math.nan
        return out
    order = _sorted_desc(scores)
    scores, tp = scores[order], tp[order]
    ctp = np.cumsum(tp)
    precision = ctp / np.arange(1, len(tp) + 1)
    recall = ctp / num_gt
    f = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    # only cut between distinct scores: a threshold keeps all detections with score >= it
    last_of_score = np.r_[scores[1:] != scores[:-1], True]
    f = np.where(last_of_score, f, -1.0)
    k = int(np.argmax(f))
    return {"fscore": float(f[k]), "precision": float(precision[k]), "recall": float(recall[k]), "threshold": float(scores[k])}


def deeppcb_metrics(preds: Sequence[Arrays], gts: Sequence[Arrays], num_classes: int) -> dict:
    """DeepPCB protocol: per-class AP and mAP with IoU > 0.33, and the pooled F-score at the best threshold."""
    matches = [match_class(preds, gts, c, DEEPPCB_IOU, strict=True) for c in range(1, num_classes + 1)]
    aps = []
    for m in matches:
        if m.num_gt == 0:
            aps.append(math.nan)
            continue
        p, r = precision_recall(m)
        aps.append(voc_ap(p, r) if len(p) else 0.0)
    return {"map": _nanmean(aps), "per_class_ap": aps, **best_fscore(matches)}


def image_level(preds: Sequence[Arrays], gts: Sequence[Arrays], threshold: float) -> dict[str, float]:
    """What the line cares about: defective images caught and normal images falsely flagged at ``threshold``."""
    flagged = np.array([bool((np.asarray(p["scores"]) >= threshold).any()) for p in preds], bool)
    defective = np.array([len(np.asarray(g["labels"]).reshape(-1)) > 0 for g in gts], bool)
    n_def, n_norm = int(defective.sum()), int((~defective).sum())
    return {
        "threshold": float(threshold),
        "defective_images": n_def,
        "normal_images": n_norm,
        "defective_recall": float(flagged[defective].mean()) if n_def else math.nan,
        "normal_false_alarm_rate": float(flagged[~defective].mean()) if n_norm else math.nan,
    }


def validate_inputs(preds: Sequence[Arrays], gts: Sequence[Arrays], num_classes: int) -> None:
    """Clear errors for malformed inputs, naming the image index and key."""
    if len(preds) != len(gts):
        raise ValueError(f"evaluate: {len(preds)} prediction entries but {len(gts)} ground-truth entries")
    for kind, items, keys in (("preds", preds, ("boxes", "scores", "labels")), ("gts", gts, ("boxes", "labels"))):
        for i, item in enumerate(items):
            for key in keys:
                if key not in item:
                    raise ValueError(f"evaluate: {kind}[{i}] lacks key {key!r}")
            n = len(np.asarray(item["labels"]).reshape(-1))
            if np.asarray(item["boxes"]).reshape(-1, 4).shape[0] != n or (kind == "preds" and len(np.asarray(item["scores"]).reshape(-1)) != n):
                raise ValueError(f"evaluate: {kind}[{i}] boxes/scores/labels lengths differ")
            labels = np.asarray(item["labels"]).reshape(-1)
            if n and (labels.min() < 1 or labels.max() > num_classes):
                raise ValueError(f"evaluate: {kind}[{i}] labels {sorted(set(labels.tolist()))} outside 1..{num_classes}")


def evaluate(preds: Sequence[Arrays], gts: Sequence[Arrays], class_names: Sequence[str], iou_thr: float = 0.5) -> dict:
    """All metrics for one evaluation run (contract 4).

    Returns map50 (VOC all-point, IoU >= ``iou_thr``), coco_map (AP@[.5:.95]) and coco_map50 from pycocotools,
    deeppcb_map / deeppcb_fscore (+ precision, recall, threshold), image-level rates at that threshold,
    defect_recall (class-agnostic, at 0.1 and 1 false call per image) and the class confusion at that threshold
    (see :mod:`training.evaluation.operating_point` for the matching rule),
    per_class {name: {ap50, coco_ap, deeppcb_ap, num_gt, num_pred}}, images, num_gt, num_pred.
    NaN marks "undefined" (no ground truth); ``write_report`` turns it into JSON null.
    """
    from training.evaluation.cocoeval import coco_metrics
    from training.evaluation.operating_point import operating_point

    num_classes = len(class_names)
    validate_inputs(preds, gts, num_classes)
    ap50 = [average_precision(preds, gts, c, iou_thr) for c in range(1, num_classes + 1)]
    coco = coco_metrics(preds, gts, num_classes)
    dpcb = deeppcb_metrics(preds, gts, num_classes)

    def count(items: Sequence[Arrays], c: int) -> int:
        return int(sum((np.asarray(x["labels"]).reshape(-1) == c).sum() for x in items))

    per_class = {
        name: {
            "ap50": ap50[c - 1],
            "coco_ap": coco["per_class_ap"][c - 1],
            "deeppcb_ap": dpcb["per_class_ap"][c - 1],
            "num_gt": count(gts, c),
            "num_pred": count(preds, c),
        }
        for c, name in enumerate(class_names, 1)
    }
    threshold = dpcb["threshold"] if math.isfinite(dpcb["threshold"]) else 0.5
    return {
        "map50": _nanmean(ap50),
        "coco_map": coco["map"],
        "coco_map50": coco["map50"],
        "deeppcb_map": dpcb["map"],
        "deeppcb_fscore": dpcb["fscore"],
        "deeppcb_precision": dpcb["precision"],
        "deeppcb_recall": dpcb["recall"],
        "deeppcb_threshold": dpcb["threshold"],
        "image_level": image_level(preds, gts, threshold),
        **operating_point(preds, gts, class_names, confusion_threshold=threshold),
        "per_class": per_class,
        "images": len(gts),
        "num_gt": sum(v["num_gt"] for v in per_class.values()),
        "num_pred": sum(v["num_pred"] for v in per_class.values()),
    }
