"""The line's operating point: class-agnostic defect recall at a false-call budget, and the class confusion.

A line asks what mAP does not say: how many defects escape when the operators accept a given number of false
calls per image (a missed defect is an escape, a false call costs an operator a recheck), and which defects are
reported as which. Both come from one class-agnostic matching.

Matching rule, per image:

1. the detections of all classes are pooled and taken in descending score order (equal scores keep their
   input order);
2. a detection **finds** the not yet found ground-truth box (of any class) with which it has the highest IoU, if
   that IoU is > 0.33 (strictly), DeepPCB's rule (Tang et al. 2019): enough overlap to send an operator to the
   defect. It is looser than COCO's 0.5, which grades localisation, not whether the defect was reported;
3. otherwise, if it overlaps (IoU > 0.33) a box that a higher-scored detection already found, it is a
   **duplicate**: it sends the operator to a defect already flagged, so it is neither a find nor a false call
   (as in FROC analyses such as LUNA16). Per-class NMS leaves such boxes when two classes fire on one defect;
4. otherwise it is a **false call**.

A detection's outcome depends only on the higher-scored detections of its image, so the matching at a score
threshold t is the matching of all detections restricted to score >= t: one pass serves every threshold.

- recall(t) = ground-truth boxes found by a detection with score >= t / all ground-truth boxes;
- false calls per image FPI(t) = false calls with score >= t / number of images (defect-free images included);
- recall at FPI f = recall(t) at the lowest threshold t (a detection score) with FPI(t) <= f, reported with that
  t; 0 (threshold null) when the highest-scored detections alone already exceed f. Thresholds only cut between
  distinct scores: a threshold keeps every detection scored >= it.
- confusion at t: one row per ground-truth class, then "false call"; one column per detected class, then
  "missed". A found box counts under the class of the detection that found it (the highest-scored one).
  Duplicates are not counted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from training.evaluation.metrics import DEEPPCB_IOU, box_iou

Arrays = Mapping[str, np.ndarray]

#: False-call budgets (per image) at which ``evaluate`` reports the class-agnostic defect recall.
FALSE_CALL_BUDGETS: tuple[float, ...] = (0.1, 1.0)
FIND, DUPLICATE, FALSE_CALL = 0, 1, 2
FALSE_CALL_ROW = "false call"
MISSED_COLUMN = "missed"


@dataclass
class AgnosticMatches:
    """Every detection of a dataset with its outcome, and every ground-truth box with what found it."""

    scores: np.ndarray  # float [D]
    labels: np.ndarray  # int [D], detected class 1..C
    outcome: np.ndarray  # int [D], FIND / DUPLICATE / FALSE_CALL
    gt_labels: np.ndarray  # int [K]
    gt_found_score: np.ndarray  # float [K], score of the detection that found it, -inf if none did
    gt_found_label: np.ndarray  # int [K], class of that detection, 0 if none
    num_images: int


def match_agnostic(preds: Sequence[Arrays], gts: Sequence[Arrays], iou_thr: float = DEEPPCB_IOU) -> AgnosticMatches:
    """Class-agnostic greedy matching of every image (the module docstring's rule; IoU strictly > ``iou_thr``)."""
    scores, labels, outcome = [], [], []
    gt_labels, found_score, found_label = [], [], []
    for p, g in zip(preds, gts):
        gboxes = np.asarray(g["boxes"], np.float64).reshape(-1, 4)
        glabels = np.asarray(g["labels"], np.int64).reshape(-1)
        pscores = np.asarray(p["scores"], np.float64).reshape(-1)
        order = np.argsort(-pscores, kind="mergesort")
        pboxes = np.asarray(p["boxes"], np.float64).reshape(-1, 4)[order]
        plabels = np.asarray(p["labels"], np.int64).reshape(-1)[order]
        ious = box_iou(pboxes, gboxes)
        g_score = np.full(len(gboxes), -np.inf)
        g_label = np.zeros(len(gboxes), np.int64)
        taken = np.zeros(len(gboxes), bool)
        for d in range(len(order)):
            free = np.where(taken, -1.0, ious[d])
            best = int(np.argmax(free)) if len(free) else -1
            if best >= 0 and free[best] > iou_thr:
                taken[best] = True
                g_score[best], g_label[best] = pscores[order[d]], plabels[d]
                outcome.append(FIND)
            elif bool((ious[d][taken] > iou_thr).any()):
                outcome.append(DUPLICATE)
            else:
                outcome.append(FALSE_CALL)
        scores.append(pscores[order])
        labels.append(plabels)
        gt_labels.append(glabels)
        found_score.append(g_score)
        found_label.append(g_label)

    def cat(parts: list[np.ndarray], dtype) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    return AgnosticMatches(
        scores=cat(scores, np.float64),
        labels=cat(labels, np.int64),
        outcome=np.asarray(outcome, np.int64),
        gt_labels=cat(gt_labels, np.int64),
        gt_found_score=cat(found_score, np.float64),
        gt_found_label=cat(found_label, np.int64),
        num_images=len(gts),
    )


def recall_at_false_calls(m: AgnosticMatches, budget: float) -> dict[str, float | int | None]:
    """Recall at the lowest threshold with at most ``budget`` false calls per image (see the module docstring)."""
    num_gt = len(m.gt_labels)
    out: dict[str, float | int | None] = {
        "recall": math.nan if num_gt == 0 else 0.0, "threshold": None, "false_calls_per_image": 0.0,
        "found": 0, "false_calls": 0,
    }
    if m.num_images == 0 or len(m.scores) == 0:
        return out
    order = np.argsort(-m.scores, kind="mergesort")
    scores, outcome = m.scores[order], m.outcome[order]
    finds = np.cumsum(outcome == FIND)
    false_calls = np.cumsum(outcome == FALSE_CALL)
    last_of_score = np.r_[scores[1:] != scores[:-1], True]
    valid = np.nonzero(last_of_score & (false_calls <= budget * m.num_images))[0]
    if len(valid) == 0:
        return out
    k = int(valid[-1])
    out.update(
        recall=float(finds[k] / num_gt) if num_gt else math.nan,
        threshold=float(scores[k]),
        false_calls_per_image=float(false_calls[k] / m.num_images),
        found=int(finds[k]),
        false_calls=int(false_calls[k]),
    )
    return out


def confusion_matrix(m: AgnosticMatches, num_classes: int, threshold: float) -> np.ndarray:
    """[C+1, C+1] counts at score >= ``threshold``: rows GT class 1..C then false call, columns detected class
    1..C then missed (the bottom-right cell stays 0)."""
    matrix = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    found = m.gt_found_score >= threshold
    for gt_label, by_label, hit in zip(m.gt_labels, m.gt_found_label, found):
        matrix[gt_label - 1, (by_label - 1) if hit else num_classes] += 1
    calls = (m.outcome == FALSE_CALL) & (m.scores >= threshold)
    for label in m.labels[calls]:
        matrix[num_classes, label - 1] += 1
    return matrix


def operating_point(
    preds: Sequence[Arrays],
    gts: Sequence[Arrays],
    class_names: Sequence[str],
    confusion_threshold: float,
    budgets: Sequence[float] = FALSE_CALL_BUDGETS,
    iou_thr: float = DEEPPCB_IOU,
) -> dict:
    """``defect_recall`` (one entry per false-call budget, keyed by the budget as text) and ``confusion`` at
    ``confusion_threshold``, both from :func:`match_agnostic`."""
    m = match_agnostic(preds, gts, iou_thr)
    recall = {f"{budget:g}": recall_at_false_calls(m, budget) for budget in budgets}
    matrix = confusion_matrix(m, len(class_names), confusion_threshold)
    return {
        "defect_recall": {"iou_thresh": iou_thr, "at_false_calls_per_image": recall},
        "confusion": {
            "threshold": confusion_threshold,
            "iou_thresh": iou_thr,
            "rows": [*class_names, FALSE_CALL_ROW],
            "columns": [*class_names, MISSED_COLUMN],
            "matrix": matrix.tolist(),
        },
    }
