"""``rddn compile``: a trained checkpoint -> a deployable artifact directory (model file(s) + ``metadata.json``).

``training/cli.py`` owns the ``rddn`` command and delegates here through :func:`add_arguments` / :func:`run`
(contract 5), importing this module lazily so ``rddn train`` never pays for onnx imports.

Targets:
- ``onnxruntime``: ``model.onnx`` with standard ONNX ops only (see :mod:`engines.export_onnx`), FP32.
- ``tensorrt``: ``model.onnx`` whose RoI extraction runs through the ``rddn`` custom-domain ops (FP16 features,
  FP32 boxes, explicit casts so a strongly typed TensorRT network builds from it), then ``model.engine`` when
  ``tensorrt`` imports here. Without TensorRT the ONNX and metadata are written and the engine is built on the
  target machine: the daemon rebuilds from the shipped ONNX whenever no matching engine is present.
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from engines.artifact import ArtifactMetadata, Preprocessing, TensorRTInfo, sha256_file
from engines.progress import StepLog
from engines.signing import SIGNATURE_FILE

ONNX_FILE = "model.onnx"
ENGINE_FILE = "model.engine"
DEFAULT_INPUT_SIZE = (640, 640)
SIZE_DIVISOR = 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rddn compile`` (contract 5)."""
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint written by `rddn train`")
    parser.add_argument("--target", required=True, choices=("onnxruntime", "tensorrt"),
                        help="onnxruntime: CPU artifact, standard ONNX ops; tensorrt: ONNX with the rddn plugin "
                             "nodes, plus the engine where tensorrt imports (else built on the target machine)")
    parser.add_argument("--precision", choices=("fp16", "fp32"), default=None,
                        help="default: fp32 for onnxruntime, fp16 for tensorrt (onnxruntime supports fp32 only)")
    parser.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"), default=None,
                        help=f"fixed graph input size, multiples of {SIZE_DIVISOR} "
                             f"(default: the training config's, else {DEFAULT_INPUT_SIZE[0]} {DEFAULT_INPUT_SIZE[1]})")
    parser.add_argument("--test-proposals", type=int, default=None,
                        help="RPN proposals kept per image after NMS at inference (default: the model config's)")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="frames per graph run; the graph's batch dimension is static (default 1)")
    parser.add_argument("--tr-post", action="store_true",
                        help="compile TR-Post rescoring in (the graph then takes a template input)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17; DCN backbones use at least 19)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the compile-time check that the exported graph matches PyTorch on one input")
    parser.add_argument("--out", required=True, type=Path, help="artifact directory to write")
    parser.add_argument("--sign-key", type=Path, default=None,
                        help="Ed25519 private key (PEM or OpenSSH, mode 0600): write signature.json over every file "
                             "of the artifact; stations with detector.signing_public_key refuse anything else")


