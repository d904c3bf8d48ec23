"""Data-side throughput: synthetic generation, DeepPCB read + transform + collate, and metric computation.

Prints figures (no pass/fail): is the input pipeline or the evaluation ever the bottleneck?

    .venv/bin/python benchmarks/data_throughput.py [--deeppcb ../shared/datasets/deeppcb] [--n 50]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:8.1f} /s  ({1000 * seconds / n:6.1f} ms each)"


def bench_synthetic(n: int) -> None:
    from training.data.synthetic import SURFACES, SyntheticSpec, generate_sample

    for surface in SURFACES:
        for size in (256, 640):
            spec = SyntheticSpec(surface=surface, height=size, width=size, max_shift=3, positions=4)
            generate_sample(spec, 0)  # warm the position cache as a running line would
            start = time.perf_counter()
            for i in range(n):
                generate_sample(spec, i)
            print(f"synthetic {surface:6s} {size}x{size}: {_rate(n, time.perf_counter() - start)}")


def bench_deeppcb(root: Path, n: int) -> None:
    from training.data import DataConfig, build_dataset, collate_batch

    t0 = time.perf_counter()
    cfg = DataConfig(format="deeppcb", root=root, train_short_size=(640, 640), train_max_size=640, test_short_size=640)
    ds = build_dataset(cfg, train=True)
    print(f"deeppcb index {len(ds)} pairs (annotations validated): {time.perf_counter() - t0:.2f} s")
    start = time.perf_counter()
    items = [ds[i] for i in range(n)]
    print(f"deeppcb read+transform 640x640 pair: {_rate(n, time.perf_counter() - start)}")
    start = time.perf_counter()
    for i in range(0, n - 1, 2):
        collate_batch(items[i : i + 2])
    print(f"collate batch of 2: {_rate(n // 2, time.perf_counter() - start)}")
    cfg_ms = cfg.model_copy(update={"train_short_size": (600, 1000), "train_max_size": 1600})
    ds_ms = build_dataset(cfg_ms, train=True)
    start = time.perf_counter()
    for i in range(n):
        ds_ms[i]
    print(f"deeppcb read+multi-scale(600..1000)+flip: {_rate(n, time.perf_counter() - start)}")


def bench_metrics(images: int) -> None:
    from training.evaluation import evaluate

    rng = np.random.default_rng(0)
    preds, gts = [], []
    for _ in range(images):
        k = int(rng.integers(1, 10))
        xy = rng.uniform(0, 600, (k, 2))
        gb = np.c_[xy, xy + rng.uniform(10, 60, (k, 2))]
        gl = rng.integers(1, 7, k)
        d = 100
        pxy = rng.uniform(0, 600, (d, 2))
        pb = np.c_[pxy, pxy + rng.uniform(10, 60, (d, 2))]
        pb[:k] = gb + rng.normal(0, 3, gb.shape)
        pl = rng.integers(1, 7, d)
        pl[:k] = gl
        preds.append({"boxes": pb, "scores": rng.random(d), "labels": pl})
        gts.append({"boxes": gb, "labels": gl})
    start = time.perf_counter()
    r = evaluate(preds, gts, [f"c{i}" for i in range(1, 7)])
    print(f"evaluate {images} images x 100 detections, 6 classes: {time.perf_counter() - start:.2f} s "
          f"(map50 {r['map50']:.3f}, coco_map {r['coco_map']:.3f})")


def main() -> None:
    import torch

    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deeppcb", type=Path, default=Path("../shared/datasets/deeppcb"))
    parser.add_argument("--n", type=int, default=50, help="samples per measurement")
    parser.add_argument("--eval-images", type=int, default=500)
    args = parser.parse_args()
    bench_synthetic(args.n)
    if args.deeppcb.is_dir():
        bench_deeppcb(args.deeppcb, args.n)
    else:
        print(f"deeppcb: {args.deeppcb} not found, skipped")
    bench_metrics(args.eval_images)


if __name__ == "__main__":
    main()
