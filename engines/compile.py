"""``rddn compile``: a trained checkpoint -> a deployable artifact directory (model file(s) + ``metadata.json``).

``training/cli.py`` owns the ``rddn`` command and delegates here through :func:`add_arguments` / :func:`run`
(contract 5), importing this module lazily so ``rddn train`` never pays for onnx imports.

Targets:
- ``onnxruntime``: ``model.onnx`` with standard ONNX ops only (see :mod:`engines.export_onnx`), FP32, or INT8
  (``--precision int8 --calibration DATA``: a QDQ graph from ONNX Runtime's static quantiser, :mod:`engines.quantize`).
- ``openvino``: the same graph as OpenVINO IR, ``model.xml`` + ``model.bin`` (:mod:`engines.openvino_ir`),
  FP32 or INT8 (the QDQ graph converted: FakeQuantize nodes the CPU plugin runs in int8).
- ``tensorrt``: ``model.onnx`` whose RoI extraction runs through the ``rddn`` custom-domain ops (FP16 features,
  FP32 boxes, explicit casts so a strongly typed TensorRT network builds from it), then ``model.engine`` when
  ``tensorrt`` imports here. Without TensorRT the ONNX and metadata are written and the engine is built on the
  target machine: the daemon rebuilds from the shipped ONNX whenever no matching engine is present.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from engines import calibration, quantize
from engines.artifact import Accuracy, ArtifactMetadata, OpenVINOInfo, Preprocessing, Quantization, TensorRTInfo, \
    sha256_file
from engines.progress import StepLog
from engines.signing import SIGNATURE_FILE

ONNX_FILE = "model.onnx"
ENGINE_FILE = "model.engine"
IR_FILE = "model.xml"
TARGETS = ("onnxruntime", "openvino", "tensorrt")
CPU_TARGETS = ("onnxruntime", "openvino")
#: Default accuracy gate of an INT8 artifact: mAP@0.5 points it may lose against the FP32 graph.
DEFAULT_MAX_MAP_LOSS = 0.5
DEFAULT_INPUT_SIZE = (640, 640)
SIZE_DIVISOR = 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rddn compile`` (contract 5)."""
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint written by `rddn train`")
    parser.add_argument("--target", required=True, choices=TARGETS,
                        help="onnxruntime: CPU artifact, standard ONNX ops; openvino: the same graph as OpenVINO IR; "
                             "tensorrt: ONNX with the rddn plugin nodes, plus the engine where tensorrt imports "
                             "(else built on the target machine)")
    parser.add_argument("--precision", choices=("fp16", "fp32", "int8"), default=None,
                        help="default: fp32 for onnxruntime/openvino, fp16 for tensorrt; int8 (CPU targets) needs "
                             "--calibration")
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
    int8 = parser.add_argument_group("INT8 (--precision int8)")
    int8.add_argument("--calibration", default=None, metavar="DATA",
                      help="calibration and validation data: a DeepPCB-format root, a data config or a training "
                           "config YAML. Calibration pairs come from its training side only; the artifact's "
                           "accuracy is measured on its validation side (held-out groups) and recorded")
    int8.add_argument("--val-groups", nargs="+", default=None, metavar="GROUP",
                      help="DeepPCB root: the validation board groups (default: the groups the checkpoint's "
                           "training run held out)")
    int8.add_argument("--calibration-count", type=int, default=calibration.DEFAULT_COUNT,
                      help=f"training pairs to calibrate on (default {calibration.DEFAULT_COUNT})")
    int8.add_argument("--calibration-method", choices=quantize.METHODS, default=quantize.DEFAULT_METHOD,
                      help=f"activation range statistic (default {quantize.DEFAULT_METHOD})")
    int8.add_argument("--int8-scope", nargs="+", choices=quantize.SCOPES, default=list(quantize.DEFAULT_SCOPE),
                      metavar="PART", help="model parts whose Conv/Gemm layers run in int8 (default "
                      f"{' '.join(quantize.DEFAULT_SCOPE)}; RoIAlign, box decoding and NMS are always FP32)")
    int8.add_argument("--max-map-loss", type=float, default=DEFAULT_MAX_MAP_LOSS,
                      help="fail (exit 1, no metadata.json) if the INT8 artifact's mAP@0.5 on the validation "
                           f"side is more than this many points below the FP32 graph's (default {DEFAULT_MAX_MAP_LOSS})")


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