def run(args: argparse.Namespace) -> int:
    """Compile; returns a process exit status (0 ok, 2 bad input, 1 self-check failed). Errors name the file or
    option at fault."""
    try:
        options = CompileOptions.from_args(args)
    except ValueError as exc:
        print(f"rddn compile: {exc}", file=sys.stderr)
        return 2
    try:
        metadata = compile_artifact(options)
    except (ValueError, FileNotFoundError) as exc:  # unreadable checkpoint, weights not matching their config ...
        print(f"rddn compile: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # the exported graph disagrees with PyTorch: never ship it silently
        print(f"rddn compile: {exc}", file=sys.stderr)
        return 1
    print(f"artifact written: {options.out} ({metadata.model_file}, target={metadata.target}, "
          f"precision={metadata.precision}, input {metadata.preprocessing.input_height}x"
          f"{metadata.preprocessing.input_width})")
    return 0


class CompileOptions:
    """Validated ``rddn compile`` options (one place that turns CLI strings into checked values)."""

    def __init__(self, checkpoint: Path, target: str, out: Path, *, precision: str | None = None,
                 input_size: tuple[int, int] | None = None, test_proposals: int | None = None,
                 tr_post: bool = False, opset: int | None = None, verify: bool = True, batch_size: int = 1,
                 sign_key: Path | None = None) -> None:
        self.checkpoint = Path(checkpoint)
        self.target = target
        self.out = Path(out)
        self.precision = precision or ("fp16" if target == "tensorrt" else "fp32")
        self.input_size = input_size
        self.test_proposals = test_proposals
        self.tr_post = tr_post
        self.opset = opset
        self.verify = verify
        self.batch_size = batch_size
        self.sign_key = Path(sign_key) if sign_key is not None else None
        self._validate()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "CompileOptions":
        return cls(args.checkpoint, args.target, args.out, precision=args.precision,
                   input_size=tuple(args.input_size) if args.input_size else None,
                   test_proposals=args.test_proposals, tr_post=args.tr_post, opset=args.opset,
                   verify=not args.no_verify, batch_size=args.batch_size, sign_key=args.sign_key)

    def _validate(self) -> None:
        if self.target not in ("onnxruntime", "tensorrt"):
            raise ValueError(f"--target must be onnxruntime or tensorrt, got {self.target!r}")
        if not self.checkpoint.is_file():
            raise ValueError(f"--checkpoint: file not found: {self.checkpoint}")
        if self.target == "onnxruntime" and self.precision != "fp32":
            raise ValueError("--precision fp16 is for --target tensorrt; the ONNX Runtime CPU artifact is fp32")
        if self.input_size is not None:
            check_input_size(self.input_size, "--input-size")
        if self.test_proposals is not None and self.test_proposals <= 0:
            raise ValueError(f"--test-proposals must be positive, got {self.test_proposals}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"--out {self.out} exists and is not a directory")
        if self.sign_key is not None:
            from engines.signing import load_private_key

            try:  # before minutes of export: a key that cannot sign must fail now
                load_private_key(self.sign_key)
            except ValueError as exc:
                raise ValueError(f"--sign-key: {exc}") from None


def check_input_size(size: tuple[int, int], where: str) -> tuple[int, int]:
    """The backbone/FPN needs H and W divisible by 32 (P5 stride); anything else would be padded silently."""
    height, width = (int(v) for v in size)
    if height <= 0 or width <= 0 or height % SIZE_DIVISOR or width % SIZE_DIVISOR:
        raise ValueError(f"{where}: input size {height}x{width} must be positive multiples of {SIZE_DIVISOR}")
    return height, width


def input_size_from_train_config(train_config: Mapping[str, Any]) -> tuple[int, int] | None:
    """The graph input size the training run implies, or None.

    An explicit ``data.input_size`` / ``data.image_size`` (int or [H, W]) wins; otherwise the test-time resize
    of the data config (``data.train.test_short_size`` / ``test_max_size``): short edge x long-edge cap, each
    rounded up to a multiple of 32 (a landscape frame; pass ``--input-size`` for anything else).
    """
    if not isinstance(train_config, Mapping):
        return None
    data = train_config.get("data")
    for section in (data, train_config):
        if not isinstance(section, Mapping):
            continue
        for key in ("input_size", "image_size"):
            value = section.get(key)
            if isinstance(value, int):
                return value, value
            if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
                return int(value[0]), int(value[1])
    train = data.get("train") if isinstance(data, Mapping) else None
    if isinstance(train, Mapping) and isinstance(train.get("test_short_size"), int):
        short = int(train["test_short_size"])
        longest = int(train.get("test_max_size") or short)
        return _round_up(short), _round_up(max(short, longest))
    return None


def _round_up(value: int) -> int:
    return -(-value // SIZE_DIVISOR) * SIZE_DIVISOR


def compile_artifact(options: CompileOptions, log: StepLog | None = None) -> ArtifactMetadata:
    """Load, export, check and describe: the whole of ``rddn compile`` as a function (tests call it directly)."""
    import torch

    from engines import export_onnx
    from training.engine.checkpoint import load_checkpoint

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    tensorrt_build = _tensorrt_builder() if options.target == "tensorrt" else None
    log = log or StepLog(total=5 + (1 if tensorrt_build else 0) + (1 if options.sign_key else 0))
    with log.step(f"loading checkpoint {options.checkpoint}"):
        payload = load_checkpoint(options.checkpoint)
        input_size = options.input_size or input_size_from_train_config(payload.get("train_config") or {})
        input_size = check_input_size(input_size or DEFAULT_INPUT_SIZE, "input size")
        model = export_onnx.model_for_export(payload, test_proposals=options.test_proposals)
        log.info(f"{model.config.architecture} R-CNN, backbone ResNet-{model.config.backbone.depth}, "
                 f"reference {model.config.reference.input}/{model.config.reference.feature}, "
                 f"context {'on' if model.config.context.enabled else 'off'}, "
                 f"input {input_size[0]}x{input_size[1]}, {model.config.rpn.post_nms_top_n_test} test proposals")
    spec = export_onnx.ExportSpec(
        input_size=input_size,
        tr_post=options.tr_post,
        roi_ops="rddn" if options.target == "tensorrt" else "onnx",
        precision=options.precision,
        opset=options.opset or export_onnx.DEFAULT_OPSET,
        batch_size=options.batch_size,
    )
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / SIGNATURE_FILE).unlink(missing_ok=True)  # a previous build's signature would not match
    onnx_path = options.out / ONNX_FILE
    with log.step(f"exporting ONNX ({spec.roi_ops} RoI ops, {spec.precision}, opset {spec.opset})"):
        module = export_onnx.build_export_module(model, spec)
        export_onnx.export_onnx(module, onnx_path, spec)
    with log.step("checking the graph (onnx.checker, shape inference, I/O contract)"):
        export_onnx.check_onnx(onnx_path, spec, with_template=module.with_template)
    verify, why_not = _self_check_plan(options, spec)
    with log.step("self-check: exported graph vs PyTorch on one input" if verify else f"self-check skipped ({why_not})"):
        if verify:
            report = export_onnx.verify_against_eager(model, module, onnx_path, spec)
            log.info(report.summary())
    tensorrt_info = None
    model_file = ONNX_FILE
    if tensorrt_build is not None:
        with log.step("building the TensorRT engine"):
            tensorrt_info = _build_engine(tensorrt_build, onnx_path, options.out / ENGINE_FILE, spec, log)
            model_file = ENGINE_FILE
    elif options.target == "tensorrt":
        log.info("tensorrt is not importable here: wrote the TensorRT-variant ONNX only; the engine is built on "
                 "the target machine (the daemon rebuilds it from the shipped ONNX)")
    with log.step("writing metadata.json"):
        metadata = describe_artifact(model, payload, options, spec, onnx_path, model_file, module.with_template,
                                     tensorrt_info)
        metadata.save(options.out)
    if options.sign_key is not None:
        from engines.signing import sign_artifact

        with log.step(f"signing the artifact with {options.sign_key}"):
            sign_artifact(options.out, options.sign_key)
    log.finish(f"artifact ready in {options.out}")
    return metadata


#: The TensorRT-variant graph can only run on CPU through onnx.reference (numpy convolutions): minutes per frame
#: at deployment sizes, so its self-check runs up to this many input pixels (the tests cover the rest).
REFERENCE_CHECK_MAX_PIXELS = 320 * 320


def _self_check_plan(options: CompileOptions, spec: Any) -> tuple[bool, str]:
    if not options.verify:
        return False, "--no-verify"
    pixels = spec.input_size[0] * spec.input_size[1]
    if spec.roi_ops == "rddn" and pixels > REFERENCE_CHECK_MAX_PIXELS:
        return False, (f"the plugin graph runs on CPU only through onnx.reference, too slow at "
                       f"{spec.input_size[0]}x{spec.input_size[1]}; check the built engine against PyTorch on the GPU")
    return True, ""


def describe_artifact(model: Any, payload: Mapping[str, Any], options: CompileOptions, spec: Any,
                      onnx_path: Path, model_file: str, with_template: bool,
                      tensorrt_info: TensorRTInfo | None) -> ArtifactMetadata:
    """The artifact's metadata. ``needs_template`` is True whenever the graph has a ``template`` input (a
    template-reference network, or TR-Post compiled in), so a backend checking that one flag feeds it."""
    cfg = model.config
    model_path = options.out / model_file
    return ArtifactMetadata(
        target=options.target,
        precision=spec.precision,
        model_file=model_file,
        onnx_file=ONNX_FILE,
        class_names=list(payload.get("class_names") or cfg.class_names),
        preprocessing=Preprocessing(
            input_height=spec.input_size[0], input_width=spec.input_size[1],
            normalization=cfg.reference.input, pixel_mean=cfg.pixel_mean, pixel_std=cfg.pixel_std,
        ),
        needs_template=with_template,
        tr_post=spec.tr_post,
        score_thresh=cfg.roi_head.score_thresh,
        nms_thresh=cfg.roi_head.nms_thresh,
        max_detections=cfg.roi_head.detections_per_img,
        model_sha256=sha256_file(model_path if model_path.is_file() else onnx_path),
        checkpoint_sha256=sha256_file(options.checkpoint),
        architecture=cfg.architecture,
        reference={
            **cfg.reference.model_dump(mode="json"),
            "context": cfg.context.model_dump(mode="json"),
            "test_proposals": cfg.rpn.post_nms_top_n_test,
        },
        exporter_versions=_exporter_versions(),
        tensorrt=tensorrt_info,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _exporter_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions: dict[str, str] = {}
    for dist in ("torch", "torchvision", "onnx", "onnxscript", "onnxruntime", "tensorrt"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return versions


def _tensorrt_builder() -> Any | None:
    """``engines.tensorrt_build`` when TensorRT imports on this machine, else None (CPU-only build hosts)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return None
    from engines import tensorrt_build

    return tensorrt_build


def _build_engine(tensorrt_build: Any, onnx_path: Path, engine_path: Path, spec: Any, log: StepLog) -> TensorRTInfo:
    """Build through ``engines.tensorrt_build`` (strongly typed: precisions come from the ONNX casts)."""
    result = tensorrt_build.build_engine(onnx_path, engine_path, precision=spec.precision,
                                         max_batch=spec.batch_size, progress=log.info)
    if isinstance(result, TensorRTInfo):
        return result
    if isinstance(result, Mapping):
        return TensorRTInfo.model_validate(dict(result))
    raise TypeError(f"engines.tensorrt_build.build_engine returned {type(result).__name__}, expected TensorRTInfo")


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m engines.compile``); ``rddn compile`` is the usual way in."""
    parser = argparse.ArgumentParser(prog="rddn compile", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
