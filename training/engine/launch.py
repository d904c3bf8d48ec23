"""Wire a :class:`TrainConfig` into a running :class:`Trainer`: process group, seeds, model, data, evaluator.

Kept apart from the loop so the loop can be driven by tests with any small module and dataset, and so this is
the one place that knows which package builds what (``training.model`` / ``training.data``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from training.engine import distributed as ddp
from training.engine.config import TrainConfig, dump_train_config
from training.engine.rng import seed_everything
from training.engine.trainer import Trainer, TrainState

logger = logging.getLogger("training.engine")


def check_class_names(cfg: TrainConfig, dataset: Any, split: str) -> None:
    """The model's classes must be the dataset's, in order (label i+1 = class_names[i])."""
    names = tuple(getattr(dataset, "class_names", ()) or ())
    if names and names != tuple(cfg.model.class_names):
        raise ValueError(
            f"model.class_names {list(cfg.model.class_names)} differ from data.{split}'s classes {list(names)}; "
            "they must match in order (label i is class i)"
        )


def normal_flags_of(dataset: Any) -> list[bool] | None:
    """Per-sample "defect-free" flags without loading pixels, when the dataset can tell (PTG batching)."""
    flags = getattr(dataset, "normal_flags", None)
    if callable(flags):
        flags = flags()
    return list(flags) if flags is not None else None


def validation_data(cfg: TrainConfig):
    """``data.val``, else ``data.train``'s held-out side (val_groups / val_fraction / synthetic), else None."""
    if cfg.data.val is not None:
        return cfg.data.val
    return cfg.data.train if cfg.data.train.side(train=False) == "val" else None


def make_evaluator(cfg: TrainConfig, info: ddp.DistInfo):
    """Periodic validation on rank 0 (same code path as ``rddn eval``), or None without a val set."""
    val = validation_data(cfg)
    if val is None or not cfg.eval_every_epochs:
        return None
    from training.engine.evaluate import evaluate_model

    def run(model: torch.nn.Module) -> dict[str, Any]:
        return evaluate_model(model, val, device=info.device, batch_size=1, workers=0)

    return run


def build_trainer(cfg: TrainConfig, info: ddp.DistInfo) -> Trainer:
    """Model, data and evaluator for one process of the run (the process group is already joined)."""
    from training.data import build_dataset, collate_batch
    from training.model import build_model

    seed_everything(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    model = build_model(cfg.model)
    train_set = build_dataset(cfg.data.train, train=True, extra=cfg.data.extra)
    check_class_names(cfg, train_set, "train")
    if info.is_main:
        dump_train_config(cfg, Path(cfg.output_dir) / "config.yaml")
        logger.info("training %s: %d samples, %d process(es), device %s", cfg.name, len(train_set),
                    info.world_size, info.device)
    seed_everything(cfg.seed + 1000 + info.rank)  # per-rank sampling randomness from here on
    return Trainer(
        cfg, model, train_set, collate_batch, info,
        normal_flags=normal_flags_of(train_set), evaluator=make_evaluator(cfg, info),
    )


def run_training(cfg: TrainConfig, resume: bool = False, stop_at: int | None = None) -> TrainState:
    """Train as ``cfg`` says (single process, or one rank of a torchrun group); returns the final counters."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    info = ddp.init_distributed(cfg.device)
    try:
        return build_trainer(cfg, info).fit(resume=resume, stop_at=stop_at)
    finally:
        ddp.cleanup(info)
