"""GPU inference benchmark: RDDN PyTorch eager FP32 / FP16 vs the project's TensorRT FP16 engine.

Run on a machine with a CUDA GPU (from the repository root; the deployment target, issue 4, is TensorRT FP16
<= 8 ms a frame on an H100 at 800x1333, i.e. the 800x1344 graph, 1333 rounded up to the FPN's multiple of 32):

    .venv/bin/python benchmarks/gpu_inference.py                         # R50-FPN TR-Pre + CR, 300 proposals
    .venv/bin/python benchmarks/gpu_inference.py --channels-last --artifact-dir artifacts/bench-trt
    .venv/bin/python benchmarks/gpu_inference.py --checkpoint runs/x/last.pt   # a trained model instead
    .venv/bin/python benchmarks/gpu_inference.py --device cpu --size 128 --iters 1   # smoke mode (eager only)

What is timed, all on the same random frame (and template, for template-reference models):
- PyTorch eager FP32 and FP16 (``torch.autocast`` on CUDA), optionally also channels_last, inputs already on the
  device, CUDA-event timing after warm-up (cuDNN autotuning on: the input size is fixed, as for TensorRT);
- the TensorRT FP16 engine built the way ``rddn compile --target tensorrt`` builds it (``engines.compile``:
  TensorRT-variant ONNX with the ``rddn`` plugin nodes, then ``engines.tensorrt_build.build_engine``), timed
  (a) directly, device buffers in and out, CUDA events (comparable to the eager figures), and (b) through the
  daemon's ``inspector.backends.tensorrt.TensorRTBackend.detect`` (uint8 frames in, detections out: host
  copies included), wall clock.
Anything that cannot run here is printed as ``not run: <why>`` instead of failing the whole benchmark.
Weights are random unless ``--checkpoint`` is given: latency does not depend on them beyond the number of
detections, which the fixed-size post-processing bounds.
"""
from __future__ import annotations

import argparse
import platform
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: issue 4: TensorRT FP16 per-frame latency on an H100 at 800x1333.
TARGET_TENSORRT_MS = 8.0
DEFAULT_SIZE = (800, 1344)
DEFAULT_PROPOSALS = 300


# ------------------------------------------------------------------------------------------------- results
@dataclass
class Latency:
    """Per-frame latencies of one variant (milliseconds)."""

    name: str
    samples_ms: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.samples_ms))

    @property
    def p50(self) -> float:
        return float(np.percentile(self.samples_ms, 50))

    @property
    def p99(self) -> float:
        return float(np.percentile(self.samples_ms, 99))

    @property
    def fps(self) -> float:
        return 1000.0 / self.mean

    def line(self) -> str:
        return (f"{self.name:<48} mean {self.mean:9.2f} ms  p50 {self.p50:9.2f} ms  p99 {self.p99:9.2f} ms  "
                f"{self.fps:8.2f} frames/s  (n={len(self.samples_ms)})")


@dataclass
class NotRun:
    """A variant that could not be measured here, and why (printed, never silently dropped)."""

    name: str
    reason: str

    def line(self) -> str:
        return f"{self.name:<48} not run: {self.reason}"


Result = Latency | NotRun


# -------------------------------------------------------------------------------------------------- timing
def measure(name: str, fn: Callable[[], object], warmup: int, iters: int, cuda: bool) -> Latency:
    """Latency of ``fn`` per call: CUDA events around each call on a GPU (the end event is queued after every
    kernel the call launched, then waited for), ``perf_counter`` otherwise."""
    import torch

    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    samples = []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(float(start.elapsed_time(end)))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1000.0)
    return Latency(name, samples)


