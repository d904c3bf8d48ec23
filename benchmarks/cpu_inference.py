"""CPU inference benchmark: RDDN eager vs the same model in ONNX Runtime vs torchvision's eager Faster R-CNN.

Run (from the repository root, on a quiet machine: the figures mean nothing under load):

    .venv/bin/python benchmarks/cpu_inference.py                 # 640x640, ResNet-50 FPN, TR-Pre + CR, 300 props
    .venv/bin/python benchmarks/cpu_inference.py --iters 3 --size 320 --depth 18   # quick smoke run

All three run side by side in this one process with the same thread count, on the same random frames, and the
script prints per-frame latency, frames/s and the ratios the deployment targets are stated in:
ONNX Runtime >= 1.5x RDDN eager, >= 2x torchvision eager Faster R-CNN (1000 proposals), peak RSS of the ONNX
Runtime runtime <= 1.5 GiB. The RSS is measured in a child process that imports onnxruntime and numpy only,
because torch's own allocations would otherwise dominate the figure. The model's FLOPs (torch's
FlopCounterMode) and the machine's measured matrix-multiply rate give the fraction of peak each runtime reaches.
Weights are random: latency does not depend on them, except through the number of detections, which the
fixed-size post-processing bounds anyway.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@dataclass
class Timing:
    name: str
    latencies: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.latencies)

    @property
    def fps(self) -> float:
        return 1.0 / self.median

    def line(self) -> str:
        return (f"{self.name:<44} {self.median * 1000:9.1f} ms/frame  {self.fps:6.2f} frames/s  "
                f"(min {min(self.latencies) * 1000:.1f}, max {max(self.latencies) * 1000:.1f}, n={len(self.latencies)})")


def time_round_robin(runners: dict[str, Callable[[int], object]], warmup: int, iters: int) -> list[Timing]:
    """Median wall time per frame of each runner, timed in turns (A B C A B C ...).

    On a shared machine the load drifts during a run; interleaving exposes every runner to the same drift, so
    the ratios stay meaningful even when the absolute figures are inflated.
    """
    for fn in runners.values():
        for i in range(warmup):
            fn(i)
    latencies: dict[str, list[float]] = {name: [] for name in runners}
    for i in range(iters):
        for name, fn in runners.items():
            start = time.perf_counter()
            fn(i)
            latencies[name].append(time.perf_counter() - start)
    return [Timing(name, values) for name, values in latencies.items()]


def matmul_rate(threads: int, n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Sustained FP32 GFLOP/s of a large square matmul in torch and numpy: the machine's practical peak."""
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    torch.matmul(a, b)
    best_torch = min(_timed(lambda: torch.matmul(a, b)) for _ in range(repeats))
    an, bn = a.numpy(), b.numpy()
    an @ bn
    best_numpy = min(_timed(lambda: an @ bn) for _ in range(repeats))
    flops = 2.0 * n**3
    return {"torch_gflops": flops / best_torch / 1e9, "numpy_gflops": flops / best_numpy / 1e9}


def _ort_runner(session, feeds: list[dict[str, np.ndarray]]) -> Callable[[int], object]:
    return lambda i: session.run(None, feeds[i % 2])


def _no_grad(model: Callable[..., object], *args: object, **kwargs: object) -> object:
    import torch

    with torch.inference_mode():
        return model(*args, **kwargs)


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs (2 x multiply-adds of convolutions and matmuls) of one call, via torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def rddn_config(depth: int, proposals: int, classes: int = 10):
    """ResNet-`depth` FPN RDDN with TR-Pre and context reference (the deployment configuration)."""
    from training.model.config import ModelConfig

    return ModelConfig.model_validate({
        "architecture": "faster",
        "class_names": [f"defect_{i}" for i in range(classes)],
        "backbone": {"depth": depth},
        "rpn": {"post_nms_top_n_test": proposals},
        "reference": {"input": "tr_pre"},
        "context": {"enabled": True},
    })


