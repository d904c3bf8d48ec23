"""The training loop: SGD with warm-up + step decay, AMP on CUDA, gradient clipping, exact resume, DDP.

One :class:`Trainer` serves a single CPU process, one GPU and ``torchrun`` multi-process runs alike (see
``distributed.py``). Everything a resumed run needs to continue exactly where the interrupted one stopped is in
the checkpoint: weights, optimizer momentum, the iteration/epoch counters, the time already spent (time
budgets), and every rank's RNG states; the data order is a pure function of (seed, epoch) (``sampler.py``).

Stopping: at ``max_iters``/the last epoch, when the time budget is used up, or on SIGINT/SIGTERM; in each case
all ranks stop on the same iteration and rank 0 writes ``last.pt`` first.
"""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from training.engine import distributed as ddp
from training.engine.checkpoint import load_checkpoint, save_checkpoint, unwrap_model
from training.engine.config import TrainConfig
from training.engine.metrics_log import MetricsLog
from training.engine.rng import capture_rng_state, restore_rng_state, seed_everything
from training.engine.sampler import EpochBatchSampler, SeededSamples
from training.engine.schedule import WarmupMultiStep

logger = logging.getLogger("training.engine")

LAST_CHECKPOINT = "last.pt"
METRICS_FILE = "metrics.jsonl"

Batch = tuple[torch.Tensor, torch.Tensor | None, list[dict[str, torch.Tensor]], list[tuple[int, int]]]
Evaluator = Callable[[nn.Module], dict[str, Any]]


@dataclass
class TrainState:
    """The counters a checkpoint carries: ``epoch`` in progress (0-based), optimizer steps done, seconds spent."""

    epoch: int = 0
    iteration: int = 0
    elapsed: float = 0.0
    stop_reason: str = ""
    last_losses: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, Any] = field(default_factory=dict)


