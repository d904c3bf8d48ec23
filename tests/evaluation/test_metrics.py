"""Metrics against hand-computed cases and against pycocotools."""
from __future__ import annotations

import math

import numpy as np
import pytest

from training.evaluation import evaluate
from training.evaluation.cocoeval import coco_metrics
from training.evaluation.metrics import (
    average_precision,
    box_iou,
    coco_interpolated_ap,
    deeppcb_metrics,
    match_class,
    precision_recall,
    voc_ap,
)


def P(boxes, scores, labels):  # noqa: N802 - tiny constructors keep the hand cases readable
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "scores": np.asarray(scores, np.float32), "labels": np.asarray(labels, np.int64)}


def G(boxes, labels):  # noqa: N802
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "labels": np.asarray(labels, np.int64)}


def test_box_iou_hand_values() -> None:
    iou = box_iou(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10], [0, 0, 10, 5], [5, 5, 15, 15], [20, 20, 30, 30]]))
    np.testing.assert_allclose(iou, [[1.0, 0.5, 25 / 175, 0.0]])


def _hand_case():
    """One class, 3 GTs in 2 images, 5 detections.

    image 0: GT A=[0,0,10,10], B=[20,20,30,30]; det 0.9 on A (IoU 1, TP), 0.8 at [21,21,31,31] (IoU 81/119 =
    0.68 with B, TP), 0.7 at [50,50,60,60] (FP).
    image 1: GT C=[0,0,10,10]; det 0.6 at [0,0,10,5] (IoU 0.5 -> TP at >= 0.5), det 0.5 exactly on C (FP: C was
    already taken by the higher-scored det; each GT is matched once).
    Sorted TP/FP: T T F T F -> precision 1, 1, 2/3, 3/4, 3/5; recall 1/3, 2/3, 2/3, 1, 1.
    All-point AP = 1/3 * 1 + 1/3 * 1 + 1/3 * 3/4 = 11/12.
    """
    preds = [P([[0, 0, 10, 10], [21, 21, 31, 31], [50, 50, 60, 60]], [0.9, 0.8, 0.7], [1, 1, 1]),
             P([[0, 0, 10, 5], [0, 0, 10, 10]], [0.6, 0.5], [1, 1])]
    gts = [G([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1]), G([[0, 0, 10, 10]], [1])]
    return preds, gts


def test_ap_hand_case() -> None:
    preds, gts = _hand_case()
    m = match_class(preds, gts, 1, 0.5)
    assert m.tp.tolist() == [True, True, False, True, False] and m.num_gt == 3
    p, r = precision_recall(m)
    np.testing.assert_allclose(p, [1, 1, 2 / 3, 3 / 4, 3 / 5])
    np.testing.assert_allclose(r, [1 / 3, 2 / 3, 2 / 3, 1, 1])
    assert voc_ap(p, r) == pytest.approx(11 / 12)
    assert average_precision(preds, gts, 1, 0.5) == pytest.approx(11 / 12)
    # at a strict IoU > 0.5 the 0.6 detection (IoU exactly 0.5) fails and the 0.5 one takes C instead:
    # T T F F T -> precision 1, 1, 2/3, 1/2, 3/5; envelope 1, 1, 3/5 at recall 1/3, 2/3, 1 -> AP = 2/3 + 1/5
    assert average_precision(preds, gts, 1, 0.5, strict=True) == pytest.approx(2 / 3 + 1 / 5)
    # 101-point COCO interpolation of the same curve: recall thresholds 0..0.66 -> 1 (67 points), 0.67..1 -> 3/4
    assert coco_interpolated_ap(p, r) == pytest.approx((67 * 1 + 34 * 0.75) / 101)


def test_deeppcb_protocol_hand_case() -> None:
    """class 1: GT [0,0,10,10]; det 0.9 at [0,0,10,4] (IoU 0.4: TP for DeepPCB's > 0.33, FP at 0.5).
    class 2: GTs [20,20,40,40], [0,50,100,51]; dets 0.8 exact (TP), 0.7 on the class-1 box (FP: wrong class),
    0.6 at [0,50,33,51] (IoU exactly 0.33: FP, the rule is strict).
    DeepPCB AP: class 1 = 1, class 2 = 1/2 (precision 1 up to recall 1/2) -> mAP 0.75.
    Pooled F: T T F F over 3 GTs -> F after each = 1/2, 4/5, 2/3, 4/7 -> best 0.8 at score 0.8 (P 1, R 2/3).
    mAP@0.5: class 1 = 0, class 2 = 1/2 -> 0.25.
    """
    preds = [P([[0, 0, 10, 4], [20, 20, 40, 40], [0, 0, 10, 10], [0, 50, 33, 51]], [0.9, 0.8, 0.7, 0.6], [1, 2, 2, 2])]
    gts = [G([[0, 0, 10, 10], [20, 20, 40, 40], [0, 50, 100, 51]], [1, 2, 2])]
    d = deeppcb_metrics(preds, gts, 2)
    assert d["per_class_ap"] == pytest.approx([1.0, 0.5])
    assert d["map"] == pytest.approx(0.75)
    assert d["fscore"] == pytest.approx(0.8) and d["threshold"] == pytest.approx(0.8)
    assert d["precision"] == pytest.approx(1.0) and d["recall"] == pytest.approx(2 / 3)
    r = evaluate(preds, gts, ["open", "short"])
    assert r["map50"] == pytest.approx(0.25) and r["deeppcb_map"] == pytest.approx(0.75)
    assert r["deeppcb_fscore"] == pytest.approx(0.8)
    assert r["per_class"]["open"]["ap50"] == 0.0 and r["per_class"]["open"]["deeppcb_ap"] == pytest.approx(1.0)


