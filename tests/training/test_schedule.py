"""The learning-rate schedule at the points the paper names: warm-up ramp, the two decays, budget-driven decay."""
from __future__ import annotations

import pytest
import torch

from training.engine.schedule import WarmupMultiStep


def paper_schedule(iters_per_epoch: int = 100) -> WarmupMultiStep:
    return WarmupMultiStep(base_lr=0.01, total_iters=24 * iters_per_epoch, warmup_iters=500, warmup_factor=0.001)


def test_warmup_is_linear_from_factor_to_one() -> None:
    s = paper_schedule()
    assert s.lr(0) == pytest.approx(0.01 * 0.001)
    assert s.lr(250) == pytest.approx(0.01 * (0.001 * 0.5 + 0.5))
    assert s.lr(499) == pytest.approx(0.01 * (0.001 / 500 + 499 / 500))
    assert s.lr(500) == pytest.approx(0.01)


def test_decays_at_epochs_16_and_22_of_24() -> None:
    s = paper_schedule(iters_per_epoch=100)
    assert s.milestone_iters() == (1600, 2200)
    assert s.lr(1599) == pytest.approx(0.01)
    assert s.lr(1600) == pytest.approx(0.001)
    assert s.lr(2199) == pytest.approx(0.001)
    assert s.lr(2200) == pytest.approx(0.0001)
    assert s.lr(2399) == pytest.approx(0.0001)


def test_time_budget_share_triggers_decay_before_the_iterations_do() -> None:
    s = paper_schedule(iters_per_epoch=100)
    assert s.lr(800, budget_fraction=0.5) == pytest.approx(0.01)
    assert s.lr(800, budget_fraction=0.7) == pytest.approx(0.001)
    assert s.lr(800, budget_fraction=0.95) == pytest.approx(0.0001)
    # iterations further along than the budget still decide
    assert s.lr(2300, budget_fraction=0.1) == pytest.approx(0.0001)


def test_apply_sets_every_param_group() -> None:
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD([{"params": params[:1]}, {"params": params[1:]}], lr=1.0)
    lr = paper_schedule().apply(opt, 1700)
    assert lr == pytest.approx(0.001)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.001, 0.001])


def test_bad_milestones_are_rejected() -> None:
    with pytest.raises(ValueError, match="milestones"):
        WarmupMultiStep(base_lr=0.01, total_iters=10, milestones=(0.9, 0.5))
    with pytest.raises(ValueError, match="total_iters"):
        WarmupMultiStep(base_lr=0.01, total_iters=0)