@dataclass(frozen=True)
class Int8Options:
    """``--precision int8``: where the calibration/validation data comes from and how to quantise."""

    calibration: str
    val_groups: tuple[str, ...] | None = None
    count: int = calibration.DEFAULT_COUNT
    method: str = quantize.DEFAULT_METHOD
    scope: tuple[str, ...] = quantize.DEFAULT_SCOPE
    max_map_loss: float = DEFAULT_MAX_MAP_LOSS

    def __post_init__(self) -> None:
        if self.count <= 0:
            raise ValueError(f"--calibration-count must be positive, got {self.count}")
        if self.method not in quantize.METHODS:
            raise ValueError(f"--calibration-method must be one of {', '.join(quantize.METHODS)}")
        quantize.select_nodes((), self.scope)  # unknown parts named here, before anything is exported
        if not self.scope:
            raise ValueError("--int8-scope needs at least one part")
        if self.max_map_loss < 0:
            raise ValueError(f"--max-map-loss must be >= 0, got {self.max_map_loss}")


class CompileOptions:
    """Validated ``rddn compile`` options (one place that turns CLI strings into checked values)."""

    def __init__(self, checkpoint: Path, target: str, out: Path, *, precision: str | None = None,
                 input_size: tuple[int, int] | None = None, test_proposals: int | None = None,
                 tr_post: bool = False, opset: int | None = None, verify: bool = True, batch_size: int = 1,
                 sign_key: Path | None = None, int8: Int8Options | None = None) -> None:
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
        self.int8 = int8
        self._validate()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "CompileOptions":
        int8 = None
        if args.calibration is not None:
            int8 = Int8Options(args.calibration, tuple(args.val_groups) if args.val_groups else None,
                               args.calibration_count, args.calibration_method, tuple(args.int8_scope),
                               args.max_map_loss)
        return cls(args.checkpoint, args.target, args.out, precision=args.precision,
                   input_size=tuple(args.input_size) if args.input_size else None,
                   test_proposals=args.test_proposals, tr_post=args.tr_post, opset=args.opset,
                   verify=not args.no_verify, batch_size=args.batch_size, sign_key=args.sign_key, int8=int8)

    def _validate(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"--target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if not self.checkpoint.is_file():
            raise ValueError(f"--checkpoint: file not found: {self.checkpoint}")
        if self.target in CPU_TARGETS and self.precision not in ("fp32", "int8"):
            raise ValueError(f"--precision {self.precision} is for --target tensorrt; the {self.target} CPU artifact "
                             "is fp32 or int8")
        if self.target == "tensorrt" and self.precision == "int8":
            raise ValueError("--precision int8 is for the CPU targets (onnxruntime, openvino); TensorRT builds fp16")
        if self.precision == "int8" and self.int8 is None:
            raise ValueError("--precision int8 needs --calibration DATA (training pairs to calibrate on)")
        if self.precision != "int8" and self.int8 is not None:
            raise ValueError("--calibration is for --precision int8")
        if self.target == "openvino":
            _require_openvino()
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


def _require_openvino() -> None:
    try:
        import openvino  # noqa: F401
    except ImportError:
        raise ValueError("--target openvino needs OpenVINO on this machine: pip install 'rddn-inspector[openvino]'") \
            from None


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
    int8 = options.precision == "int8"
    openvino = options.target == "openvino"
    log = log or StepLog(total=5 + (1 if tensorrt_build else 0) + (3 if int8 else 0)
                         + (2 if openvino and not int8 else 1 if openvino else 0)
                         + (1 if options.sign_key else 0))
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
        precision="fp32" if options.target in CPU_TARGETS else options.precision,
        opset=options.opset or export_onnx.DEFAULT_OPSET,
        batch_size=options.batch_size,
    )
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / METADATA_NAME).unlink(missing_ok=True)  # a failed compile never leaves a loadable artifact
    (options.out / SIGNATURE_FILE).unlink(missing_ok=True)  # a previous build's signature would not match
    work = Path(tempfile.mkdtemp(prefix="rddn-compile-"))  # the FP32 graph when it is not what ships
    try:
        ships_fp32_onnx = not int8 and not openvino
        onnx_path = options.out / ONNX_FILE if ships_fp32_onnx else work / ONNX_FILE
        with log.step(f"exporting ONNX ({spec.roi_ops} RoI ops, {spec.precision}, opset {spec.opset})"):
            module = export_onnx.build_export_module(model, spec)
            export_onnx.export_onnx(module, onnx_path, spec)
        with log.step("checking the graph (onnx.checker, shape inference, I/O contract)"):
            export_onnx.check_onnx(onnx_path, spec, with_template=module.with_template)
        verify, why_not = _self_check_plan(options, spec)
        with log.step("self-check: exported graph vs PyTorch on one input" if verify
                      else f"self-check skipped ({why_not})"):
            if verify:
                log.info(export_onnx.verify_against_eager(model, module, onnx_path, spec).summary())
        quantization = splits = None
        graph = onnx_path
        if int8:
            assert options.int8 is not None
            with log.step(f"choosing {options.int8.count} calibration pairs from the training side of "
                          f"{options.int8.calibration}"):
                splits = calibration.resolve_splits(options.int8.calibration, options.int8.val_groups,
                                                    payload.get("train_config") or {})
                chosen = calibration.select_calibration(splits, options.int8.count,
                                                        class_names=payload.get("class_names") or model.config.class_names)
                log.info(f"{chosen.info.count} pairs, validation groups {chosen.info.excluded_groups} kept out, "
                         f"list sha256 {chosen.info.list_sha256[:12]}")
            graph = (options.out / ONNX_FILE) if not openvino else work / "model_int8.onnx"
            with log.step(f"quantising to INT8 (ONNX Runtime static QDQ, {options.int8.method}, scope "
                          f"{' '.join(options.int8.scope)})"):
                quantization = quantize.quantize_qdq(
                    onnx_path, graph, lambda: chosen.feeds(input_size, module.with_template), chosen.info,
                    scope=options.int8.scope, method=options.int8.method)
                log.info(f"int8 layers: {', '.join(quantization.quantized_ops)}")
        openvino_info = None
        model_file = ONNX_FILE
        if openvino:
            from engines import openvino_ir

            with log.step("converting to OpenVINO IR (FP32 weights)" if not int8
                          else "converting the INT8 graph to OpenVINO IR"):
                openvino_info = openvino_ir.convert_to_ir(graph, options.out / IR_FILE)
                model_file = IR_FILE
            if not int8:
                with log.step("self-check: OpenVINO IR vs PyTorch on one input" if verify
                              else f"OpenVINO self-check skipped ({why_not})"):
                    if verify:
                        report = export_onnx.verify_against_eager(
                            model, module, options.out / IR_FILE, spec,
                            runner=lambda path, feeds: openvino_ir.run_openvino(path, feeds,
                                                                                export_onnx.OUTPUT_NAMES))
                        log.info(report.summary())
        tensorrt_info = None
        if tensorrt_build is not None:
            with log.step("building the TensorRT engine"):
                tensorrt_info = _build_engine(tensorrt_build, onnx_path, options.out / ENGINE_FILE, spec, log)
                model_file = ENGINE_FILE
        elif options.target == "tensorrt":
            log.info("tensorrt is not importable here: wrote the TensorRT-variant ONNX only; the engine is built on "
                     "the target machine (the daemon rebuilds it from the shipped ONNX)")
        metadata = describe_artifact(model, payload, options, spec, onnx_path, model_file, module.with_template,
                                     tensorrt_info, openvino_info, quantization)
        if int8:
            assert options.int8 is not None and splits is not None
            with log.step(f"accuracy on the validation side ({', '.join(splits.val_groups) or 'data.val'}): "
                          "this INT8 artifact vs its FP32 graph"):
                metadata = metadata.model_copy(update={"accuracy": _int8_accuracy(
                    metadata, options, splits, onnx_path, work, log)})
        with log.step("writing metadata.json"):
            metadata.save(options.out)
        if options.sign_key is not None:
            from engines.signing import sign_artifact

            with log.step(f"signing the artifact with {options.sign_key}"):
                sign_artifact(options.out, options.sign_key)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.finish(f"artifact ready in {options.out}")
    return metadata


