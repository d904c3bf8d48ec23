"""``--resume`` continues exactly: the next losses equal those of an uninterrupted run."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.engine.checkpoint import load_checkpoint
from training.engine.config import train_config_from_dict
from training.engine.launch import run_training
from training.engine.metrics_log import read_metrics


def iteration_losses(run_dir: Path) -> dict[int, float]:
    return {r["iteration"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == "iter"}


def test_resume_gives_the_same_next_losses(tiny_config) -> None:
    # 8 samples / batch 2 = 4 iterations per epoch; 6 iterations cross an epoch end and the lr decay (at 4).
    full_cfg = train_config_from_dict(tiny_config("full", max_iters=6))
    part_raw = tiny_config("part", max_iters=6)
    part_cfg = train_config_from_dict(part_raw)

    full = run_training(full_cfg)
    assert (full.iteration, full.epoch, full.stop_reason) == (6, 1, "finished")

    interrupted = run_training(part_cfg, stop_at=3)  # mid-epoch interruption
    assert (interrupted.iteration, interrupted.stop_reason) == (3, "stop_at")
    ck = load_checkpoint(Path(part_raw["output_dir"]) / "last.pt")
    assert (ck["epoch"], ck["iteration"]) == (0, 3)

    resumed = run_training(part_cfg, resume=True)
    assert resumed.iteration == 6

    expected, got = iteration_losses(full_cfg.output_dir), iteration_losses(part_cfg.output_dir)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    for it in range(1, 7):
        assert got[it] == pytest.approx(expected[it], abs=1e-6, rel=1e-6), f"iteration {it}"
    full_w = load_checkpoint(full_cfg.output_dir / "last.pt")["model"]
    part_w = load_checkpoint(part_cfg.output_dir / "last.pt")["model"]
    for key, value in full_w.items():
        torch.testing.assert_close(part_w[key], value, atol=1e-6, rtol=1e-5, msg=key)


def test_a_second_run_into_the_same_directory_needs_resume(tiny_config) -> None:
    cfg = train_config_from_dict(tiny_config("again", max_iters=1))
    run_training(cfg)
    with pytest.raises(FileExistsError, match="--resume"):
        run_training(cfg)


def test_ptg_training_sees_a_normal_sample_in_every_batch(tiny_config) -> None:
    raw = tiny_config("ptg", max_iters=3)
    raw["model"]["reference"] = {"input": "mean_std", "feature": "ptg", "ptg_hidden": 8}
    raw["data"]["train"]["synthetic"]["normal_fraction"] = 0.4
    cfg = train_config_from_dict(raw)
    run_training(cfg)
    iters = [r for r in read_metrics(cfg.output_dir / "metrics.jsonl") if r["type"] == "iter"]
    assert len(iters) == 3
    assert all(r["loss_ptg"] > 0 for r in iters), "PTG's loss is only defined on normal samples"


def test_loader_workers_do_not_change_the_data(tiny_config) -> None:
    """Augmentation is seeded per (seed, epoch, sample), so 0 or 2 worker processes train identically."""
    in_process = train_config_from_dict(tiny_config("w0", max_iters=2, workers=0))
    with_workers = train_config_from_dict(tiny_config("w2", max_iters=2, workers=2))
    run_training(in_process)
    run_training(with_workers)
    assert iteration_losses(with_workers.output_dir) == pytest.approx(iteration_losses(in_process.output_dir), abs=1e-6)
