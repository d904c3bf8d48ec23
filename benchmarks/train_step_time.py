"""Training throughput of a config: seconds (wall and CPU) per optimizer step, images per second.

    .venv/bin/python benchmarks/train_step_time.py --config training/configs/deeppcb_cpu_tr_pre_cr.yaml \
        [--iters 10] [--warmup 2] [--set key=value ...]

Runs real steps (data loading, forward, backward, SGD) on the config's training data in one process and prints
one line of figures. Use it to size ``time_budget_minutes`` / ``max_iters`` before a long run.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    from training.data import build_dataset, collate_batch
    from training.engine.config import load_train_config
    from training.engine.rng import seed_everything
    from training.engine.trainer import build_optimizer, move_targets
    from training.model import build_model

    cfg = load_train_config(args.config, args.overrides)
    torch.set_num_threads(cfg.threads or 1)
    seed_everything(cfg.seed)
    device = torch.device("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    model = build_model(cfg.model).to(device).train()
    dataset = build_dataset(cfg.data.train, train=True)
    optimizer = build_optimizer(model, cfg, world_size=1)
    needs_template = cfg.model.reference.needs_template
    walls, cpus = [], []
    for step in range(args.warmup + args.iters):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        batch = collate_batch([dataset[(step * cfg.batch_size + i) % len(dataset)] for i in range(cfg.batch_size)])
        images, templates, targets, sizes = batch
        losses = model(images.to(device), templates=templates.to(device) if needs_template else None,
                       targets=move_targets(targets, device), image_sizes=sizes)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            walls.append(time.perf_counter() - wall0)
            cpus.append(time.process_time() - cpu0)
    wall = sum(walls) / len(walls)
    cpu = sum(cpus) / len(cpus)
    print(f"config={args.config} device={device} threads={torch.get_num_threads()} batch={cfg.batch_size} "
          f"input={tuple(images.shape[-2:])} reference={cfg.model.reference.input}/{cfg.model.reference.feature} "
          f"wall_s_per_iter={wall:.3f} cpu_s_per_iter={cpu:.3f} images_per_s={cfg.batch_size / wall:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