METADATA_NAME = "metadata.json"


def _int8_accuracy(metadata: ArtifactMetadata, options: CompileOptions, splits: Any, fp32_onnx: Path,
                   work: Path, log: StepLog) -> Accuracy:
    """mAP@0.5 of the INT8 artifact and of its own FP32 graph (same runtime, same frames) on the validation
    side; raises RuntimeError when the loss exceeds ``--max-map-loss`` (nothing is then written)."""
    from training.engine.evaluate import evaluate_artifact

    assert options.int8 is not None
    backend = metadata.target
    metadata.save(options.out)  # the backend reads the artifact as the daemon will; removed again on failure
    try:
        quantized = evaluate_artifact(options.out, splits.val, backend=backend)
    finally:
        (options.out / METADATA_NAME).unlink(missing_ok=True)
    reference_dir = work / "fp32"
    reference_dir.mkdir()
    shutil.copy2(fp32_onnx, reference_dir / ONNX_FILE)
    metadata.model_copy(update={"target": "onnxruntime", "precision": "fp32", "model_file": ONNX_FILE,
                                "onnx_file": ONNX_FILE, "model_sha256": sha256_file(fp32_onnx), "openvino": None,
                                "quantization": None}).save(reference_dir)
    reference = evaluate_artifact(reference_dir, splits.val, backend=backend)
    loss = 100.0 * (reference["map50"] - quantized["map50"])
    log.info(f"mAP@0.5 on {quantized['images']} validation images ({backend}): INT8 {100 * quantized['map50']:.2f}, "
             f"FP32 graph {100 * reference['map50']:.2f}, loss {loss:+.2f} points "
             f"(limit {options.int8.max_map_loss:.2f})")
    if loss > options.int8.max_map_loss:
        raise RuntimeError(f"the INT8 artifact loses {loss:.2f} mAP@0.5 points on the validation side (limit "
                           f"--max-map-loss {options.int8.max_map_loss}); not written. Try a narrower --int8-scope, "
                           "more --calibration-count or another --calibration-method")
    source = f"{splits.source} validation side" + (f" (groups {' '.join(splits.val_groups)})"
                                                    if splits.val_groups else "")
    return Accuracy(dataset=source, images=int(quantized["images"]), map50=float(quantized["map50"]),
                    reference_map50=float(reference["map50"]), runtime=backend,
                    measured=datetime.now(timezone.utc).isoformat(timespec="seconds"))


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
                      tensorrt_info: TensorRTInfo | None, openvino_info: OpenVINOInfo | None = None,
                      quantization: Quantization | None = None) -> ArtifactMetadata:
    """The artifact's metadata. ``needs_template`` is True whenever the graph has a ``template`` input (a
    template-reference network, or TR-Post compiled in), so a backend checking that one flag feeds it.
    ``model_sha256`` is the hash of the file that ships (engine, INT8 graph, IR .xml)."""
    cfg = model.config
    model_path = options.out / model_file
    return ArtifactMetadata(
        target=options.target,
        precision=options.precision,
        model_file=model_file,
        onnx_file=ONNX_FILE if (options.out / ONNX_FILE).is_file() and options.target != "openvino" else None,
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
        openvino=openvino_info,
        quantization=quantization,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _exporter_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions: dict[str, str] = {}
    for dist in ("torch", "torchvision", "onnx", "onnxscript", "onnxruntime", "openvino", "tensorrt"):
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
