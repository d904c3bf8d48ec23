"""Batch order: deterministic per (seed, epoch), resumable mid-epoch, rank-disjoint, PTG batches hold normals."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from training.engine.sampler import EpochBatchSampler, SeededSamples


def batches(sampler: EpochBatchSampler, epoch: int, skip: int = 0) -> list[list[int]]:
    sampler.set_epoch(epoch, skip)
    return [[i for _, i in b] for b in sampler]


def test_order_depends_on_seed_and_epoch_only() -> None:
    a = EpochBatchSampler(20, 4, seed=3)
    b = EpochBatchSampler(20, 4, seed=3)
    assert batches(a, 0) == batches(b, 0)
    assert batches(a, 0) != batches(a, 1)
    assert sorted(sum(batches(a, 1), [])) == list(range(20))


def test_skip_continues_where_an_uninterrupted_epoch_would() -> None:
    s = EpochBatchSampler(20, 4, seed=1)
    full = batches(s, 2)
    assert batches(s, 2, skip=3) == full[3:]
    assert len(s) == 2


def test_ranks_get_disjoint_equal_shares() -> None:
    r0 = batches(EpochBatchSampler(22, 2, seed=0, rank=0, world_size=2), 0)
    r1 = batches(EpochBatchSampler(22, 2, seed=0, rank=1, world_size=2), 0)
    assert len(r0) == len(r1) == 5
    assert not set(sum(r0, [])) & set(sum(r1, []))


def test_ptg_batches_each_contain_normal_samples() -> None:
    flags = [i % 5 == 0 for i in range(20)]  # 4 normals, 16 defect samples
    s = EpochBatchSampler(20, 3, seed=0, normal_flags=flags, normals_per_batch=1)
    for batch in batches(s, 0):
        assert sum(flags[i] for i in batch) == 1
    assert len(s) == 16 // 2


def test_ptg_without_normal_samples_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no normal samples"):
        EpochBatchSampler(10, 2, normal_flags=[False] * 10, normals_per_batch=1)


def test_too_small_dataset_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="too few"):
        EpochBatchSampler(3, 2, world_size=2)


class _Noisy(torch.utils.data.Dataset):
    """Each item draws from all three global generators, like an augmentation would."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[float, float, float]:
        import random

        return (random.random(), float(np.random.rand()), float(torch.rand(())))


def test_seeded_samples_are_reproducible_and_leave_global_rng_alone() -> None:
    data = SeededSamples(_Noisy(), seed=5)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = data[(1, 2)]
    assert torch.equal(torch.get_rng_state(), before)
    assert data[(1, 2)] == first
    assert data[(2, 2)] != first
