"""Class-agnostic defect recall at a false-call budget and the confusion matrix, on cases computed by hand."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from training.evaluation import evaluate, write_report
from training.evaluation.operating_point import (
    DUPLICATE,
    FALSE_CALL,
    FIND,
    confusion_matrix,
    match_agnostic,
    recall_at_false_calls,
)


def P(boxes, scores, labels):  # noqa: N802 - tiny constructors keep the hand cases readable
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "scores": np.asarray(scores, np.float32),
            "labels": np.asarray(labels, np.int64)}


def G(boxes, labels):  # noqa: N802
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "labels": np.asarray(labels, np.int64)}


def _line_case():
    """3 images, 3 defects (A, B, C), 9 detections.

    image 0: GT A=[0,0,10,10] class 1, B=[20,0,30,10] class 2.
      0.9 class 1 exactly on A        -> finds A (as class 1)
      0.8 class 2 exactly on A        -> duplicate (A already found)
      0.7 class 1 exactly on B        -> finds B (a class-2 defect reported as class 1)
      0.6 class 2 at [50,50,60,60]    -> false call
      0.3 class 1 at [0,0,10,3]       -> IoU 0.3 with A: false call (not > 0.33)
    image 1: GT C=[0,0,10,10] class 2.
      0.5 class 2 at [0,0,10,4]       -> IoU 0.4: finds C
      0.4 class 1 at [40,40,50,50]    -> false call
    image 2: no defect.
      0.65 class 2, 0.2 class 1       -> false calls
    By score: 0.9 F, 0.8 D, 0.7 F, 0.65 X, 0.6 X, 0.5 F, 0.4 X, 0.3 X, 0.2 X
    found:        1  1  2  2  2  3  3  3  3
    false calls:  0  0  0  1  2  2  3  4  5   -> per image (3 images) 0 0 0 .33 .67 .67 1 1.33 1.67
    <= 0.1 per image: cut at 0.7, recall 2/3;  <= 1 per image: cut at 0.4, recall 3/3.
    """
    preds = [
        P([[0, 0, 10, 10], [0, 0, 10, 10], [20, 0, 30, 10], [50, 50, 60, 60], [0, 0, 10, 3]],
          [0.9, 0.8, 0.7, 0.6, 0.3], [1, 2, 1, 2, 1]),
        P([[0, 0, 10, 4], [40, 40, 50, 50]], [0.5, 0.4], [2, 1]),
        P([[5, 5, 9, 9], [1, 1, 3, 3]], [0.65, 0.2], [2, 1]),
    ]
    gts = [G([[0, 0, 10, 10], [20, 0, 30, 10]], [1, 2]), G([[0, 0, 10, 10]], [2]), G(np.zeros((0, 4)), [])]
    return preds, gts


def test_matching_outcomes_by_hand() -> None:
    m = match_agnostic(*_line_case())
    order = np.argsort(-m.scores, kind="mergesort")
    assert m.outcome[order].tolist() == [FIND, DUPLICATE, FIND, FALSE_CALL, FALSE_CALL, FIND, FALSE_CALL,
                                         FALSE_CALL, FALSE_CALL]
    assert m.gt_labels.tolist() == [1, 2, 2]
    assert m.gt_found_label.tolist() == [1, 1, 2]
    np.testing.assert_allclose(m.gt_found_score, [0.9, 0.7, 0.5], rtol=1e-6)


def test_recall_at_false_call_budgets_by_hand() -> None:
    m = match_agnostic(*_line_case())
    low = recall_at_false_calls(m, 0.1)
    assert low["recall"] == pytest.approx(2 / 3) and low["threshold"] == pytest.approx(0.7)
    assert low["false_calls_per_image"] == 0.0 and (low["found"], low["false_calls"]) == (2, 0)
    one = recall_at_false_calls(m, 1.0)
    assert one["recall"] == pytest.approx(1.0) and one["threshold"] == pytest.approx(0.4)
    assert one["false_calls_per_image"] == pytest.approx(1.0) and (one["found"], one["false_calls"]) == (3, 3)
    # a budget between cuts keeps the last cut inside it: 0.5 per image -> 0.65 (1/3), recall still 2/3
    half = recall_at_false_calls(m, 0.5)
    assert half["threshold"] == pytest.approx(0.65) and half["recall"] == pytest.approx(2 / 3)


def test_equal_scores_are_never_split_and_an_exceeded_budget_gives_zero() -> None:
    """1 image: 0.9 finds the defect, then two false calls tied at 0.5. A budget of 1 cannot keep one of the
    tied pair and drop the other: the cut stays at 0.9. If the top detection is itself a false call over budget,
    recall is 0 with no threshold."""
    preds = [P([[0, 0, 10, 10], [30, 30, 40, 40], [50, 50, 60, 60]], [0.9, 0.5, 0.5], [1, 1, 1])]
    gts = [G([[0, 0, 10, 10]], [1])]
    r = recall_at_false_calls(match_agnostic(preds, gts), 1.0)
    assert r["threshold"] == pytest.approx(0.9) and r["recall"] == 1.0 and r["false_calls"] == 0
    wrong_first = [P([[30, 30, 40, 40], [0, 0, 10, 10]], [0.9, 0.8], [1, 1])]
    r = recall_at_false_calls(match_agnostic(wrong_first, gts), 0.5)
    assert r["recall"] == 0.0 and r["threshold"] is None


def test_iou_rule_is_strictly_above_a_third() -> None:
    """A detection at IoU exactly 0.33 (33 of 100 px) does not find the defect; one at 0.34 does."""
    gts = [G([[0, 0, 100, 1]], [1])]
    at = recall_at_false_calls(match_agnostic([P([[0, 0, 33, 1]], [0.9], [1])], gts), 10.0)
    above = recall_at_false_calls(match_agnostic([P([[0, 0, 34, 1]], [0.9], [1])], gts), 10.0)
    assert (at["recall"], at["false_calls"]) == (0.0, 1)
    assert (above["recall"], above["false_calls"]) == (1.0, 0)


def test_confusion_matrix_by_hand() -> None:
    """Rows: GT class 1, 2, false call; columns: detected class 1, 2, missed.
    score >= 0.55: A found as 1, B found as 1, C missed (found only at 0.5); false calls 0.65 and 0.6, both class 2.
    score >= 0.45: C found as 2 as well."""
    m = match_agnostic(*_line_case())
    assert confusion_matrix(m, 2, 0.55).tolist() == [[1, 0, 0], [1, 0, 1], [0, 2, 0]]
    assert confusion_matrix(m, 2, 0.45).tolist() == [[1, 0, 0], [1, 1, 0], [0, 2, 0]]
    # everything: the 0.4 class-1, 0.3 class-1 and 0.2 class-1 false calls join
    assert confusion_matrix(m, 2, 0.0).tolist() == [[1, 0, 0], [1, 1, 0], [3, 2, 0]]


def test_evaluate_and_report_carry_the_operating_point(tmp_path: Path) -> None:
    preds, gts = _line_case()
    result = evaluate(preds, gts, ("open", "short"))
    recall = result["defect_recall"]
    assert recall["iou_thresh"] == pytest.approx(0.33)
    assert set(recall["at_false_calls_per_image"]) == {"0.1", "1"}
    assert recall["at_false_calls_per_image"]["1"]["recall"] == pytest.approx(1.0)
    confusion = result["confusion"]
    assert confusion["rows"] == ["open", "short", "false call"] and confusion["columns"] == ["open", "short", "missed"]
    assert confusion["threshold"] == result["deeppcb_threshold"]
    write_report(tmp_path, result, preds, gts, class_names=("open", "short"))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["defect_recall"]["at_false_calls_per_image"]["0.1"]["recall"] == pytest.approx(2 / 3)
    assert report["confusion"]["matrix"] == confusion["matrix"]
    table = (tmp_path / "per_class.md").read_text()
    assert "| <= 0.1 | 66.7 | 0.700 | 0.000 |" in table
    assert "| <= 1 | 100.0 | 0.400 | 1.000 |" in table
    row = " | ".join(str(c) for c in confusion["matrix"][1])
    assert f"| short | {row} |" in table and "| false call |" in table


def test_no_ground_truth_gives_undefined_recall_and_counts_false_calls() -> None:
    m = match_agnostic([P([[0, 0, 5, 5]], [0.9], [1])], [G(np.zeros((0, 4)), [])])
    r = recall_at_false_calls(m, 1.0)
    assert math.isnan(r["recall"]) and r["false_calls"] == 1
    assert confusion_matrix(m, 1, 0.5).tolist() == [[0, 0], [1, 0]]