def build_optimizer(model: nn.Module, cfg: TrainConfig, world_size: int) -> torch.optim.SGD:
    """SGD over the trainable parameters; lr is set per step by the schedule."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(
        params,
        lr=cfg.optimizer.scaled_lr(cfg.batch_size * world_size),
        momentum=cfg.optimizer.momentum,
        weight_decay=cfg.optimizer.weight_decay,
    )


def move_targets(targets: Sequence[dict[str, torch.Tensor]], device: torch.device) -> list[dict[str, torch.Tensor]]:
    return [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]


class Trainer:
    """Runs ``cfg``'s schedule for ``model`` over ``train_set`` (a dataset of samples, batched by ``collate``)."""

    def __init__(
        self,
        cfg: TrainConfig,
        model: nn.Module,
        train_set: Dataset,
        collate: Callable[[list[Any]], Batch],
        info: ddp.DistInfo,
        *,
        normal_flags: Sequence[bool] | None = None,
        evaluator: Evaluator | None = None,
        use_templates: bool | None = None,
    ) -> None:
        self.cfg = cfg
        self.info = info
        self.output_dir = Path(cfg.output_dir)
        self.bare_model = model.to(info.device)
        self.model = ddp.wrap_model(self.bare_model, info)
        self.collate = collate
        self.evaluator = evaluator
        model_cfg = getattr(self.bare_model, "config", None)
        if use_templates is None:
            use_templates = bool(model_cfg is not None and model_cfg.reference.needs_template)
        self.use_templates = use_templates
        uses_ptg = model_cfg is not None and model_cfg.reference.feature == "ptg"
        self.sampler = EpochBatchSampler(
            len(train_set),  # type: ignore[arg-type]
            cfg.batch_size,
            seed=cfg.seed,
            rank=info.rank,
            world_size=info.world_size,
            normal_flags=normal_flags if uses_ptg else None,
            normals_per_batch=cfg.ptg_normals_per_batch if uses_ptg else 0,
        )
        self.samples = SeededSamples(train_set, cfg.seed)
        self.iters_per_epoch = self.sampler.batches_per_rank
        self.total_iters = cfg.max_iters or cfg.schedule.epochs * self.iters_per_epoch
        self.schedule = WarmupMultiStep(
            base_lr=cfg.optimizer.scaled_lr(cfg.batch_size * info.world_size),
            total_iters=self.total_iters,
            milestones=tuple(m / cfg.schedule.epochs for m in cfg.schedule.milestones),
            gamma=cfg.schedule.gamma,
            warmup_iters=cfg.schedule.warmup_iters,
            warmup_factor=cfg.schedule.warmup_factor,
        )
        self.optimizer = build_optimizer(self.bare_model, cfg, info.world_size)
        self.amp = bool(cfg.amp and info.device.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.log = MetricsLog(self.output_dir / METRICS_FILE, enabled=info.is_main)
        self.state = TrainState()
        self._stop_requested = False
        self._stop_at: int | None = None
        self._wall_start = time.monotonic()
        self._budget_at_start = 0.0

    # -- checkpoints ------------------------------------------------------------------------------------
    @property
    def last_checkpoint(self) -> Path:
        return self.output_dir / LAST_CHECKPOINT

    def _gather_rng(self) -> list[dict[str, Any]]:
        state = capture_rng_state()
        if not self.info.distributed:
            return [state]
        gathered: list[Any] = [None] * self.info.world_size
        dist.all_gather_object(gathered, state)
        return gathered

    def save(self) -> None:
        """Every rank calls this (RNG states are gathered); rank 0 writes."""
        rng = self._gather_rng()
        if self.info.is_main:
            save_checkpoint(
                self.last_checkpoint,
                self.bare_model,
                epoch=self.state.epoch,
                iteration=self.state.iteration,
                optimizer=self.optimizer,
                scheduler=self.schedule.state_dict(),
                train_config=self.cfg.model_dump(mode="json"),
                metrics={"losses": self.state.last_losses, "eval": self.state.eval_metrics},
                rng_state={"per_rank": rng},
                trainer_state={
                    "elapsed_seconds": self.state.elapsed,
                    "iters_per_epoch": self.iters_per_epoch,
                    "total_iters": self.total_iters,
                    "world_size": self.info.world_size,
                    "stop_reason": self.state.stop_reason,
                    "finished": self.state.iteration >= self.total_iters,
                    "scaler": self.scaler.state_dict() if self.amp else {},
                },
            )
        ddp.barrier(self.info)

    def resume(self) -> None:
        """Restore weights, optimizer, counters and RNG from ``output_dir/last.pt``."""
        payload = self._load_on_rank0_and_share()
        saved_model = payload["model_config"]
        current = self.bare_model.config.model_dump(mode="json")
        if saved_model != current:
            diff = sorted(k for k in set(saved_model) | set(current) if saved_model.get(k) != current.get(k))
            raise ValueError(f"--resume: {self.last_checkpoint} was trained with a different model config (keys {diff})")
        trainer_state = payload.get("trainer_state", {})
        if trainer_state.get("iters_per_epoch", self.iters_per_epoch) != self.iters_per_epoch:
            raise ValueError(
                f"--resume: {self.last_checkpoint} had {trainer_state['iters_per_epoch']} iterations per epoch, this "
                f"run has {self.iters_per_epoch} (dataset, batch_size or world size changed): the data order "
                "cannot be continued exactly"
            )
        self.bare_model.load_state_dict(payload["model"])
        if payload.get("optimizer"):
            self.optimizer.load_state_dict(payload["optimizer"])
        if self.amp and trainer_state.get("scaler"):
            self.scaler.load_state_dict(trainer_state["scaler"])
        per_rank = (payload.get("rng_state") or {}).get("per_rank") or []
        if self.info.rank < len(per_rank):
            restore_rng_state(per_rank[self.info.rank])
        else:
            seed_everything(self.cfg.seed + 1000 + self.info.rank)
        metrics = payload.get("metrics") or {}
        self.state = TrainState(
            epoch=int(payload["epoch"]),
            iteration=int(payload["iteration"]),
            elapsed=float(trainer_state.get("elapsed_seconds", 0.0)),
            last_losses=dict(metrics.get("losses") or {}),
            eval_metrics=dict(metrics.get("eval") or {}),
        )
        if self.info.is_main:
            logger.info("resumed from %s at epoch %d, iteration %d", self.last_checkpoint, self.state.epoch, self.state.iteration)

    def _load_on_rank0_and_share(self) -> dict[str, Any]:
        """Rank 0 reads ``last.pt`` and sends it to the others: other machines need not see rank 0's disk."""
        if not self.info.distributed:
            return load_checkpoint(self.last_checkpoint, map_location="cpu")
        box: list[Any] = [load_checkpoint(self.last_checkpoint, map_location="cpu") if self.info.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    # -- one step ---------------------------------------------------------------------------------------
    def step(self, batch: Batch) -> dict[str, float]:
        images, templates, targets, image_sizes = batch
        device = self.info.device
        images = images.to(device, non_blocking=True)
        templates = templates.to(device, non_blocking=True) if (templates is not None and self.use_templates) else None
        autocast = torch.autocast(device_type="cuda", dtype=torch.float16) if self.amp else contextlib.nullcontext()
        with autocast:
            losses = self.model(images, templates=templates, targets=move_targets(targets, device), image_sizes=image_sizes)
        loss = sum(losses.values())
        values = {k: float(v.detach()) for k, v in losses.items()}
        values["loss"] = float(loss.detach())
        if not math.isfinite(values["loss"]):
            raise FloatingPointError(
                f"non-finite loss at iteration {self.state.iteration}: {values}; last good weights: {self.last_checkpoint}"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.optimizer.grad_clip_norm:
            self.scaler.unscale_(self.optimizer)
            values["grad_norm"] = float(
                nn.utils.clip_grad_norm_(self.bare_model.parameters(), self.cfg.optimizer.grad_clip_norm)
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return values

    # -- the loop ---------------------------------------------------------------------------------------
    def _budget_fraction(self, elapsed: float) -> float:
        budget = self.cfg.time_budget_minutes
        return elapsed / (budget * 60.0) if budget else 0.0

    def _loader(self, skip_batches: int) -> DataLoader:
        self.sampler.set_epoch(self.state.epoch, skip_batches)
        workers = self.cfg.workers
        return DataLoader(
            self.samples,
            batch_sampler=self.sampler,
            collate_fn=self.collate,
            num_workers=workers,
            pin_memory=self.info.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=2 if workers > 0 else None,
            # A private generator: creating the loader's iterator must not draw from the global RNG, or a run
            # resumed mid-epoch (new iterator) would drift from the uninterrupted one (iterator made earlier).
            generator=torch.Generator().manual_seed(self.cfg.seed * 7919 + self.state.epoch),
        )

    def _should_stop(self, elapsed: float) -> bool:
        reason = ""
        if self.state.iteration >= self.total_iters:
            reason = "finished"
        elif self.cfg.time_budget_minutes and elapsed >= self.cfg.time_budget_minutes * 60.0:
            reason = "time_budget"
        elif self._stop_requested:
            reason = "signal"
        elif self._stop_at is not None and self.state.iteration >= self._stop_at:
            reason = "stop_at"
        stop = ddp.any_rank(bool(reason), self.info)
        if stop:
            self.state.stop_reason = reason or "peer_rank"
        return stop

    def _evaluate(self) -> None:
        if self.evaluator is None or not self.info.is_main:
            ddp.barrier(self.info)
            return
        self.bare_model.eval()
        try:
            result = self.evaluator(self.bare_model)
        finally:
            self.bare_model.train()
        summary = {k: v for k, v in result.items() if isinstance(v, (int, float))}
        self.state.eval_metrics = summary
        self.log.write("eval", epoch=self.state.epoch, iteration=self.state.iteration, **summary)
        logger.info("eval after epoch %d: %s", self.state.epoch, summary)
        ddp.barrier(self.info)

    def fit(self, resume: bool = False, stop_at: int | None = None) -> TrainState:
        """Train until done, out of time, or signalled; returns the final counters. ``last.pt`` is always written.

        ``stop_at`` stops after that many iterations as an interruption would (checkpoint, no schedule change):
        the resume test and ``rddn train --stop-at`` use it.
        """
        self._stop_at = stop_at
        if resume:
            self.resume()
        elif ddp.any_rank(self.info.is_main and self.last_checkpoint.exists(), self.info):  # all ranks stop
            raise FileExistsError(
                f"{self.last_checkpoint} exists: pass --resume to continue it, or set another output_dir"
            )
        self.bare_model.train()
        progress = self._progress_bar()
        previous_handlers = self._install_signal_handlers()
        clock = time.process_time if self.cfg.time_budget_clock == "process" else time.monotonic
        start = clock() - self.state.elapsed
        wall_start = self._wall_start = time.monotonic()
        self._budget_at_start = self._budget_fraction(self.state.elapsed)
        try:
            while not self._should_stop(clock() - start):
                in_epoch = self.state.iteration - self.state.epoch * self.iters_per_epoch
                epoch_start = time.monotonic()
                for batch in self._loader(in_epoch):
                    elapsed = clock() - start
                    lr = self.schedule.apply(self.optimizer, self.state.iteration, self._budget_fraction(elapsed))
                    values = ddp.reduce_mean(self.step(batch), self.info)
                    self.state.iteration += 1
                    self.state.elapsed = clock() - start
                    self.state.last_losses = values
                    self._log_iteration(progress, values, lr)
                    every = self.cfg.checkpoint_every_iters
                    if every and self.state.iteration % every == 0:
                        self.save()
                    if self._should_stop(self.state.elapsed):
                        break
                epoch_done = self.state.iteration - self.state.epoch * self.iters_per_epoch >= self.iters_per_epoch
                if epoch_done:
                    self.state.epoch += 1
                    self.log.write(
                        "epoch", epoch=self.state.epoch, iteration=self.state.iteration,
                        seconds=round(time.monotonic() - epoch_start, 3), **self.state.last_losses,
                    )
                self.state.elapsed = clock() - start
                self.save()
                every_eval = self.cfg.eval_every_epochs
                last_epoch = self.state.stop_reason in ("finished", "time_budget")
                if every_eval and (epoch_done and self.state.epoch % every_eval == 0 or last_epoch):
                    self._evaluate()
                    self.save()
        finally:
            self._restore_signal_handlers(previous_handlers)
            if progress is not None:
                progress.close()
        self.log.write("stop", reason=self.state.stop_reason, epoch=self.state.epoch, iteration=self.state.iteration,
                       seconds=round(self.state.elapsed, 3), clock=self.cfg.time_budget_clock,
                       wall_seconds_this_session=round(time.monotonic() - wall_start, 3), eval=self.state.eval_metrics)
        return self.state

    # -- reporting --------------------------------------------------------------------------------------
    def _progress_bar(self):
        if not self.info.is_main or not self.cfg.progress_bar:
            return None
        from tqdm import tqdm

        # No monitor thread: it outlives the run (one per process, sleeping on a multiprocessing lock), and a
        # trainer embedded in a longer-lived process (tests, benchmarks) has no use for its miniters tuning.
        tqdm.monitor_interval = 0
        return tqdm(total=self.total_iters, initial=self.state.iteration, desc="train", dynamic_ncols=True)

    def _log_iteration(self, progress, values: dict[str, float], lr: float) -> None:
        if not self.info.is_main:
            return
        self.log.write(
            "iter", epoch=self.state.epoch, iteration=self.state.iteration, lr=lr,
            elapsed=round(self.state.elapsed, 3), **{k: round(v, 6) for k, v in values.items()},
        )
        if progress is not None:
            progress.update(1)
            if self.state.iteration % max(1, self.cfg.log_every) == 0 or self.state.iteration == 1:
                shown = {k.removeprefix("loss_"): f"{v:.3f}" for k, v in values.items()}
                shown["lr"] = f"{lr:.2e}"
                if self.cfg.time_budget_minutes:
                    shown["budget"] = f"{self._budget_fraction(self.state.elapsed):.0%}"
                    shown["budget_eta"] = self._budget_eta()
                progress.set_postfix(shown, refresh=False)
                progress.set_description(f"epoch {self.state.epoch + 1}")

    def _budget_eta(self) -> str:
        """Wall time until the budget runs out at this session's pace (tqdm's own ETA assumes the full schedule)."""
        used = self._budget_fraction(self.state.elapsed) - self._budget_at_start
        if used <= 0:
            return "?"
        remaining = (1.0 - self._budget_fraction(self.state.elapsed)) / used * (time.monotonic() - self._wall_start)
        minutes, seconds = divmod(int(max(remaining, 0.0)), 60)
        return f"{minutes}:{seconds:02d}"

    # -- signals ----------------------------------------------------------------------------------------
    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def request_stop(signum, _frame) -> None:
            logger.warning("signal %d: stopping after this iteration and writing %s", signum, self.last_checkpoint)
            self._stop_requested = True

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, request_stop)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
