"""CPU inference side by side: torchvision eager, RDDN eager, ONNX Runtime FP32/INT8, OpenVINO FP32/INT8.

One command, one run (repository root; the final figures need a quiet machine, and the load is printed with them):

    .venv/bin/python benchmarks/cpu_inference.py --model models/deeppcb/model.pt      # definitive run
    .venv/bin/python benchmarks/cpu_inference.py --model runs/x/last.pt --quick         # < 10 min on 2 cores

Two suites at the same input size (default 640x640) and thread count (default 2):

- **DeepPCB**: the trained model given by ``--model`` (a checkpoint; the shipped one in models/deeppcb/ by
  default), all RDDN runtimes, with mAP@0.5 on the group-held-out validation split (``--val-groups``, default
  92000 44000) for every runtime and precision: the accuracy side of the INT8 decision.
- **R50-FPN**: RDDN ResNet-50-FPN TR-Pre + CR (random weights: latency does not depend on them) against
  torchvision's eager ``fasterrcnn_resnet50_fpn`` at the same backbone and size: the speed ratios the targets
  are stated in. No mAP (random weights).

INT8 artifacts are built exactly as ``rddn compile --precision int8`` builds them (ONNX Runtime static QDQ,
calibrated on ``--calibration-count`` training pairs of the same dataset, never the validation groups); the
OpenVINO rows run the same graphs converted to IR (``rddn compile --target openvino``).

Every runner lives in its own child process (only its runtime imported: its peak RSS is its own), and the
parent times them in turns (A B C A B C ...) on the same real DeepPCB frames, so load drift hits all alike.
Per runner: median wall ms/frame, median process CPU ms/frame (all of the runner's threads: on a shared machine
the CPU time is the steadier figure), frames/s, peak RSS, FLOP rate against the FP32 matmul rate measured in the
same run (INT8 rows count the same FP32-equivalent FLOPs), mAP@0.5. ``--profile`` adds the per-op profile of the
INT8 and FP32 graphs (ONNX Runtime's profiler, OpenVINO's performance counters): where the time goes.

The last line reads ``fastest: <runtime> <precision> <R>x torchvision eager, mAP@0.5 loss <D>``: R = frames/s
of the fastest R50-FPN RDDN runtime over torchvision eager's, D = mAP@0.5 points that runtime and precision lose
on the DeepPCB model against its FP32 eager model ("n/a" without ``--model``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "deeppcb"
DEFAULT_MODEL_DIR = REPO / "models" / "deeppcb"
RUNTIMES = ("onnxruntime", "openvino")


# --------------------------------------------------------------------------------------------------- worker
class Worker:
    """One runner in this (child) process: load, then answer ``run`` / ``rss`` / ``eval`` / ``profile``."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.kind = spec["kind"]
        self.threads = int(spec["threads"])
        pairs = np.load(spec["frames"])
        self.images, self.templates = pairs["images"], pairs["templates"]
        self.size = int(spec["size"])
        if self.kind in RUNTIMES:
            from inspector.backends import load_backend

            options = {"intra_op_threads": self.threads} if self.kind == "onnxruntime" else {"threads": self.threads}
            self.backend = load_backend(self.kind, spec["artifact"], **options)
            self.call = lambda i: self.backend.detect([self.images[i]], [self.templates[i]])
        else:
            import torch

            torch.set_num_threads(self.threads)
            self.torch = torch
            self.model = self._eager_model()
            self.call = self._eager_call

    def _eager_model(self) -> Any:
        torch = self.torch
        if self.kind == "torchvision":
            from torchvision.models.detection import fasterrcnn_resnet50_fpn

            torch.manual_seed(0)
            return fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=self.size,
                                           max_size=self.size).eval()
        from training.engine.checkpoint import load_model_from_checkpoint

        return load_model_from_checkpoint(Path(self.spec["checkpoint"]), map_location="cpu").eval()

    def _eager_call(self, i: int) -> Any:
        from engines.artifact import resize_batch

        torch = self.torch
        image = torch.from_numpy(resize_batch([self.images[i]], (self.size, self.size)))
        with torch.inference_mode():
            if self.kind == "torchvision":
                return self.model([image[0] / 255.0])
            template = torch.from_numpy(resize_batch([self.templates[i]], (self.size, self.size)))
            return self.model(image, templates=template if self.model.config.reference.needs_template else None)

    def run(self, index: int) -> dict[str, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        self.call(index % len(self.images))
        return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}

    def eval(self, data: dict[str, Any]) -> dict[str, float]:
        from training.data import DataConfig

        cfg = DataConfig(format="deeppcb", root=data["root"], list_file=data["list_file"],
                         val_groups=tuple(data["val_groups"]), split="val", test_short_size=self.size,
                         test_max_size=self.size)
        if self.kind in RUNTIMES:
            from training.engine.evaluate import evaluate_artifact

            result = evaluate_artifact(self.spec["artifact"], cfg, backend=self.kind, threads=self.threads,
                                       num_examples=0)
        else:
            from training.engine.evaluate import evaluate_model

            result = evaluate_model(self.model, cfg, num_examples=0)
        return {"map50": float(result["map50"]), "images": int(result["images"])}

    def profile(self, frames: int) -> list[dict[str, Any]]:
        """Per-op-type share of the graph's run time over ``frames`` frames (ONNX Runtime / OpenVINO)."""
        if self.kind == "onnxruntime":
            return _profile_onnxruntime(self.backend.model_path, self.threads, self._feeds, frames)
        if self.kind == "openvino":
            return _profile_openvino(self.backend.model_path, self.threads, self._feeds, frames)
        return []

    def _feeds(self, i: int) -> dict[str, np.ndarray]:
        from engines.artifact import resize_batch

        feeds = {"image": resize_batch([self.images[i % len(self.images)]], (self.size, self.size))}
        if self.backend.uses_template:
            feeds["template"] = resize_batch([self.templates[i % len(self.templates)]], (self.size, self.size))
        return feeds


