"""The evaluation runner behind ``rddn eval`` and the trainer's periodic validation.

Runs a predictor (``training.engine.predictors``: a torch model, or a compiled artifact in the daemon's backend)
over one side of a dataset, batch 1 by default (deployment-like), collects predictions and ground truths in the
metric code's format (contract 4), calls ``training.evaluation.evaluate`` and, with an output directory,
``write_report`` plus a few annotated example images (ground truth green, detections red).

Boxes are compared in the original images' pixels, the frame the daemon reports in: a model's boxes are mapped
back from its test resize (per-axis scaling, which leaves every IoU and so every metric unchanged).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from training.engine.predictors import ModelPredictor, Predictor

#: Detections drawn on the example images (the report's metrics use every score).
EXAMPLE_SCORE_THRESH = 0.3


#: DataConfig keys that say how test images are sized: taken from the checkpoint's training config when
#: ``--data`` is a bare dataset root, so a model trained at 384 px is not evaluated at the 800 px default.
TEST_SIZE_KEYS = ("test_short_size", "test_max_size", "size_divisor")


def trained_test_sizes(checkpoint: str | Path) -> dict[str, Any]:
    """The test-time sizing the checkpoint's run used (empty if it does not record one)."""
    from training.engine.checkpoint import load_checkpoint

    train_cfg = load_checkpoint(checkpoint).get("train_config") or {}
    data = ((train_cfg.get("data") or {}).get("val") or (train_cfg.get("data") or {}).get("train") or {})
    return {k: data[k] for k in TEST_SIZE_KEYS if k in data}


def resolve_eval_data(data: str | Path, list_file: str | None = None, val_groups: Sequence[str] | None = None,
                      split: str = "val", sizes: dict[str, Any] | None = None):
    """``--data`` -> DataConfig: a DeepPCB-format root, a data-config YAML, or a training config YAML (its
    ``base:`` chain included, as ``rddn train`` reads it).

    A DeepPCB root is evaluated as a whole list (``split=all``) unless ``val_groups`` picks board groups, at
    ``sizes`` (see :func:`trained_test_sizes`); a training config gives its ``data.val`` (or the held-out side
    of ``data.train``) for ``split=val``, sized as that config says.
    """
    from pydantic import ValidationError

    from training.data import DataConfig
    from training.engine.config import format_validation_error, read_yaml_with_base

    path = Path(data)
    if path.is_dir():
        fields: dict[str, Any] = {"format": "deeppcb", "root": path, "split": "val" if val_groups else "all",
                                  **(sizes or {})}
        if list_file:
            fields["list_file"] = list_file
        if val_groups:
            fields["val_groups"] = tuple(val_groups)
        return DataConfig(**fields)
    if not path.is_file():
        raise FileNotFoundError(f"--data {data}: neither a dataset directory nor a YAML file")
    raw = read_yaml_with_base(path, "--data YAML (a data config or a training config)")
    if "data" in raw and isinstance(raw["data"], dict) and "train" in raw["data"]:
        section = raw["data"].get(split) if split == "val" else raw["data"]["train"]
        if section is None:
            section = raw["data"]["train"]  # its held-out side
        source = f"{path} data.{split}"
    else:
        section, source = raw, str(path)
    section = dict(section)
    if list_file:
        section["list_file"] = list_file
    if val_groups:
        section["val_groups"] = tuple(val_groups)
    try:
        cfg = DataConfig.model_validate(section)
    except ValidationError as exc:
        raise ValueError(format_validation_error(exc, source)) from exc
    return cfg if split == "val" else cfg.model_copy(update={"split": "train"})


def ground_truth(sample) -> dict[str, np.ndarray]:
    """A sample's boxes (its own pixels) and labels in the metric code's format."""
    return {"boxes": np.asarray(sample.boxes, np.float32).reshape(-1, 4),
            "labels": np.asarray(sample.labels, np.int64).reshape(-1)}


