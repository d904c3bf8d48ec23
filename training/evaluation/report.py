"""Write an evaluation run to disk: numbers for machines, a table for people, curves and examples for eyes.

``out_dir/report.json``   every figure of :func:`~training.evaluation.metrics.evaluate` (NaN -> null) + seconds
``out_dir/per_class.md``  markdown table per class (GT count, predictions, AP50, COCO AP, DeepPCB AP), the
                          class-agnostic defect recall at 0.1 and 1 false call per image, the confusion matrix
``out_dir/pr_curves.png`` precision/recall per class at IoU 0.5
``out_dir/examples/*.png`` a few images, ground truth green, predictions red with ``label score``
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from training.data.sample import Sample
from training.evaluation.metrics import match_class, precision_recall

Arrays = Mapping[str, np.ndarray]
GT_COLOR = (0, 200, 0)  # RGB
PRED_COLOR = (230, 0, 0)


def _jsonable(value: Any) -> Any:
    """NaN/inf -> None, numpy scalars/arrays -> Python: report.json must be strict JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _fmt(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{100 * v:.1f}"


def per_class_table(result: Mapping[str, Any]) -> str:
    lines = [
        "| class | GT | predictions | AP50 | COCO AP | DeepPCB AP |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in result["per_class"].items():
        lines.append(
            f"| {name} | {row['num_gt']} | {row['num_pred']} | {_fmt(row['ap50'])} | {_fmt(row['coco_ap'])} | {_fmt(row['deeppcb_ap'])} |"
        )
    lines.append(
        f"| **all** | {result.get('num_gt', '')} | {result.get('num_pred', '')} | {_fmt(result['map50'])} | "
        f"{_fmt(result['coco_map'])} | {_fmt(result['deeppcb_map'])} |"
    )
    lines.append("")
    lines.append(f"DeepPCB F-score: {_fmt(result['deeppcb_fscore'])} (score threshold {result.get('deeppcb_threshold')})")
    if "defect_recall" in result:
        lines += ["", *operating_point_tables(result)]
    return "\n".join(lines) + "\n"


def _score(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"


def operating_point_tables(result: Mapping[str, Any]) -> list[str]:
    """Markdown lines: class-agnostic defect recall per false-call budget, then the confusion matrix."""
    recall = result["defect_recall"]
    iou = recall["iou_thresh"]
    lines = [
        f"Class-agnostic defect recall (a defect is found by a detection of any class with IoU > {iou}; "
        "duplicates on a found defect are not false calls):",
        "",
        "| false calls per image | recall | score threshold | false calls per image there |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for budget, row in recall["at_false_calls_per_image"].items():
        lines.append(f"| <= {budget} | {_fmt(row['recall'])} | {_score(row['threshold'])} | "
                     f"{row['false_calls_per_image']:.3f} |")
    confusion = result["confusion"]
    lines += [
        "",
        f"Confusion at score >= {_score(confusion['threshold'])} (rows: ground truth, columns: detected as; "
        f"IoU > {confusion['iou_thresh']}, any class):",
        "",
        "| ground truth \\ detected | " + " | ".join(confusion["columns"]) + " |",
        "| --- |" + " ---: |" * len(confusion["columns"]),
    ]
    last = len(confusion["rows"]) - 1
    for index, (name, counts) in enumerate(zip(confusion["rows"], confusion["matrix"])):
        cells = [str(c) for c in counts]
        if index == last:
            cells[-1] = "-"  # a false call has nothing to miss
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def plot_pr_curves(path: Path, preds: Sequence[Arrays], gts: Sequence[Arrays], class_names: Sequence[str], iou_thr: float = 0.5) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for c, name in enumerate(class_names, 1):
        m = match_class(preds, gts, c, iou_thr)
        if m.num_gt == 0:
            continue
        p, r = precision_recall(m)
        ax.plot(r, p, drawstyle="steps-post", label=f"{name} (n={m.num_gt})", linewidth=1.2)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"precision-recall, IoU >= {iou_thr}")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_example(sample: Sample, pred: Arrays, gt: Arrays, class_names: Sequence[str], score_thresh: float) -> np.ndarray:
    """RGB image with GT boxes (green) and predictions above ``score_thresh`` (red, ``label score``)."""
    img = np.ascontiguousarray(sample.image.copy())
    for box, label in zip(np.asarray(gt["boxes"]).reshape(-1, 4), np.asarray(gt["labels"]).reshape(-1)):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(img, (x1, y1), (x2, y2), GT_COLOR, 2)
    scores = np.asarray(pred["scores"]).reshape(-1)
    for box, label, score in zip(np.asarray(pred["boxes"]).reshape(-1, 4), np.asarray(pred["labels"]).reshape(-1), scores):
        if score < score_thresh:
            continue
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(img, (x1, y1), (x2, y2), PRED_COLOR, 1)
        text = f"{class_names[int(label) - 1]} {score:.2f}"
        cv2.putText(img, text, (x1, max(10, y1 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, PRED_COLOR, 1, cv2.LINE_AA)
    return img


def write_report(
    out_dir: Path | str,
    result: Mapping[str, Any],
    preds: Sequence[Arrays],
    gts: Sequence[Arrays],
    samples: Sequence[Sample] | None = None,
    class_names: Sequence[str] | None = None,
    seconds: float | None = None,
    max_examples: int = 8,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write the report files (see the module docstring); returns the path of report.json.

    ``samples`` (original-size :class:`Sample` s, aligned with ``preds``/``gts``) enable the example images;
    defective images come first. ``extra`` (checkpoint, config, FPS...) is merged into report.json.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(class_names) if class_names is not None else list(result["per_class"])
    report = dict(result)
    report.setdefault("images", len(gts))
    report["seconds"] = seconds if seconds is not None else result.get("seconds")
    report["class_names"] = names
    if extra:
        report.update(extra)
    json_path = out / "report.json"
    json_path.write_text(json.dumps(_jsonable(report), indent=2) + "\n")
    (out / "per_class.md").write_text(per_class_table(result))
    plot_pr_curves(out / "pr_curves.png", preds, gts, names)
    if samples is not None:
        if len(samples) != len(preds):
            raise ValueError(f"write_report: {len(samples)} samples but {len(preds)} predictions")
        thresh = result.get("deeppcb_threshold")
        thresh = float(thresh) if thresh is not None and math.isfinite(float(thresh)) else 0.5
        order = sorted(range(len(samples)), key=lambda i: len(np.asarray(gts[i]["labels"]).reshape(-1)) == 0)
        ex_dir = out / "examples"
        ex_dir.mkdir(exist_ok=True)
        for i in order[:max_examples]:
            img = draw_example(samples[i], preds[i], gts[i], names, thresh)
            stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in (samples[i].image_id or str(i)))
            cv2.imwrite(str(ex_dir / f"{i:04d}_{stem}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return json_path
