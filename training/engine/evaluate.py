"""The evaluation runner behind ``rddn eval`` and the trainer's periodic validation.

Runs a model over one side of a dataset (CPU by default, batch 1: deployment-like), collects predictions and
ground truths in the metric code's format (contract 4), calls ``training.evaluation.evaluate`` and, with an
output directory, ``write_report`` plus a few annotated example images (ground truth green, detections red).

Boxes are compared in the network's input frame (after the test resize): predictions and ground truth went
through the same per-axis scaling, which leaves IoU unchanged, so every metric is the same as in original pixels.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

logger = logging.getLogger("training.engine")

#: Detections drawn on the example images (the report's metrics use every score).
EXAMPLE_SCORE_THRESH = 0.3
REQUIRED_REPORT_KEYS = ("map50", "coco_map", "deeppcb_map", "deeppcb_fscore", "per_class", "images", "seconds")


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
    """``--data`` -> DataConfig: a DeepPCB-format root, a data-config YAML, or a training config YAML.

    A DeepPCB root is evaluated as a whole list (``split=all``) unless ``val_groups`` picks board groups, at
    ``sizes`` (see :func:`trained_test_sizes`); a training config gives its ``data.val`` (or the held-out side
    of ``data.train``) for ``split=val``, sized as that config says.
    """
    import yaml
    from pydantic import ValidationError

    from training.data import DataConfig

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
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"--data {path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"--data {path}: expected a mapping (a data config or a training config)")
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
        from training.engine.config import format_validation_error

        raise ValueError(format_validation_error(exc, source)) from exc
    return cfg if split == "val" else cfg.model_copy(update={"split": "train"})


def to_numpy_detections(output: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {
        "boxes": output["boxes"].detach().cpu().float().numpy().reshape(-1, 4),
        "scores": output["scores"].detach().cpu().float().numpy().reshape(-1),
        "labels": output["labels"].detach().cpu().numpy().astype(np.int64).reshape(-1),
    }


def to_numpy_ground_truth(target: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {
        "boxes": target["boxes"].cpu().numpy().astype(np.float32).reshape(-1, 4),
        "labels": target["labels"].cpu().numpy().astype(np.int64).reshape(-1),
    }


@torch.no_grad()
def collect_predictions(
    model: nn.Module,
    dataset,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 1,
    workers: int = 0,
    tr_post: bool | None = None,
    num_examples: int = 0,
) -> tuple[list[dict], list[dict], list[dict[str, Any]]]:
    """Run ``model`` over ``dataset``; returns (preds, gts, examples) in contract-4 format.

    Templates go to the model when it needs them or TR-Post is on; TR-Post without templates is an error.
    ``examples`` holds the first ``num_examples`` images (uint8 HWC) with their preds and gts, for drawing.
    """
    from training.data import collate_batch

    device = torch.device(device)
    config = model.config
    if tr_post and not getattr(dataset, "has_templates", True):
        raise ValueError("--tr-post needs templates, but the evaluation dataset has none")
    wants_templates = config.reference.needs_template or bool(tr_post if tr_post is not None else config.reference.tr_post)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_batch)
    was_training = model.training
    model.eval().to(device)
    preds: list[dict] = []
    gts: list[dict] = []
    examples: list[dict[str, Any]] = []
    try:
        for batch in loader:
            images, templates, targets, sizes = batch
            if wants_templates and templates is None:
                raise ValueError("the model needs templates (reference.input/feature or TR-Post) but the data has none")
            outputs = model(
                images.to(device),
                templates=templates.to(device) if (templates is not None and wants_templates) else None,
                image_sizes=sizes,
                tr_post=tr_post,
            )
            for i, (out, tgt) in enumerate(zip(outputs, targets)):
                preds.append(to_numpy_detections(out))
                gts.append(to_numpy_ground_truth(tgt))
                if len(examples) < num_examples and len(gts[-1]["labels"]):  # defective images make examples
                    h, w = sizes[i]
                    image = images[i, :, :h, :w].permute(1, 2, 0).clamp(0, 255).byte().numpy()
                    image_id = str(getattr(batch, "meta", [{}] * len(outputs))[i].get("image_id", len(preds) - 1))
                    examples.append({"image": np.ascontiguousarray(image), "pred": preds[-1], "gt": gts[-1],
                                     "index": len(preds) - 1, "image_id": image_id})
    finally:
        model.train(was_training)
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
    """Evaluate ``model`` on the evaluation side of ``data_cfg``; with ``out_dir``, write the full report."""
    from training.data import build_dataset
    from training.evaluation import evaluate

    dataset = build_dataset(data_cfg, train=False)
    class_names = tuple(model.config.class_names)
    data_names = tuple(getattr(dataset, "class_names", class_names))
    if data_names != class_names:
        raise ValueError(f"the model's classes {list(class_names)} differ from the dataset's {list(data_names)}")
    start = time.perf_counter()
    preds, gts, examples = collect_predictions(
        model, dataset, device=device, batch_size=batch_size, workers=workers, tr_post=tr_post,
        num_examples=num_examples if out_dir is not None else 0,
    )
    seconds = time.perf_counter() - start
    result = evaluate(preds, gts, class_names)
    result["seconds"] = seconds
    result["images_per_second"] = len(gts) / seconds if seconds > 0 else math.nan
    result["tr_post"] = bool(tr_post if tr_post is not None else model.config.reference.tr_post)
    result.update(extra or {})
    if out_dir is not None:
        from training.evaluation import write_report

        out_dir = Path(out_dir)
        write_report(out_dir, result, preds, gts, class_names=class_names, seconds=seconds)
        write_examples(examples, class_names, out_dir / "examples")
    return result


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
    """``rddn eval``: load a checkpoint (eval mode), evaluate it, write the report; returns the result dict."""
    from training.engine.checkpoint import load_checkpoint, load_model_from_checkpoint

    if threads:
        torch.set_num_threads(threads)
    model = load_model_from_checkpoint(checkpoint, map_location=device)
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