class UntransformedSamples(Dataset):
    """The dataset's samples as read, at their original size (a predictor brings them to its input size)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset.load_sample(index)


def collect_predictions(
    predictor: Predictor,
    dataset,
    *,
    batch_size: int = 1,
    workers: int = 0,
    num_examples: int = 0,
) -> tuple[list[dict], list[dict], list[dict[str, Any]]]:
    """Run ``predictor`` over ``dataset``; returns (preds, gts, examples) in contract-4 format, boxes in the
    original image's pixels.

    ``examples`` holds the first ``num_examples`` defective images (uint8 HWC) with their preds and gts.
    """
    if getattr(predictor, "needs_templates", False) and not getattr(dataset, "has_templates", True):
        raise ValueError("the model needs templates (reference input, TR-Post or a template graph input), "
                         "but the evaluation dataset has none")
    loader = DataLoader(UntransformedSamples(dataset), batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=list)
    preds: list[dict] = []
    gts: list[dict] = []
    examples: list[dict[str, Any]] = []
    for samples in loader:
        for sample, pred in zip(samples, predictor.predict(samples)):
            preds.append(pred)
            gts.append(ground_truth(sample))
            if len(examples) < num_examples and len(gts[-1]["labels"]):  # defective images make examples
                examples.append({"image": sample.image, "pred": pred, "gt": gts[-1], "index": len(preds) - 1,
                                 "image_id": str(sample.image_id or len(preds) - 1)})
    return preds, gts, examples


def write_examples(examples: Sequence[dict[str, Any]], class_names: Sequence[str], out_dir: Path,
                   score_thresh: float = EXAMPLE_SCORE_THRESH) -> list[Path]:
    """PNG per example (network-input frame): ground truth green, detections >= ``score_thresh`` red."""
    import cv2

    from training.data.sample import Sample
    from training.evaluation.report import draw_example

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for ex in examples:
        sample = Sample(image=ex["image"], template=None, image_id=ex["image_id"])
        canvas = draw_example(sample, ex["pred"], ex["gt"], class_names, score_thresh)
        stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in ex["image_id"])
        path = out_dir / f"{ex['index']:04d}_{stem}.png"
        cv2.imwrite(str(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
        written.append(path)
    return written


def evaluate_predictor(
    predictor: Predictor,
    dataset,
    out_dir: Path | None = None,
    *,
    batch_size: int = 1,
    workers: int = 0,
    num_examples: int = 4,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate ``predictor`` on ``dataset`` (``build_dataset(cfg, train=False)``); with ``out_dir``, write the
    full report."""
    from training.evaluation import evaluate

    class_names = tuple(predictor.class_names)
    data_names = tuple(getattr(dataset, "class_names", class_names))
    if data_names != class_names:
        raise ValueError(f"the model's classes {list(class_names)} differ from the dataset's {list(data_names)}")
    start = time.perf_counter()
    preds, gts, examples = collect_predictions(
        predictor, dataset, batch_size=batch_size, workers=workers,
        num_examples=num_examples if out_dir is not None else 0,
    )
    seconds = time.perf_counter() - start
    result = evaluate(preds, gts, class_names)
    result["seconds"] = seconds
    result["images_per_second"] = len(gts) / seconds if seconds > 0 else math.nan
    result.update(predictor.describe())
    result.update(extra or {})
    if out_dir is not None:
        from training.evaluation import write_report

        out_dir = Path(out_dir)
        write_report(out_dir, result, preds, gts, class_names=class_names, seconds=seconds)
        write_examples(examples, class_names, out_dir / "examples")
    return result


def evaluate_model(
    model: nn.Module,
    data_cfg,
    out_dir: Path | None = None,
    *,
    tr_post: bool | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 1,
    workers: int = 0,
    num_examples: int = 4,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate an RDDN ``model`` (the trainer's validation and ``rddn eval --checkpoint``) on the evaluation side
    of ``data_cfg`` through the dataset's test transform; the model's train/eval mode is restored afterwards."""
    from training.data import build_dataset

    dataset = build_dataset(data_cfg, train=False)
    was_training = model.training
    try:
        predictor = ModelPredictor(model, dataset.transform, device=device, tr_post=tr_post)
        return evaluate_predictor(predictor, dataset, out_dir, batch_size=batch_size, workers=workers,
                                  num_examples=num_examples, extra=extra)
    finally:
        model.train(was_training)


def evaluate_checkpoint(
    checkpoint: str | Path,
    data_cfg,
    out_dir: str | Path,
    *,
    tr_post: bool = False,
    device: str = "cpu",
    batch_size: int = 1,
    workers: int = 0,
    num_examples: int = 4,
    threads: int | None = None,
) -> dict[str, Any]:
    """``rddn eval --checkpoint``: load a checkpoint (eval mode), evaluate it, write the report."""
    from training.engine.checkpoint import load_checkpoint, load_model_from_checkpoint

    if threads:
        torch.set_num_threads(threads)
    model = load_model_from_checkpoint(checkpoint, map_location=device)
    if tr_post:
        from training.model.config import check_tr_post_supported

        check_tr_post_supported(model.config.reference)
    payload = load_checkpoint(checkpoint)
    extra = {
        "checkpoint": str(checkpoint),
        "epoch": payload["epoch"],
        "iteration": payload["iteration"],
        "data": data_cfg.model_dump(mode="json"),
    }
    return evaluate_model(
        model, data_cfg, Path(out_dir), tr_post=tr_post or None, device=device, batch_size=batch_size,
        workers=workers, num_examples=num_examples, extra=extra,
    )


def evaluate_artifact(
    artifact_dir: str | Path,
    data_cfg,
    out_dir: str | Path | None = None,
    *,
    backend: str | None = None,
    workers: int = 0,
    num_examples: int = 4,
    threads: int | None = None,
) -> dict[str, Any]:
    """``rddn eval --artifact`` (and the INT8 accuracy ``rddn compile`` records): run a compiled artifact with the
    daemon's ``backend`` (default: the one its target names) over the original-size frames, one at a time as the
    pipeline calls it; with ``out_dir``, write the report."""
    from training.data import build_dataset
    from training.engine.predictors import artifact_predictor

    dataset = build_dataset(data_cfg, train=False)
    predictor = artifact_predictor(artifact_dir, backend, threads)
    try:
        return evaluate_predictor(predictor, dataset, Path(out_dir) if out_dir is not None else None, batch_size=1,
                                  workers=workers,
                                  num_examples=num_examples, extra={"data": data_cfg.model_dump(mode="json")})
    finally:
        predictor.close()
