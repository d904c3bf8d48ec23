"""Learning-rate schedule of the paper: linear warm-up, then step decay (x0.1 at epochs 16 and 22 of 24).

Written as one explicit, stateless function of the iteration (and, optionally, of the elapsed share of a time
budget) instead of chaining torch schedulers, because:
- resume must restore it exactly: the whole state is the iteration counter and the elapsed time, both already
  in the checkpoint, so nothing can drift;
- equal-time-budget comparisons (TR-Pre vs TR-Inter ... on one CPU) need the decay points to be reached even
  when a slower variant gets through fewer iterations: the decay then follows whichever of "iterations done"
  and "budget used" is further along.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WarmupMultiStep:
    """lr(it) = base_lr * warmup(it) * gamma ** (number of milestones passed).

    ``milestones`` are fractions of training in (0, 1] (epoch 16 of 24 -> 0.667), so the same schedule works
    for a full 24-epoch run, a ``max_iters`` override and a time budget.
    """

    base_lr: float
    total_iters: int
    milestones: tuple[float, ...] = (16 / 24, 22 / 24)
    gamma: float = 0.1
    warmup_iters: int = 500
    warmup_factor: float = 0.001

    def __post_init__(self) -> None:
        if self.total_iters <= 0:
            raise ValueError(f"total_iters must be positive, got {self.total_iters}")
        if list(self.milestones) != sorted(self.milestones) or any(not 0 < m <= 1 for m in self.milestones):
            raise ValueError(f"milestones must be increasing fractions in (0, 1], got {self.milestones}")

    def milestone_iters(self) -> tuple[int, ...]:
        """The iterations at which the decay happens when no time budget interferes."""
        return tuple(round(m * self.total_iters) for m in self.milestones)

    def factor(self, iteration: int, budget_fraction: float = 0.0) -> float:
        """Multiplier of ``base_lr`` for the step that follows ``iteration`` completed steps.

        ``budget_fraction`` is the share of the time budget already used (0 without a budget).
        """
        warm = 1.0
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            warm = self.warmup_factor * (1.0 - alpha) + alpha
        iters_passed = bisect.bisect_right(self.milestone_iters(), iteration)
        budget_passed = bisect.bisect_right(list(self.milestones), budget_fraction) if budget_fraction > 0 else 0
        return warm * self.gamma ** max(iters_passed, budget_passed)

    def lr(self, iteration: int, budget_fraction: float = 0.0) -> float:
        return self.base_lr * self.factor(iteration, budget_fraction)

    def apply(self, optimizer: torch.optim.Optimizer, iteration: int, budget_fraction: float = 0.0) -> float:
        """Set every param group's lr for the next step; returns the lr (for the log)."""
        lr = self.lr(iteration, budget_fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict[str, object]:
        """What the checkpoint records (for humans and for checking a resume uses the same schedule)."""
        return {
            "base_lr": self.base_lr,
            "total_iters": self.total_iters,
            "milestones": list(self.milestones),
            "gamma": self.gamma,
            "warmup_iters": self.warmup_iters,
            "warmup_factor": self.warmup_factor,
        }
