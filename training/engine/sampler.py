"""Deterministic, resumable, rank-aware batch order (the role of DistributedSampler, plus two things it lacks).

- Resume mid-epoch: the order of epoch ``e`` depends only on (seed, e), so a resumed run rebuilds it and skips
  the batches already done: the next batch is the one the uninterrupted run would have seen.
- PTG: when the model learns pseudo templates, every batch must hold normal (defect-free) samples; the order is
  built batch by batch with ``normals_per_batch`` normal samples in each (recycled when normals are scarce).
- Ranks take whole batches in turn (batch ``b`` goes to rank ``b % world``), and every rank gets the same count,
  so DDP ranks never wait on each other at an epoch end.

Items are ``(epoch, index)`` pairs: :class:`SeededSamples` uses the pair to seed the sample's augmentation.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler

from training.engine.rng import isolated_seed


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """One 31-bit seed per (run seed, epoch, sample): augmentation is reproducible whatever the loader does."""
    return ((seed * 1_000_003 + epoch) * 1_000_033 + index) % (2**31 - 1)


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields lists of ``(epoch, index)``; call :meth:`set_epoch` before each epoch (as DistributedSampler)."""

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        normal_flags: Sequence[bool] | None = None,
        normals_per_batch: int = 0,
    ) -> None:
        if num_samples <= 0:
            raise ValueError("the training dataset is empty")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if normals_per_batch >= batch_size:
            raise ValueError(f"normals_per_batch ({normals_per_batch}) must be below batch_size ({batch_size})")
        if normal_flags is not None and len(normal_flags) != num_samples:
            raise ValueError("normal_flags must have one flag per sample")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.normals_per_batch = normals_per_batch if normal_flags is not None else 0
        flags = list(normal_flags) if normal_flags is not None else [False] * num_samples
        self._normals = [i for i, f in enumerate(flags) if f]
        self._others = [i for i, f in enumerate(flags) if not f] if self.normals_per_batch else list(range(num_samples))
        if self.normals_per_batch and not self._normals:
            raise ValueError("the model uses PTG (reference.feature=ptg) but the training data has no normal samples")
        per_batch = batch_size - self.normals_per_batch
        global_batches = len(self._others) // per_batch
        self.batches_per_rank = global_batches // world_size
        if self.batches_per_rank == 0:
            raise ValueError(
                f"{num_samples} training samples are too few for batch_size={batch_size} x {world_size} process(es)"
            )
        self.epoch = 0
        self.skip_batches = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select epoch ``epoch``'s order; ``skip_batches`` drops this rank's first batches (resume)."""
        self.epoch = epoch
        self.skip_batches = skip_batches

    def _permutation(self, items: list[int], salt: int) -> list[int]:
        if not self.shuffle:
            return list(items)
        gen = torch.Generator().manual_seed(self.seed * 7919 + self.epoch * 104_729 + salt)
        return [items[i] for i in torch.randperm(len(items), generator=gen).tolist()]

    def _global_batches(self) -> list[list[int]]:
        others = self._permutation(self._others, 0)
        per_batch = self.batch_size - self.normals_per_batch
        count = self.batches_per_rank * self.world_size
        batches = [others[b * per_batch : (b + 1) * per_batch] for b in range(count)]
        if self.normals_per_batch:
            normals = self._permutation(self._normals, 1)
            needed = count * self.normals_per_batch
            normals = (normals * (needed // len(normals) + 1))[:needed]
            for b, batch in enumerate(batches):
                batch.extend(normals[b * self.normals_per_batch : (b + 1) * self.normals_per_batch])
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        mine = self._global_batches()[self.rank :: self.world_size]
        for batch in mine[self.skip_batches :]:
            yield [(self.epoch, i) for i in batch]

    def __len__(self) -> int:
        return self.batches_per_rank - self.skip_batches


class SeededSamples(Dataset):
    """Wraps a dataset so item ``(epoch, index)`` is produced under its own seed (see :func:`sample_seed`)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]):
        epoch, index = item
        with isolated_seed(sample_seed(self.seed, epoch, index)):
            return self.dataset[index]