def _random_case(seed: int, n_images: int = 40, n_classes: int = 3):
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for _ in range(n_images):
        k = int(rng.integers(0, 6))
        xy = rng.uniform(0, 300, (k, 2))
        gb = np.c_[xy, xy + rng.uniform(8, 80, (k, 2))]
        gl = rng.integers(1, n_classes + 1, k)
        keep = rng.random(k) < 0.8
        pb = gb[keep] + rng.normal(0, 5, (int(keep.sum()), 4))
        pb = np.c_[np.minimum(pb[:, :2], pb[:, 2:]), np.maximum(pb[:, :2], pb[:, 2:]) + 1]  # detectors emit x2 > x1
        nf = int(rng.integers(0, 4))
        fxy = rng.uniform(0, 300, (nf, 2))
        fb = np.c_[fxy, fxy + rng.uniform(8, 80, (nf, 2))]
        boxes = np.r_[pb, fb]
        preds.append(P(boxes, rng.random(len(boxes)), np.r_[gl[keep], rng.integers(1, n_classes + 1, nf)]))
        gts.append(G(gb, gl))
    return preds, gts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_pycocotools_at_iou_05(seed: int) -> None:
    preds, gts = _random_case(seed)
    coco = coco_metrics(preds, gts, 3)
    ours_101 = []
    for c in range(1, 4):
        p, r = precision_recall(match_class(preds, gts, c, 0.5))
        ours_101.append(coco_interpolated_ap(p, r))
        # same matching + same interpolation -> the same precision curve as pycocotools, to float precision
        assert ours_101[-1] == pytest.approx(float(coco["precision"][0, :, c - 1, 0, 2].mean()), abs=1e-9)
    assert float(np.mean(ours_101)) == pytest.approx(coco["map50"], abs=1e-9)
    # all-point (VOC) vs 101-point (COCO) interpolation of the same curve: close, not identical
    assert evaluate(preds, gts, ["a", "b", "c"])["map50"] == pytest.approx(coco["map50"], abs=0.02)


def test_evaluate_keys_perfect_and_empty_cases() -> None:
    preds, gts = _random_case(3)
    perfect = [P(g["boxes"], np.linspace(1, 0.5, len(g["labels"])), g["labels"]) for g in gts]
    r = evaluate(perfect, gts, ["a", "b", "c"])
    for key in ("map50", "coco_map", "deeppcb_map", "deeppcb_fscore", "per_class", "images"):
        assert key in r
    assert r["map50"] == pytest.approx(1.0) and r["coco_map"] == pytest.approx(1.0)
    assert r["deeppcb_map"] == pytest.approx(1.0) and r["deeppcb_fscore"] == pytest.approx(1.0)
    assert r["images"] == len(gts) and set(r["per_class"]) == {"a", "b", "c"}
    empty = evaluate([P([], [], [])] * len(gts), gts, ["a", "b", "c"])
    assert empty["map50"] == 0.0 and empty["coco_map"] == 0.0 and empty["deeppcb_fscore"] == 0.0
    nothing = evaluate([P([], [], [])], [G([], [])], ["a"])
    assert math.isnan(nothing["map50"]) and math.isnan(nothing["coco_map"])
    assert nothing["image_level"]["normal_false_alarm_rate"] == 0.0


def test_class_without_gt_is_left_out_of_the_mean() -> None:
    preds = [P([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.8], [1, 2])]
    gts = [G([[0, 0, 10, 10]], [1])]
    r = evaluate(preds, gts, ["a", "b"])
    assert r["map50"] == pytest.approx(1.0) and math.isnan(r["per_class"]["b"]["ap50"])


def test_image_level_rates() -> None:
    preds = [P([[0, 0, 10, 10]], [0.9], [1]), P([[0, 0, 10, 10]], [0.95], [1]), P([], [], [])]
    gts = [G([[0, 0, 10, 10]], [1]), G([], []), G([], [])]
    il = evaluate(preds, gts, ["a"])["image_level"]
    assert il["defective_images"] == 1 and il["normal_images"] == 2
    assert il["defective_recall"] == 1.0 and il["normal_false_alarm_rate"] == 0.5


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match="2 prediction entries but 1"):
        evaluate([P([], [], [])] * 2, [G([], [])], ["a"])
    with pytest.raises(ValueError, match=r"preds\[0\] lacks key 'scores'"):
        evaluate([{"boxes": np.zeros((0, 4)), "labels": np.zeros(0)}], [G([], [])], ["a"])
    with pytest.raises(ValueError, match=r"gts\[0\] labels \[0\] outside 1..1"):
        evaluate([P([], [], [])], [G([[0, 0, 1, 1]], [0])], ["a"])
