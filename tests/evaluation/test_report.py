"""write_report: strict JSON (NaN -> null), per-class table, PR curves PNG, annotated examples."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from training.data.synthetic import SYNTHETIC_CLASSES, SyntheticSpec, generate_sample
from training.evaluation import evaluate, write_report


def test_write_report_files(tmp_path: Path) -> None:
    spec = SyntheticSpec(height=64, width=64, defect_size=(6, 14), normal_fraction=0.0, noise_std=0.0, gain_jitter=0.0)
    samples = [generate_sample(spec, i) for i in range(4)]
    gts = [{"boxes": s.boxes, "labels": s.labels} for s in samples]
    preds = [{"boxes": s.boxes.copy(), "scores": np.full(len(s.boxes), 0.9, np.float32), "labels": s.labels} for s in samples]
    result = evaluate(preds, gts, SYNTHETIC_CLASSES)
    path = write_report(tmp_path / "rep", result, preds, gts, samples=samples, class_names=SYNTHETIC_CLASSES, seconds=1.5, max_examples=2)
    report = json.loads(path.read_text())  # strict JSON: json.loads would accept NaN, so check the text too
    assert "NaN" not in path.read_text()
    for key in ("map50", "coco_map", "deeppcb_map", "deeppcb_fscore", "per_class", "images", "seconds"):
        assert key in report
    assert report["seconds"] == 1.5 and report["images"] == 4 and report["map50"] == 1.0
    missing = [c for c in SYNTHETIC_CLASSES if result["per_class"][c]["num_gt"] == 0]
    for c in missing:  # classes without GT: undefined AP becomes null
        assert report["per_class"][c]["ap50"] is None
    table = (tmp_path / "rep" / "per_class.md").read_text()
    assert "| class |" in table and all(f"| {c} |" in table for c in SYNTHETIC_CLASSES)
    png = cv2.imread(str(tmp_path / "rep" / "pr_curves.png"))
    assert png is not None and png.shape[0] > 100
    examples = sorted((tmp_path / "rep" / "examples").glob("*.png"))
    assert len(examples) == 2
    img = cv2.cvtColor(cv2.imread(str(examples[0])), cv2.COLOR_BGR2RGB)
    x1, y1, x2, y2 = samples[0].boxes[0].astype(int)
    edge = img[y1, x1:x2].astype(int)  # top edge of the first box: drawn in green (GT) / red (prediction)
    assert ((edge[:, 1] > 150) | (edge[:, 0] > 150)).mean() > 0.5
