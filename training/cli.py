"""``rddn``: train, evaluate and compile RDDN models.

    rddn train --config training/configs/deeppcb_cpu_tr_pre_cr.yaml [--resume] [--set key.path=value ...]
    rddn eval --checkpoint runs/x/last.pt --data /path/to/deeppcb_root [--list-file F] [--tr-post] --out DIR
    rddn eval --artifact artifacts/x [--backend onnxruntime] --data ... --out DIR   (as the daemon runs it)
    rddn compile ...            (ONNX / ONNX Runtime / TensorRT artifacts; see ``rddn compile --help``)

Multi-process training: ``torchrun --nproc_per_node N -m training.cli train --config ...`` (NCCL on GPU, gloo on
CPU). ``--set`` combines the paper's variants without a YAML per combination, e.g.
``--set model.reference.feature=ptg --set model.reference.input=mean_std --set model.context.enabled=true``.

Heavy imports (torch, the model, the compiler) happen inside the subcommands, so ``rddn --help`` is instant
and a broken optional part (the compiler) cannot stop training.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

EXIT_USAGE = 2


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from a YAML config", description="Train RDDN from a YAML config.")
    p.add_argument("--config", required=True, type=Path, help="training YAML (see training/configs/)")
    p.add_argument("--resume", action="store_true", help="continue output_dir/last.pt exactly where it stopped")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, dotted (repeatable): --set model.reference.feature=ptg")
    p.add_argument("--stop-at", type=int, default=None, metavar="ITER",
                   help="stop (and checkpoint) after this many iterations, as an interruption would")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint or a compiled artifact on a dataset",
                       description="Evaluate a checkpoint, or a compiled artifact as the daemon runs it: mAP@0.5, "
                                   "COCO mAP, DeepPCB mAP/F-score, defect recall at 0.1 and 1 false call per "
                                   "image, the class confusion, PR curves.")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", type=Path, help="an rddn training checkpoint (torch)")
    model.add_argument("--artifact", type=Path,
                       help="an artifact directory from rddn compile, run by the daemon's backend (--backend)")
    p.add_argument("--backend", default=None,
                   help="with --artifact: the daemon backend that runs it (default: the artifact's target)")
    p.add_argument("--data", required=True,
                   help="a dataset YAML (a data config, or a training config: its data.val), or a DeepPCB-format root")
    p.add_argument("--list-file", default=None, help="DeepPCB list file (trainval.txt format) inside/for --data")
    p.add_argument("--val-groups", nargs="*", default=None,
                   help="DeepPCB root: evaluate only these board groups (e.g. 92000 44000)")
    p.add_argument("--split", choices=("val", "train"), default="val", help="which split of a training config")
    p.add_argument("--tr-post", action="store_true",
                   help="--checkpoint: rescore with TR-Post (needs templates; a model without a template input)")
    p.add_argument("--out", required=True, type=Path, help="report directory (report.json, table, PR curves)")
    p.add_argument("--test-size", type=int, default=None,
                   help="--checkpoint on a dataset root: test short/long edge (default: what it was trained for)")
    p.add_argument("--device", default="cpu", help="--checkpoint: cpu (default) or cuda")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--examples", type=int, default=4, help="annotated example images to write")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch, or the artifact's runtime)")


def _add_compile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compile", help="compile a checkpoint into a deployable artifact (ONNX Runtime / TensorRT)")
    try:
        from engines import compile as engine_compile
    except Exception as exc:  # the compiler is optional for training; say why it is unavailable
        p.set_defaults(compile_import_error=f"{type(exc).__name__}: {exc}")
        return
    engine_compile.add_arguments(p)
    p.set_defaults(compile_run=engine_compile.run)


def build_parser(with_compile: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rddn", description="Train, evaluate and compile RDDN defect detectors.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,eval,compile}")
    _add_train(sub)
    _add_eval(sub)
    if with_compile:
        _add_compile(sub)
    else:
        sub.add_parser("compile", help="compile a checkpoint into a deployable artifact", add_help=False)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from training.engine.config import load_train_config
    from training.engine.launch import run_training

    cfg = load_train_config(args.config, args.overrides)
    state = run_training(cfg, resume=args.resume, stop_at=args.stop_at)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        logging.getLogger("rddn").info(
            "training stopped (%s) at epoch %d, iteration %d; checkpoint %s",
            state.stop_reason, state.epoch, state.iteration, Path(cfg.output_dir) / "last.pt",
        )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from training.engine.evaluate import evaluate_artifact, evaluate_checkpoint, resolve_eval_data, trained_test_sizes

    if args.artifact is not None:
        for flag, given in (("--tr-post", args.tr_post), ("--test-size", args.test_size is not None),
                            ("--device", args.device != "cpu"), ("--batch-size", args.batch_size != 1)):
            if given:
                raise ValueError(f"{flag} is for --checkpoint; an artifact runs as compiled (see its metadata.json)")
        data_cfg = resolve_eval_data(args.data, list_file=args.list_file, val_groups=args.val_groups, split=args.split)
        result = evaluate_artifact(args.artifact, data_cfg, args.out, backend=args.backend, workers=args.workers,
                                   num_examples=args.examples, threads=args.threads)
    else:
        sizes = trained_test_sizes(args.checkpoint)
        if args.test_size:
            sizes.update(test_short_size=args.test_size, test_max_size=args.test_size)
        data_cfg = resolve_eval_data(args.data, list_file=args.list_file, val_groups=args.val_groups,
                                     split=args.split, sizes=sizes)
        result = evaluate_checkpoint(
            args.checkpoint, data_cfg, args.out, tr_post=args.tr_post, device=args.device,
            batch_size=args.batch_size, workers=args.workers, num_examples=args.examples, threads=args.threads,
        )
    recall = result["defect_recall"]["at_false_calls_per_image"]
    print(
        f"images={result['images']} map50={result['map50']:.4f} coco_map={result['coco_map']:.4f} "
        f"deeppcb_map={result['deeppcb_map']:.4f} deeppcb_fscore={result['deeppcb_fscore']:.4f} "
        f"recall@0.1fpi={recall['0.1']['recall']:.4f} recall@1fpi={recall['1']['recall']:.4f} "
        f"seconds={result['seconds']:.1f} -> {args.out}"
    )
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    error = getattr(args, "compile_import_error", None)
    run = getattr(args, "compile_run", None)
    if error or run is None:
        print(f"rddn compile is unavailable: importing engines.compile failed ({error}). "
              "Install the export extras or check the engines package.", file=sys.stderr)
        return EXIT_USAGE
    return int(run(args))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Only import the compiler when its subcommand is asked for: training must not depend on it.
    parser = build_parser(with_compile="compile" in argv[:2])
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handlers = {"train": cmd_train, "eval": cmd_eval, "compile": cmd_compile}
    try:
        return handlers[args.command](args)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        # Bad input (config, data, checkpoint): one clear line naming the file/key, no traceback (-v shows it).
        if args.verbose:
            raise
        print(f"rddn {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
