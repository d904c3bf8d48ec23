"""The equal-budget DeepPCB comparison on CPU: baseline / TR-Pre / TR-Inter / TR-Fuse, each with CR.

Trains the four ``training/configs/deeppcb_cpu_*_cr.yaml`` one after the other (same budget, same seed, same
held-out board groups), evaluates each checkpoint with ``rddn eval`` on the held-out groups while the next one
trains (evaluation does not count against the next run's CPU-time budget), and writes a Markdown table.

    .venv/bin/python benchmarks/train_deeppcb_cpu.py [--variants baseline tr_pre ...] [--set key=value ...]
        [--out benchmarks/results/deeppcb_cpu.md]

Prints one line per finished variant and the final table. Runs go to runs/deeppcb_cpu_<variant>_cr/.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("baseline", "tr_pre", "tr_inter", "tr_fuse")
LABELS = {"baseline": "baseline (no reference) + CR", "tr_pre": "TR-Pre + CR", "tr_inter": "TR-Inter + CR",
          "tr_fuse": "TR-Fuse + CR"}


def config_path(variant: str) -> Path:
    return ROOT / "training" / "configs" / f"deeppcb_cpu_{variant}_cr.yaml"


def run_dir(variant: str) -> Path:
    return ROOT / "runs" / f"deeppcb_cpu_{variant}_cr"


def rddn(*args: str, log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", "training.cli", *args], cwd=ROOT, env=env, stdout=handle,
                            stderr=subprocess.STDOUT)


def train(variant: str, overrides: list[str]) -> dict:
    sets = [a for o in overrides for a in ("--set", o)]
    resume = ["--resume"] if (run_dir(variant) / "last.pt").is_file() else []
    start = time.monotonic()
    proc = rddn("train", "--config", str(config_path(variant)), *resume, *sets, log=run_dir(variant).with_suffix(".train.log"))
    if proc.wait() != 0:
        raise SystemExit(f"training {variant} failed; see {run_dir(variant).with_suffix('.train.log')}")
    stop = [json.loads(line) for line in (run_dir(variant) / "metrics.jsonl").read_text().splitlines() if '"stop"' in line][-1]
    return {"wall_seconds": time.monotonic() - start, "iterations": stop["iteration"], "cpu_seconds": stop["seconds"],
            "stop_reason": stop["reason"]}


def evaluate(variant: str, data_root: str, val_groups: list[str]) -> subprocess.Popen:
    return rddn("eval", "--checkpoint", str(run_dir(variant) / "last.pt"), "--data", data_root, "--val-groups",
                *val_groups, "--out", str(run_dir(variant) / "eval"), "--threads", "1",
                log=run_dir(variant).with_suffix(".eval.log"))


def table(rows: dict[str, dict]) -> str:
    lines = [
        "| variant | iterations | CPU s (budget clock) | train wall s | mAP@0.5 | DeepPCB mAP (IoU>0.33) | DeepPCB F-score | COCO mAP | eval s (161 img) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant, r in rows.items():
        e = r.get("eval", {})
        fmt = lambda k: f"{100 * e[k]:.1f}" if isinstance(e.get(k), (int, float)) else "-"  # noqa: E731
        lines.append(
            f"| {LABELS[variant]} | {r['iterations']} | {r['cpu_seconds']:.0f} | {r['wall_seconds']:.0f} | "
            f"{fmt('map50')} | {fmt('deeppcb_map')} | {fmt('deeppcb_fscore')} | {fmt('coco_map')} | "
            f"{e.get('seconds', float('nan')):.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--data-root", default="../shared/datasets/deeppcb")
    parser.add_argument("--val-groups", nargs="+", default=["92000", "44000"])
    args = parser.parse_args()
    rows: dict[str, dict] = {}
    pending: list[tuple[str, subprocess.Popen]] = []
    for variant in args.variants:
        rows[variant] = train(variant, args.overrides)
        print(f"{variant}: trained {rows[variant]}", flush=True)
        pending.append((variant, evaluate(variant, args.data_root, args.val_groups)))
    for variant, proc in pending:
        if proc.wait() != 0:
            print(f"{variant}: evaluation failed; see {run_dir(variant).with_suffix('.eval.log')}", flush=True)
            continue
        rows[variant]["eval"] = json.loads((run_dir(variant) / "eval" / "report.json").read_text())
    (ROOT / "runs" / "deeppcb_cpu_summary.json").write_text(json.dumps(rows, indent=2, default=str))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