def _profile_onnxruntime(model: Path, threads: int, feeds: Callable[[int], dict], frames: int) -> list[dict]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="rddn-ort-profile-")) / "ort")
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    session.run(None, feeds(0))  # warm-up, excluded below by the frame count
    for i in range(frames):
        session.run(None, feeds(i))
    trace = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = {}
    runs = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    for event in trace:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            totals[op] = totals.get(op, 0.0) + float(event["dur"]) / 1000.0
    scale = 1.0 / max(1, len(runs))  # per frame (the warm-up run included in both sums)
    return _top(totals, scale)


def _profile_openvino(model: Path, threads: int, feeds: Callable[[int], dict], frames: int) -> list[dict]:
    from engines.openvino_ir import core

    compiled = core().compile_model(str(model), "CPU", {"PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True,
                                                        "INFERENCE_PRECISION_HINT": "f32",
                                                        "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    request.infer(feeds(0))
    totals: dict[str, float] = {}
    for i in range(frames):
        request.infer(feeds(i))
        for info in request.profiling_info:
            key = f"{info.node_type} [{info.exec_type}]"
            totals[key] = totals.get(key, 0.0) + info.real_time.total_seconds() * 1000.0
    return _top(totals, 1.0 / max(1, frames))


def _top(totals_ms: dict[str, float], scale: float, count: int = 12) -> list[dict[str, Any]]:
    total = sum(totals_ms.values()) or 1.0
    rows = sorted(totals_ms.items(), key=lambda kv: -kv[1])
    out = [{"op": op, "ms_per_frame": ms * scale, "share": ms / total} for op, ms in rows[:count]]
    rest = sum(ms for _, ms in rows[count:])
    if rest:
        out.append({"op": "(other)", "ms_per_frame": rest * scale, "share": rest / total})
    return out


def peak_rss_mib() -> float:
    """Peak resident set of this process (VmHWM: ru_maxrss would survive exec from a torch-laden parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker_main(spec_path: str) -> int:
    """Child process loop: one JSON request per stdin line, one JSON reply per stdout line."""
    worker = Worker(json.loads(Path(spec_path).read_text()))
    out = sys.stdout
    sys.stdout = sys.stderr  # library chatter must not corrupt the reply channel
    print(json.dumps({"ready": True}), file=out, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        if op == "run":
            reply: Any = worker.run(int(request["index"]))
        elif op == "rss":
            reply = {"peak_rss_mib": peak_rss_mib()}
        elif op == "eval":
            reply = worker.eval(request["data"])
        elif op == "profile":
            reply = {"ops": worker.profile(int(request["frames"]))}
        else:
            break
        print(json.dumps(reply), file=out, flush=True)
    return 0


# --------------------------------------------------------------------------------------------------- parent
@dataclass
class Runner:
    """The parent's handle on one child process and what it measured."""

    suite: str
    name: str
    runtime: str
    precision: str
    spec: dict[str, Any]
    flops: float
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    rss_mib: float = float("nan")
    map50: float | None = None
    profile: list[dict[str, Any]] = field(default_factory=list)
    process: subprocess.Popen | None = None

    def start(self, workdir: Path) -> None:
        path = workdir / f"worker-{self.suite}-{self.name}.json".replace(" ", "_")
        path.write_text(json.dumps(self.spec))
        env = {**os.environ, "OMP_NUM_THREADS": str(self.spec["threads"]), "PYTHONPATH": str(REPO)}
        self.process = subprocess.Popen([sys.executable, __file__, "--worker", str(path)], cwd=REPO, env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self._read()

    def ask(self, **request: Any) -> Any:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._read()

    def _read(self) -> Any:
        assert self.process is not None and self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.suite} / {self.name}: worker exited (status {self.process.wait()})")
        return json.loads(line)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.stdin.write(json.dumps({"op": "exit"}) + "\n")  # type: ignore[union-attr]
            self.process.stdin.close()  # type: ignore[union-attr]
            self.process.wait(timeout=60)

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpus)


def load_line() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def matmul_rate(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """Sustained FP32 GFLOP/s of a large square matmul (the better of torch and numpy): the practical peak."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for fn in (lambda: torch.matmul(a, b), lambda: a.numpy() @ b.numpy()):
        fn()
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs (2 x multiply-adds of convolutions and matmuls) of one call, via torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def rddn_config(depth: int, proposals: int, classes: int = 6):
    """ResNet-``depth`` FPN RDDN with TR-Pre and context reference (the deployment configuration; gpu_inference.py
    benchmarks the same)."""
    from training.model.config import ModelConfig

    return ModelConfig.model_validate({
        "architecture": "faster",
        "class_names": [f"defect_{i}" for i in range(classes)],
        "backbone": {"depth": depth},
        "rpn": {"post_nms_top_n_test": proposals},
        "reference": {"input": "tr_pre"},
        "context": {"enabled": True},
    })


def resolve_model(path: Path | None) -> Path | None:
    """``--model``: a checkpoint file, or a directory holding exactly one ``*.pt`` (default: models/deeppcb/)."""
    candidate = path if path is not None else DEFAULT_MODEL_DIR
    if candidate.is_file():
        return candidate
    if candidate.is_dir():
        found = sorted(candidate.glob("*.pt"))
        if len(found) == 1:
            return found[0]
        if path is not None:
            raise SystemExit(f"--model {path}: expected one *.pt checkpoint in the directory, found {len(found)}")
    if path is not None:
        raise SystemExit(f"--model {path}: no such checkpoint")
    return None


def build_artifacts(checkpoint: Path, size: int, workdir: Path, calibration_data: Any, log: Callable[[str], None],
                    test_proposals: int | None = None) -> dict[tuple[str, str], Path]:
    """(runtime, precision) -> artifact directory, built as ``rddn compile`` builds them."""
    from engines import compile as cc
    from engines import openvino_ir, quantize
    from engines.artifact import ArtifactMetadata, sha256_file

    fp32 = workdir / "onnxruntime_fp32"
    start = time.perf_counter()
    cc.compile_artifact(cc.CompileOptions(checkpoint, "onnxruntime", fp32, input_size=(size, size),
                                          test_proposals=test_proposals), log=_quiet_log())
    meta = ArtifactMetadata.load(fp32)
    int8 = workdir / "onnxruntime_int8"
    int8.mkdir()
    quantization = quantize.quantize_qdq(fp32 / "model.onnx", int8 / "model.onnx",
                                         lambda: calibration_data.feeds((size, size), meta.needs_template),
                                         calibration_data.info)
    meta.model_copy(update={"precision": "int8", "model_sha256": sha256_file(int8 / "model.onnx"),
                            "quantization": quantization}).save(int8)
    artifacts = {("onnxruntime", "fp32"): fp32, ("onnxruntime", "int8"): int8}
    for precision, source in (("fp32", fp32), ("int8", int8)):
        target = workdir / f"openvino_{precision}"
        target.mkdir()
        info = openvino_ir.convert_to_ir(source / "model.onnx", target / "model.xml")
        ArtifactMetadata.load(source).model_copy(update={
            "target": "openvino", "model_file": "model.xml", "onnx_file": None, "openvino": info,
            "model_sha256": sha256_file(target / "model.xml")}).save(target)
        artifacts[("openvino", precision)] = target
    log(f"artifacts built in {time.perf_counter() - start:.0f} s (INT8: {', '.join(quantization.quantized_ops)}, "
        f"calibrated on {calibration_data.info.count} training pairs, list sha256 "
        f"{calibration_data.info.list_sha256[:12]})")
    return artifacts


def _quiet_log():
    import io

    from engines.progress import StepLog

    return StepLog(total=9, stream=io.StringIO())


def time_round_robin(runners: list[Runner], warmup: int, iters: int, frames: int) -> None:
    for runner in runners:
        for i in range(warmup):
            runner.ask(op="run", index=i)
    for i in range(iters):
        for runner in runners:
            reply = runner.ask(op="run", index=i % frames)
            runner.walls.append(reply["wall"])
            runner.cpus.append(reply["cpu"])


def print_table(runners: list[Runner], peak: float, reference: Runner | None, eager: Runner | None) -> None:
    head = (f"{'runner':<34} {'wall ms':>9} {'CPU ms':>9} {'frames/s':>8} {'RSS MiB':>8} {'GFLOP/s':>8} "
            f"{'% peak':>7} {'mAP@0.5':>8} {'x tv wall':>9} {'x tv CPU':>8} {'x eager':>8}")
    print(head)
    for r in runners:
        rate = r.flops / r.wall / 1e9
        ratio = lambda base, attr: f"{getattr(base, attr) / getattr(r, attr):.2f}" if base else "-"  # noqa: E731
        print(f"{r.name:<34} {r.wall * 1000:9.1f} {r.cpu * 1000:9.1f} {1 / r.wall:8.2f} {r.rss_mib:8.0f} "
              f"{rate:8.1f} {100 * rate * 1e9 / peak:6.1f}% "
              f"{'-' if r.map50 is None else f'{100 * r.map50:.2f}':>8} {ratio(reference, 'wall'):>9} "
              f"{ratio(reference, 'cpu'):>8} {ratio(eager, 'wall'):>8}")


def make_frames(data_root: Path, val_groups: list[str], count: int, path: Path) -> list[str]:
    """The first ``count`` validation pairs as uint8 arrays (native size) in ``path``; returns the list lines."""
    from training.data.deeppcb import DeepPCBReader, read_list_file, split_by_group

    _, val = split_by_group(read_list_file(data_root / "trainval.txt"), val_groups)
    reader = DeepPCBReader(data_root, "trainval.txt", lines=val[:count])
    samples = list(reader)
    np.savez(path, images=np.stack([s.image for s in samples]), templates=np.stack([s.template for s in samples]))
    return val


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None,
                        help=f"trained DeepPCB checkpoint (or a directory with one *.pt; default {DEFAULT_MODEL_DIR})")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="DeepPCB-format root (default %(default)s)")
    parser.add_argument("--val-groups", nargs="+", default=["92000", "44000"])
    parser.add_argument("--size", type=int, default=640, help="square input size of every runner (multiple of 32)")
    parser.add_argument("--model-size", type=int, default=None, help="input size of the DeepPCB suite (default --size)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--proposals", type=int, default=300, help="RDDN R50-FPN test proposals")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--eval-images", type=int, default=None, help="validation pairs for mAP (default: all)")
    parser.add_argument("--calibration-count", type=int, default=64)
    parser.add_argument("--quick", action="store_true",
                        help="3 timed frames, 1 warm-up, 32 validation pairs, 16 calibration pairs (< 10 min, 2 cores)")
    parser.add_argument("--skip-r50", action="store_true", help="DeepPCB suite only")
    parser.add_argument("--profile", action="store_true", help="per-op profile of every graph runtime")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    if args.quick:
        args.iters, args.warmup = 3, 1
        args.eval_images = args.eval_images or 32
        args.calibration_count = min(args.calibration_count, 16)
    model_path = resolve_model(args.model)
    if not (args.data / "trainval.txt").is_file():
        raise SystemExit(f"--data {args.data}: not a DeepPCB-format root (no trainval.txt)")

    import torch

    from engines import calibration

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    print(f"# CPU inference benchmark  ({time.strftime('%Y-%m-%d %H:%M:%S %Z')})")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; threads={args.threads}; "
          f"load average at start {load_line()}")
    versions = {}
    for dist in ("torch", "torchvision", "onnxruntime", "openvino"):
        import importlib.metadata as md

        versions[dist] = md.version(dist)
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    peak = matmul_rate(args.threads) * 1e9
    print(f"FP32 matmul rate (2048^3, best of torch/numpy): {peak / 1e9:.1f} GFLOP/s")

    workdir = Path(tempfile.mkdtemp(prefix="rddn-cpu-bench-"))
    splits = calibration.resolve_splits(args.data, args.val_groups)
    chosen = calibration.select_calibration(splits, args.calibration_count)
    frames_path = workdir / "frames.npz"
    val_lines = make_frames(args.data, args.val_groups, 4, frames_path)
    eval_lines = val_lines[: args.eval_images] if args.eval_images else val_lines
    eval_list = workdir / "eval_list.txt"
    eval_list.write_text("\n".join(eval_lines))
    eval_data = {"root": str(args.data), "list_file": str(eval_list), "val_groups": list(args.val_groups)}
    common = {"threads": args.threads, "frames": str(frames_path)}
    log = lambda message: print(f"  {message}", flush=True)  # noqa: E731
    suites: dict[str, list[Runner]] = {}
    frames_for_flops = np.load(frames_path)

    def image_tensor(key: str, size: int):
        from engines.artifact import resize_batch

        return torch.from_numpy(resize_batch([frames_for_flops[key][0]], (size, size)))

    if model_path is not None:
        from training.engine.checkpoint import load_model_from_checkpoint

        size = args.model_size or args.size
        print(f"\n## DeepPCB suite: {model_path} at {size}x{size}")
        model = load_model_from_checkpoint(model_path, map_location="cpu").eval()
        with torch.inference_mode():
            flops = count_flops(lambda: model(image_tensor("images", size), templates=image_tensor("templates", size)))
        log(f"{model.config.architecture} R-CNN ResNet-{model.config.backbone.depth} "
            f"(width {model.config.backbone.width}), reference {model.config.reference.input}/"
            f"{model.config.reference.feature}, {model.config.rpn.post_nms_top_n_test} proposals: "
            f"{flops / 1e9:.2f} GFLOP per frame")
        artifacts = build_artifacts(model_path, size, workdir / "deeppcb", chosen, log)
        suites["DeepPCB"] = [Runner("DeepPCB", "RDDN eager (PyTorch FP32)", "eager", "fp32",
                                    {**common, "kind": "rddn", "checkpoint": str(model_path), "size": size}, flops)]
        suites["DeepPCB"] += [Runner("DeepPCB", f"{rt} {prec.upper()}", rt, prec,
                                     {**common, "kind": rt, "artifact": str(path), "size": size}, flops)
                              for (rt, prec), path in artifacts.items()]
    else:
        print(f"\n(no DeepPCB model: {DEFAULT_MODEL_DIR} has none and --model was not given; no mAP figures)")
    if not args.skip_r50:
        from torchvision.models.detection import fasterrcnn_resnet50_fpn

        from training.engine.checkpoint import save_checkpoint
        from training.model import build_model

        size = args.size
        print(f"\n## R50-FPN suite at {size}x{size} (random weights; torchvision eager = the reference)")
        torch.manual_seed(0)
        r50 = build_model(rddn_config(50, args.proposals), load_pretrained=False).eval()
        r50_path = save_checkpoint(workdir / "r50.pt", r50)
        tv = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=size, max_size=size).eval()
        with torch.inference_mode():
            flops = count_flops(lambda: r50(image_tensor("images", size), templates=image_tensor("templates", size)))
            tv_flops = count_flops(lambda: tv([image_tensor("images", size)[0] / 255.0]))
        log(f"RDDN R50-FPN TR-Pre+CR {args.proposals} proposals: {flops / 1e9:.1f} GFLOP; torchvision "
            f"fasterrcnn_resnet50_fpn (1000 proposals): {tv_flops / 1e9:.1f} GFLOP")
        del r50, tv
        artifacts = build_artifacts(r50_path, size, workdir / "r50", chosen, log)
        suites["R50-FPN"] = [
            Runner("R50-FPN", "torchvision eager (PyTorch FP32)", "torchvision", "fp32",
                   {**common, "kind": "torchvision", "size": size}, tv_flops),
            Runner("R50-FPN", "RDDN eager (PyTorch FP32)", "eager", "fp32",
                   {**common, "kind": "rddn", "checkpoint": str(r50_path), "size": size}, flops)]
        suites["R50-FPN"] += [Runner("R50-FPN", f"{rt} {prec.upper()}", rt, prec,
                                     {**common, "kind": rt, "artifact": str(path), "size": size}, flops)
                              for (rt, prec), path in artifacts.items()]

    for suite, runners in suites.items():
        for runner in runners:
            runner.start(workdir)
        try:
            load_before = load_line()
            time_round_robin(runners, args.warmup, args.iters, 4)
            for runner in runners:
                runner.rss_mib = runner.ask(op="rss")["peak_rss_mib"]
            load_after = load_line()
            if suite == "DeepPCB":
                for runner in runners:
                    runner.map50 = runner.ask(op="eval", data=eval_data)["map50"]
            if args.profile:
                for runner in runners:
                    runner.profile = runner.ask(op="profile", frames=max(2, args.iters // 2))["ops"]
        finally:
            for runner in runners:
                runner.stop()
        reference = next((r for r in runners if r.runtime == "torchvision"), None)
        eager = next(r for r in runners if r.runtime == "eager")
        print(f"\n### {suite}: {args.iters} timed frames per runner in turns, load average {load_before} before, "
              f"{load_after} after" + (f"; mAP@0.5 on {len(eval_lines)} validation pairs (groups "
                                       f"{' '.join(args.val_groups)})" if suite == "DeepPCB" else ""))
        print_table(runners, peak, reference, eager)
        for runner in runners:
            if runner.profile:
                print(f"\nprofile {suite} / {runner.name} (per frame, by op type):")
                for row in runner.profile:
                    print(f"  {row['op']:<48} {row['ms_per_frame']:9.2f} ms  {100 * row['share']:5.1f}%")

    print(f"\nload average at the end {load_line()}; total {time.perf_counter() - started:.0f} s")
    print(fastest_line(suites))
    return 0


def fastest_line(suites: dict[str, list[Runner]]) -> str:
    """``fastest: <runtime> <precision> <R>x torchvision eager, mAP@0.5 loss <D>`` (see the module docstring)."""
    r50 = suites.get("R50-FPN")
    deeppcb = suites.get("DeepPCB")
    pool = r50 if r50 else deeppcb or []
    graph_runners = [r for r in pool if r.runtime in RUNTIMES]
    if not graph_runners:
        return "fastest: n/a n/a 0.00x torchvision eager, mAP@0.5 loss n/a"
    best = min(graph_runners, key=lambda r: r.wall)
    reference = next((r for r in pool if r.runtime == "torchvision"), None)
    ratio = f"{reference.wall / best.wall:.2f}" if reference else "n/a"
    loss = "n/a"
    if deeppcb:
        eager = next(r for r in deeppcb if r.runtime == "eager")
        same = next((r for r in deeppcb if (r.runtime, r.precision) == (best.runtime, best.precision)), None)
        if same is not None and same.map50 is not None and eager.map50 is not None:
            loss = f"{100 * (eager.map50 - same.map50):.2f}"
    return f"fastest: {best.runtime} {best.precision} {ratio}x torchvision eager, mAP@0.5 loss {loss}"


if __name__ == "__main__":
    raise SystemExit(main())
