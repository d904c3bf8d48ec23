"""Model size and forward latency of RDDN variants (prints figures; not a test).

    .venv/bin/python benchmarks/model_speed.py --size 512 --threads 2 --repeat 3 [--device cuda]

Per variant: parameters (total / trainable), eval forward latency (median of ``--repeat`` after one warm-up),
and, with ``--train``, one training step (forward + backward) latency. Weights are random: speed only.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from training.model import ModelConfig, build_model

TINY = {
    "backbone": {"depth": 18, "width": 16, "norm": "gn", "frozen_stages": 0},
    "fpn": {"out_channels": 32},
    "roi_head": {"representation_size": 64},
    "reference": {"ptg_hidden": 16},
}
VARIANTS: dict[str, dict] = {
    "tiny-R18w16 faster": TINY,
    "tiny-R18w16 faster TR-Pre+CR": {**TINY, "reference": {"input": "tr_pre"}, "context": {"enabled": True}},
    "R50 faster": {},
    "R50 faster TR-Pre+CR": {"reference": {"input": "tr_pre"}, "context": {"enabled": True}},
    "R50 faster TR-Inter": {"reference": {"feature": "tr_inter"}},
    "R50 faster PTG+CR": {"reference": {"feature": "ptg"}, "context": {"enabled": True}},
    "R101-DCN cascade PTG+CR": {
        "architecture": "cascade", "backbone": {"depth": 101, "dcn": True},
        "reference": {"feature": "ptg"}, "context": {"enabled": True},
    },
}


def _time(fn, repeat: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="square input size (multiple of 32)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train", action="store_true", help="also time one training step")
    parser.add_argument("--only", default="", help="substring filter on variant names")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    images = torch.rand(1, 3, args.size, args.size, device=device) * 255
    templates = torch.rand(1, 3, args.size, args.size, device=device) * 255
    target = [{"boxes": torch.tensor([[40.0, 40.0, 90.0, 80.0]], device=device),
               "labels": torch.tensor([1], device=device), "is_normal": torch.tensor(False)}]
    print(f"input 1x3x{args.size}x{args.size}, device {device}, threads {args.threads}, torch {torch.__version__}")
    for name, overrides in VARIANTS.items():
        if args.only and args.only not in name:
            continue
        model = build_model(ModelConfig.model_validate({"class_names": ("a", "b"), **overrides})).to(device)
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        model.eval()
        with torch.no_grad():
            latency = _time(lambda: model(images, templates), args.repeat, device)
        line = f"{name:32s} params {total / 1e6:7.2f}M (trainable {trainable / 1e6:6.2f}M)  eval {latency * 1e3:8.1f} ms"
        if args.train:
            model.train()

            def step() -> None:
                model.zero_grad(set_to_none=True)
                sum(model(images, templates, target).values()).backward()

            line += f"  train step {_time(step, args.repeat, device) * 1e3:8.1f} ms"
        print(line, flush=True)


if __name__ == "__main__":
    main()