def guarded(name: str, run: Callable[[], Latency]) -> Result:
    """Run one variant; an exception becomes a NotRun line naming it, so the other variants still report."""
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 - reported verbatim, the benchmark goes on
        return NotRun(name, f"{type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------------------------------- model
def model_config(args: argparse.Namespace):
    """The ModelConfig to benchmark: ``--config`` (a training YAML's ``model``), ``--checkpoint``'s, or the
    deployment configuration (ResNet-50 FPN, TR-Pre + CR); ``--proposals`` overrides the test proposals."""
    from benchmarks.cpu_inference import rddn_config
    from engines.export_onnx import config_for_export

    if args.checkpoint is not None:
        from training.engine.checkpoint import load_checkpoint, model_config_from_checkpoint

        cfg = model_config_from_checkpoint(load_checkpoint(args.checkpoint))
    elif args.config is not None:
        from training.engine.config import load_train_config

        cfg = load_train_config(args.config).model
    else:
        cfg = rddn_config(args.depth, args.proposals or DEFAULT_PROPOSALS)
    return config_for_export(cfg, args.proposals)


def load_model(args: argparse.Namespace, cfg: Any):
    """RDDN in eval mode on CPU: the checkpoint's weights, or random ones (latency does not need trained ones)."""
    import torch

    from training.model import build_model

    torch.manual_seed(0)
    model = build_model(cfg, load_pretrained=False)
    if args.checkpoint is not None:
        from training.engine.checkpoint import load_checkpoint

        model.load_state_dict(load_checkpoint(args.checkpoint)["model"])
    return model.eval()


def example_frames(size: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One uint8 HxWx3 RGB frame and its template (the frame plus small noise, as a registered template is)."""
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    template = np.clip(frame.astype(np.int16) + rng.integers(-4, 5, frame.shape), 0, 255).astype(np.uint8)
    return frame, template


def eager_variant(model: Any, image: Any, template: Any | None, device: Any, fp16: bool,
                  channels_last: bool) -> Callable[[], object]:
    """One eager forward (inference mode) of ``model`` on ``device``; FP16 through ``torch.autocast``."""
    import torch

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = model.to(device=device, memory_format=fmt)
    img = image.to(device).contiguous(memory_format=fmt)
    tpl = template.to(device).contiguous(memory_format=fmt) if template is not None else None

    def run() -> object:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=fp16):
            return net(img, templates=tpl)

    return run


def eager_results(model: Any, image: Any, template: Any | None, args: argparse.Namespace) -> list[Result]:
    import torch

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    layouts = (False, True) if args.channels_last else (False,)
    results: list[Result] = []
    for channels_last in layouts:
        suffix = " channels_last" if channels_last else ""
        for fp16 in (False, True):
            name = f"PyTorch eager {'FP16 (autocast)' if fp16 else 'FP32'}{suffix}"
            if fp16 and not cuda:
                results.append(NotRun(name, "FP16 autocast is timed on CUDA only (--device cpu)"))
                continue
            results.append(guarded(name, lambda: measure(
                name, eager_variant(model, image, template, device, fp16, channels_last),
                args.warmup, args.iters, cuda)))
    model.to(device="cpu", memory_format=torch.contiguous_format)
    return results


# ------------------------------------------------------------------------------------------------ TensorRT
def tensorrt_version() -> tuple[str | None, str]:
    """(version, '') when ``tensorrt`` imports, else (None, why not)."""
    try:
        import tensorrt as trt
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install raising OSError
        return None, f"tensorrt does not import ({type(exc).__name__}: {exc}); install TensorRT >= 10.11"
    return str(trt.__version__), ""


def tensorrt_blocker(args: argparse.Namespace) -> str | None:
    """Why the TensorRT variant cannot run here, or None when it can."""
    import torch

    if not args.device.startswith("cuda"):
        return f"--device {args.device}: TensorRT needs a CUDA GPU"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    version, why = tensorrt_version()
    return why if version is None else None


def compile_tensorrt_artifact(model: Any, args: argparse.Namespace, workdir: Path) -> Path:
    """``rddn compile --target tensorrt --precision fp16`` of the benchmarked weights; returns the artifact dir.

    Goes through ``engines.compile.compile_artifact`` (export with the ``rddn`` plugin nodes, graph checks,
    ``engines.tensorrt_build.build_engine``), so the figure is the one the daemon gets from a compiled artifact.
    """
    from engines.compile import CompileOptions, compile_artifact
    from training.engine.checkpoint import save_checkpoint

    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = save_checkpoint(workdir / "benchmark_random_weights.pt", model)
    out = args.artifact_dir or workdir / "artifact"
    options = CompileOptions(checkpoint, "tensorrt", out, precision="fp16", input_size=tuple(args.size),
                             test_proposals=model.config.rpn.post_nms_top_n_test, verify=False)
    metadata = compile_artifact(options)
    if metadata.model_file == metadata.onnx_file:
        raise RuntimeError(f"{out}: compile wrote no engine (tensorrt did not import in engines.compile)")
    return Path(out)


def engine_variant(engine_path: Path, image: Any, template: Any | None) -> Callable[[], object]:
    """One ``execute_async_v3`` of the engine on torch-owned device buffers (no host copies) on torch's stream."""
    import tensorrt as trt
    import torch

    from engines import tensorrt_build, tensorrt_plugins

    tensorrt_plugins.register_plugins(tensorrt_build.current_gpu_arch())
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise RuntimeError(f"TensorRT could not deserialize {engine_path}")
    context = engine.create_execution_context()
    feeds = {"image": image.cuda()}
    if template is not None:
        feeds["template"] = template.cuda()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    for name in names:
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            if name not in feeds:
                raise ValueError(f"{engine_path}: engine input '{name}' is not one of {sorted(feeds)}")
            context.set_input_shape(name, tuple(feeds[name].shape))
    buffers: dict[str, torch.Tensor] = {}
    for name in names:
        dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype
        buffers[name] = feeds[name].to(dtype).contiguous() if name in feeds else torch.empty(
            tuple(context.get_tensor_shape(name)), dtype=dtype, device="cuda")
        context.set_tensor_address(name, buffers[name].data_ptr())
    keep_alive = (engine, context, buffers)

    def run() -> object:
        if not context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError(f"TensorRT execution failed ({engine_path})")
        return keep_alive

    return run


def backend_variant(artifact: Path, frame: np.ndarray, template: np.ndarray | None,
                    workdir: Path) -> tuple[Callable[[], object], Callable[[], None]]:
    """The daemon's path: ``TensorRTBackend.detect`` on a uint8 frame (host -> device -> detections)."""
    from inspector.backends.tensorrt import TensorRTBackend

    import torch

    backend = TensorRTBackend(artifact, cache_dir=workdir / "engine-cache", device=torch.cuda.current_device())
    return (lambda: backend.detect([frame], [template])), backend.close


def tensorrt_results(model: Any, image: Any, template: Any | None, frame: np.ndarray,
                     frame_template: np.ndarray | None, args: argparse.Namespace, workdir: Path) -> list[Result]:
    engine_name = "TensorRT FP16 engine (device buffers)"
    backend_name = "TensorRT FP16 TensorRTBackend.detect (host I/O)"
    blocker = tensorrt_blocker(args)
    if blocker is not None:
        return [NotRun(engine_name, blocker), NotRun(backend_name, blocker)]
    try:
        start = time.perf_counter()
        artifact = compile_tensorrt_artifact(model, args, workdir)
        print(f"TensorRT artifact compiled in {time.perf_counter() - start:.0f} s: {artifact}")
    except Exception as exc:  # noqa: BLE001
        why = f"compile failed: {type(exc).__name__}: {exc}"
        return [NotRun(engine_name, why), NotRun(backend_name, why)]
    results: list[Result] = [guarded(engine_name, lambda: measure(
        engine_name, engine_variant(artifact / "model.engine", image, template), args.warmup, args.iters, True))]

    def via_backend() -> Latency:
        run, close = backend_variant(artifact, frame, frame_template, workdir)
        try:
            return measure(backend_name, run, args.warmup, args.iters, cuda=False)
        finally:
            close()

    results.append(guarded(backend_name, via_backend))
    return results


# ------------------------------------------------------------------------------------------------- report
def environment_lines(args: argparse.Namespace) -> list[str]:
    import torch
    import torchvision

    if args.device.startswith("cuda") and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        device = (f"GPU: {torch.cuda.get_device_name()} (sm_{major}{minor}), CUDA {torch.version.cuda}, "
                  f"cuDNN {torch.backends.cudnn.version()}")
    else:
        device = f"device: {args.device} ({platform.processor() or platform.machine()}), no GPU used"
    version, why = tensorrt_version()
    return [device, f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
                    f"TensorRT {version if version else 'unavailable: ' + why}"]


def summary_lines(results: list[Result], size: tuple[int, int]) -> list[str]:
    """Speed-ups against eager FP32 (and TensorRT against eager FP16), and the issue-4 target verdict."""
    measured = {r.name: r for r in results if isinstance(r, Latency)}
    eager32 = measured.get("PyTorch eager FP32")
    eager16 = measured.get("PyTorch eager FP16 (autocast)")
    engine = measured.get("TensorRT FP16 engine (device buffers)")
    lines = []
    for r in measured.values():
        if eager32 is not None and r is not eager32:
            lines.append(f"ratio {r.name} / PyTorch eager FP32 frames/s: {r.fps / eager32.fps:6.2f}x")
    if engine is not None and eager16 is not None:
        lines.append(f"ratio TensorRT FP16 engine / PyTorch eager FP16 frames/s: {engine.fps / eager16.fps:6.2f}x")
    if engine is None:
        lines.append(f"target TensorRT FP16 <= {TARGET_TENSORRT_MS:.0f} ms/frame (H100, 800x1344): NOT MEASURED")
    else:
        verdict = "met" if engine.mean <= TARGET_TENSORRT_MS else "MISSED"
        lines.append(f"target TensorRT FP16 <= {TARGET_TENSORRT_MS:.0f} ms/frame (H100, 800x1344): {verdict} "
                     f"(mean {engine.mean:.2f} ms at {size[0]}x{size[1]})")
    return lines



def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (smoke mode: eager only)")
    parser.add_argument("--size", type=int, nargs="+", default=list(DEFAULT_SIZE), metavar="N",
                        help="graph input size, multiples of 32 (one value: square); default 800 1344")
    parser.add_argument("--depth", type=int, default=50, choices=(18, 34, 50, 101),
                        help="ResNet depth of the default model (ignored with --config/--checkpoint)")
    parser.add_argument("--proposals", type=int, default=None,
                        help=f"RPN test proposals (default {DEFAULT_PROPOSALS}, or the config's/checkpoint's)")
    parser.add_argument("--config", type=Path, default=None, help="training YAML whose `model` section to build")
    parser.add_argument("--checkpoint", type=Path, default=None, help="an `rddn train` checkpoint (its weights)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs per variant (default 10; cpu 1)")
    parser.add_argument("--iters", type=int, default=100, help="timed runs per variant")
    parser.add_argument("--channels-last", action="store_true", help="also time eager in channels_last layout")
    parser.add_argument("--artifact-dir", type=Path, default=None,
                        help="keep the compiled TensorRT artifact here (default: a temporary directory)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", args.device):
        parser.error(f"--device {args.device!r}: use cuda, cuda:N or cpu")
    if len(args.size) == 1:
        args.size = [args.size[0], args.size[0]]
    if len(args.size) != 2 or any(v <= 0 or v % 32 for v in args.size):
        parser.error(f"--size {args.size}: one or two positive multiples of 32 (H [W])")
    if args.config is not None and args.checkpoint is not None:
        parser.error("--config and --checkpoint are exclusive (a checkpoint carries its model config)")
    for option, path in (("--config", args.config), ("--checkpoint", args.checkpoint)):
        if path is not None and not path.is_file():
            parser.error(f"{option}: file not found: {path}")
    if args.iters < 1:
        parser.error(f"--iters must be >= 1, got {args.iters}")
    if args.warmup is None:
        args.warmup = 1 if args.device == "cpu" else 10
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print(f"--device {args.device}: torch sees no CUDA device (use --device cpu for the smoke mode)",
                  file=sys.stderr)
            return 2
        index = torch.device(args.device).index
        if index is not None:
            torch.cuda.set_device(index)
        torch.backends.cudnn.benchmark = True  # fixed input size: autotune convolutions, as TensorRT does

    cfg = model_config(args)
    model = load_model(args, cfg)
    size = tuple(args.size)
    print(f"# GPU inference benchmark  ({time.strftime('%Y-%m-%d %H:%M:%S %Z')})")
    for line in environment_lines(args):
        print(line)
    print(f"model: {cfg.architecture} R-CNN, ResNet-{cfg.backbone.depth} FPN, reference "
          f"{cfg.reference.input}/{cfg.reference.feature}, context {'on' if cfg.context.enabled else 'off'}, "
          f"{cfg.rpn.post_nms_top_n_test} test proposals, "
          f"{'checkpoint ' + str(args.checkpoint) if args.checkpoint else 'random weights'}; input "
          f"{size[0]}x{size[1]}, batch 1; warm-up {args.warmup}, timed {args.iters}")

    frame, frame_template = example_frames(size)
    needs_template = bool(cfg.reference.needs_template)
    image = torch.from_numpy(frame).permute(2, 0, 1)[None].float().contiguous()
    template = torch.from_numpy(frame_template).permute(2, 0, 1)[None].float().contiguous() if needs_template else None

    results = eager_results(model, image, template, args)
    with tempfile.TemporaryDirectory(prefix="rddn-gpu-bench-") as tmp:
        results += tensorrt_results(model, image, template, frame, frame_template if needs_template else None,
                                    args, Path(tmp))
    print()
    for result in results:
        print(result.line())
    print()
    for line in summary_lines(results, size):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
