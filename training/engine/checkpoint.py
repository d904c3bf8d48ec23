"""The checkpoint file (contract 2): one ``torch.save`` dict, loadable with ``torch.load(weights_only=True)``.

Keys: format, version, model_config, model, class_names, epoch, iteration, optimizer, scheduler, train_config,
metrics; plus ``rng_state`` and ``trainer_state`` that ``--resume`` needs to continue bit-exactly.
``epoch`` is the epoch in progress (0-based) and ``iteration`` the number of optimizer steps done, so a
checkpoint written at an epoch end has ``epoch`` = epochs completed and the resumed run starts a fresh epoch.

Writes are atomic (temp file in the same directory, then ``os.replace``): an interrupted save never leaves a
truncated ``last.pt`` behind, which is exactly the file ``--resume`` would read.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

CHECKPOINT_FORMAT = "rddn-checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("format", "version", "model_config", "model", "class_names", "epoch", "iteration")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DistributedDataParallel, so saved keys never carry a ``module.`` prefix."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    class_names: list[str] | tuple[str, ...] | None = None,
    epoch: int = 0,
    iteration: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Mapping[str, Any] | None = None,
    train_config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    rng_state: Mapping[str, Any] | None = None,
    trainer_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically. ``model`` must carry ``.config`` (a ModelConfig), as RDDN does."""
    bare = unwrap_model(model)
    config = getattr(bare, "config", None)
    if config is None:
        raise TypeError(f"save_checkpoint: {type(bare).__name__} has no .config (ModelConfig); cannot save {path}")
    names = list(class_names if class_names is not None else config.class_names)
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_config": config.model_dump(mode="json"),
        "model": {k: v.detach().cpu() for k, v in bare.state_dict().items()},
        "class_names": names,
        "epoch": int(epoch),
        "iteration": int(iteration),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": dict(scheduler) if scheduler is not None else None,
        "train_config": dict(train_config) if train_config is not None else {},
        "metrics": dict(metrics) if metrics is not None else {},
    }
    if rng_state is not None:
        payload["rng_state"] = dict(rng_state)
    if trainer_state is not None:
        payload["trainer_state"] = dict(trainer_state)
    return atomic_save(payload, Path(path))


def atomic_save(payload: Mapping[str, Any], path: Path) -> Path:
    """``torch.save`` to a temp file in the same directory, then rename: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(dict(payload), handle)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a daemon under another user must read it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint; errors name the file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt file, foreign pickle, ...
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an rddn checkpoint (missing format={CHECKPOINT_FORMAT!r})")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {payload.get('version')} unsupported (need {CHECKPOINT_VERSION})")
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks keys {missing}")
    return payload


def model_config_from_checkpoint(payload: Mapping[str, Any]):
    """The ModelConfig a checkpoint was trained with."""
    from training.model.config import ModelConfig

    return ModelConfig.model_validate(payload["model_config"])


def load_model_from_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the RDDN model a checkpoint describes, load its weights, return it in eval mode."""
    from training.model import build_model

    payload = load_checkpoint(path, map_location=map_location)
    # the checkpoint holds every weight: pretrained files named in its config need not exist here
    model = build_model(model_config_from_checkpoint(payload), load_pretrained=False)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not match the model its config builds: {exc}") from exc
    return model.to(map_location).eval()


def strip_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """A deployable copy of ``src`` without optimizer momentum, RNG and resume state (about half the size).

    Still a valid checkpoint (contract 2, ``optimizer=None``) for ``rddn eval``/``rddn compile``; it cannot be
    resumed. Used for the demo model the daemon ships.
    """
    payload = load_checkpoint(src)
    payload["optimizer"] = None
    payload.pop("rng_state", None)
    payload.pop("trainer_state", None)
    return atomic_save(payload, Path(dst))