def ort_session(onnx_path: Path, threads: int):
    """The tuned CPU session: all graph optimisations, ``threads`` intra-op threads, sequential execution."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])


def rss_worker(onnx_path: str, size: int, threads: int, iters: int) -> None:
    """Child process: onnxruntime + numpy only; prints latency and peak RSS as JSON."""
    session = ort_session(Path(onnx_path), threads)
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.uniform(0, 255, (1, 3, size, size)).astype(np.float32) for i in session.get_inputs()}
    session.run(None, feeds)
    latencies = []
    for _ in range(iters):
        start = time.perf_counter()
        session.run(None, feeds)
        latencies.append(time.perf_counter() - start)
    print(json.dumps({"median_s": statistics.median(latencies), "peak_rss_mib": peak_rss_mib()}))


def peak_rss_mib() -> float:
    """Peak resident set of THIS address space: /proc VmHWM. (getrusage's ru_maxrss survives exec, so a child
    spawned by the torch-laden parent would report the parent's size.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_rss(onnx_path: Path, size: int, threads: int, iters: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--rss-worker", str(onnx_path), "--size", str(size),
           "--threads", str(threads), "--iters", str(iters)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=640, help="square input size (multiple of 32)")
    parser.add_argument("--depth", type=int, default=50, choices=(18, 34, 50, 101))
    parser.add_argument("--proposals", type=int, default=300, help="RDDN test proposals")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--skip-torchvision", action="store_true")
    parser.add_argument("--ort-proposals", type=int, nargs="*", default=[],
                        help="also time ONNX Runtime graphs of the same weights with these test-proposal counts")
    parser.add_argument("--rss-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_worker:
        rss_worker(args.rss_worker, args.size, args.threads, args.iters)
        return 0

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"# CPU inference benchmark  ({time.strftime('%Y-%m-%d %H:%M:%S %Z')})")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}; "
          f"threads={args.threads}; torch {torch.__version__}")
    rate = matmul_rate(args.threads)
    print(f"matmul rate (2048^3 FP32): torch {rate['torch_gflops']:.1f} GFLOP/s, numpy {rate['numpy_gflops']:.1f} GFLOP/s")
    peak = max(rate.values()) * 1e9

    rng = np.random.default_rng(0)
    frames = [torch.from_numpy(rng.uniform(0, 255, (1, 3, args.size, args.size)).astype(np.float32)) for _ in range(2)]
    templates = [f + torch.from_numpy(rng.normal(0, 4, f.shape).astype(np.float32)) for f in frames]

    from engines import export_onnx
    from training.model import build_model

    cfg = rddn_config(args.depth, args.proposals)
    model = build_model(cfg).eval()
    label = f"RDDN R{args.depth}-FPN TR-Pre+CR {args.proposals}p"
    runners: dict[str, Callable[[int], object]] = {}
    with torch.inference_mode():
        flops = count_flops(lambda: model(frames[0], templates=templates[0]))
    runners[f"{label} PyTorch eager"] = lambda i: _no_grad(model, frames[i % 2], templates=templates[i % 2])
    tmp = tempfile.TemporaryDirectory()
    onnx_path = Path(tmp.name) / "model.onnx"
    spec = export_onnx.ExportSpec(input_size=(args.size, args.size))
    start = time.perf_counter()
    export_onnx.export_onnx(export_onnx.build_export_module(model, spec), onnx_path, spec)
    print(f"ONNX export: {time.perf_counter() - start:.1f} s, {onnx_path.stat().st_size / 2**20:.1f} MiB")
    session = ort_session(onnx_path, args.threads)
    names = {i.name for i in session.get_inputs()}
    feeds = [{k: v for k, v in (("image", frames[j].numpy()), ("template", templates[j].numpy())) if k in names}
             for j in range(2)]
    runners[f"{label} ONNX Runtime"] = lambda i: session.run(None, feeds[i % 2])
    tv_flops = float("nan")
    if not args.skip_torchvision:
        from torchvision.models.detection import fasterrcnn_resnet50_fpn

        tv = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=args.size, max_size=args.size).eval()
        tv_frames = [f[0] / 255.0 for f in frames]
        with torch.inference_mode():
            tv_flops = count_flops(lambda: tv([tv_frames[0]]))
        runners["torchvision fasterrcnn_resnet50_fpn eager 1000p"] = lambda i: _no_grad(tv, [tv_frames[i % 2]])
    for count in args.ort_proposals:  # same weights, fewer RoIs: the proposal-count knob of the deployment
        fewer = build_model(export_onnx.config_for_export(cfg, count)).eval()
        fewer.load_state_dict(model.state_dict())
        path = Path(tmp.name) / f"model_{count}p.onnx"
        export_onnx.export_onnx(export_onnx.build_export_module(fewer, spec), path, spec)
        runners[f"RDDN R{args.depth}-FPN TR-Pre+CR {count}p ONNX Runtime"] = _ort_runner(
            ort_session(path, args.threads), feeds)
    results = time_round_robin(runners, args.warmup, args.iters)
    rate_after = matmul_rate(args.threads)  # the load drifts: take the better of the two measurements
    print(f"matmul rate after the timings: torch {rate_after['torch_gflops']:.1f} GFLOP/s, "
          f"numpy {rate_after['numpy_gflops']:.1f} GFLOP/s")
    peak = max(peak, *(v * 1e9 for v in rate_after.values()))
    del session
    rss = measure_rss(onnx_path, args.size, args.threads, max(2, args.iters // 2))
    tmp.cleanup()

    print()
    for timing in results:
        print(timing.line())
    eager, ort_t = results[0], results[1]
    tv_t = next((t for t in results if t.name.startswith("torchvision")), None)
    extra = [t for t in results[2:] if t is not tv_t]
    print()
    print(f"RDDN FLOPs per frame: {flops / 1e9:.1f} GFLOP; torchvision Faster R-CNN: {tv_flops / 1e9:.1f} GFLOP")
    for timing, f in ((eager, flops), (ort_t, flops)) + (((tv_t, tv_flops),) if tv_t else ()):
        print(f"  {timing.name:<44} {f / timing.median / 1e9:6.1f} GFLOP/s = {100 * f / timing.median / peak:5.1f}% "
              "of measured matmul rate")
    print()
    print(f"ONNX Runtime / RDDN eager frames/s:            {ort_t.fps / eager.fps:5.2f}x   (target >= 1.5x)")
    if tv_t:
        print(f"ONNX Runtime / torchvision eager frames/s:     {ort_t.fps / tv_t.fps:5.2f}x   (target >= 2x)")
    for timing in extra:
        print(f"{timing.name}: {timing.fps / eager.fps:5.2f}x RDDN eager"
              + (f", {timing.fps / tv_t.fps:5.2f}x torchvision eager" if tv_t else ""))
    print(f"ONNX Runtime peak RSS (child process, ORT only): {rss['peak_rss_mib']:.0f} MiB   (target <= 1536 MiB); "
          f"its latency {rss['median_s'] * 1000:.1f} ms/frame")
    print(f"load average after the run: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
