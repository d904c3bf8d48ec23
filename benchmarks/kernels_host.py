"""Host build of the RoI pooling kernels vs torchvision's CPU roi_align, same inputs, one process, one thread.

The host build is a correctness vehicle (the CUDA kernels' exact source in a plain loop), not a CPU fast path;
this prints how it compares so nobody mistakes it for one, and what the model's own pooling costs on CPU.

    .venv/bin/python benchmarks/kernels_host.py [--size 640] [--rois 300] [--channels 256] [--repeat 5]
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import numpy as np
import torch

from engines import custom_ops as co
from engines import host_kernels as hk
from training.model import roi_semantics as rs
from training.model.roi_pooling import RoIFeaturePooler


def _time(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up (and the host library build)
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _inputs(size: int, channels: int, rois: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    feats = [rng.standard_normal((1, channels, size // s, size // s)).astype(np.float32) for s in rs.ROI_STRIDES]
    side = np.exp(rng.uniform(np.log(8), np.log(size), size=(rois, 2)))
    centre = rng.uniform(0, size, size=(rois, 2))
    boxes = np.concatenate([centre - side / 2, centre + side / 2], axis=1).clip(0, size)
    return feats, np.concatenate([np.zeros((rois, 1)), boxes], axis=1).astype(np.float32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=640, help="square input size in pixels")
    parser.add_argument("--rois", type=int, default=300, help="RoIs per frame (test proposals)")
    parser.add_argument("--channels", type=int, default=256, help="FPN channels")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    feats, rois = _inputs(args.size, args.channels, args.rois)
    half = [f.astype(np.float16) for f in feats]
    attrs = hk.default_attributes((args.size, args.size))
    t_feats, t_rois = [torch.from_numpy(f) for f in feats], torch.from_numpy(rois)
    sizes = torch.tensor([[args.size, args.size]])
    model_pooler = RoIFeaturePooler(context="none")
    model_cr = RoIFeaturePooler(context="concat", k=rs.CONTEXT_SCALE)

    cases: dict[str, Callable[[], object]] = {
        "host kernel  multi-level fp32": lambda: hk.multilevel_roi_align(feats, rois, attrs),
        "host kernel  multi-level fp16": lambda: hk.multilevel_roi_align(half, rois, attrs),
        "host kernel  context concat fp32": lambda: hk.context_roi_align(feats, rois, attrs),
        "torchvision  routed per level (custom-op eager)": lambda: co.multilevel_roi_align(t_feats, t_rois),
        "torchvision  model pooler (4 levels + where)": lambda: model_pooler(t_feats, t_rois, sizes),
        "torchvision  model pooler CR concat": lambda: model_cr(t_feats, t_rois, sizes),
    }
    print(f"RoI pooling on CPU, 1 thread: input {args.size}x{args.size}, C={args.channels}, R={args.rois}, "
          f"output 7x7, median of {args.repeat}")
    with torch.no_grad():
        times = {name: _time(fn, args.repeat) for name, fn in cases.items()}
    base = times["torchvision  routed per level (custom-op eager)"]
    for name, seconds in times.items():
        print(f"  {name:<50s} {seconds * 1e3:9.2f} ms  {args.rois / seconds:10.0f} RoIs/s  "
              f"{base / seconds:5.2f}x vs torchvision routed")
    ref = co.multilevel_roi_align(t_feats, t_rois).numpy()
    got = hk.multilevel_roi_align(feats, rois, attrs)
    print(f"  max |host - torchvision| = {np.abs(got - ref).max():.2e} (fp32)")


if __name__ == "__main__":
    main()
