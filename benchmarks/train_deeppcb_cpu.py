"""The DeepPCB recipe study on CPU: named experiments, each trained on an equal process-CPU budget and
evaluated on the held-out board groups.

Every experiment is a training config plus ``--set`` overrides, listed by name in
``benchmarks/deeppcb_experiments.yaml`` (the table of the study: one change per row against its reference).
A run is resumable: a stopped study continues where it was (``rddn train --resume``), a finished run is not
trained again, an evaluated one not evaluated again.

    .venv/bin/python benchmarks/train_deeppcb_cpu.py run NAME [NAME ...] [--parallel 2]
    .venv/bin/python benchmarks/train_deeppcb_cpu.py table NAME [NAME ...]      # Markdown rows from the reports
    .venv/bin/python benchmarks/train_deeppcb_cpu.py list                       # the experiments and their commands

``--parallel 2`` trains two experiments at once, one torch thread each (the default ``threads: 1`` of the
experiments file), so the two arms of a comparison see the same machine load. Runs land in
``runs/deeppcb/<name>/`` (``last.pt``, ``metrics.jsonl``, ``train.log``, ``eval/report.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "benchmarks" / "deeppcb_experiments.yaml"
RUNS = ROOT / "runs" / "deeppcb"
CLASS_ORDER = ("open", "short", "mousebite", "spur", "copper", "pin-hole")


def load_experiments(path: Path = EXPERIMENTS) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    raw = yaml.safe_load(path.read_text())
    return raw.get("defaults", {}), raw["experiments"]


def commands(name: str, defaults: dict[str, Any], spec: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(train argv, eval argv) of one experiment, as ``rddn`` sub-commands."""
    out = RUNS / name
    sets = [f"output_dir={out.relative_to(ROOT)}", f"name={name}"]
    sets += [f"{k}={v}" for k, v in {**defaults.get("set", {}), **spec.get("set", {})}.items()]
    train = ["train", "--config", spec["config"], *[a for s in sets for a in ("--set", s)]]
    evaluate = ["eval", "--checkpoint", str((out / "last.pt").relative_to(ROOT)), "--data", defaults["data"],
                "--val-groups", *defaults["val_groups"], "--out", str((out / "eval").relative_to(ROOT)),
                "--threads", "1", *spec.get("eval_args", [])]
    return train, evaluate


def finished(out: Path) -> bool:
    metrics = out / "metrics.jsonl"
    if not metrics.is_file():
        return False
    stops = [json.loads(line) for line in metrics.read_text().splitlines() if '"type": "stop"' in line]
    return bool(stops) and stops[-1]["reason"] in ("finished", "time_budget")


def rddn(argv: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle:
        return subprocess.Popen([sys.executable, "-m", "training.cli", *argv], cwd=ROOT, env=env, stdout=handle,
                                stderr=subprocess.STDOUT)


class Experiment:
    """One experiment's train-then-evaluate progression, advanced by :meth:`poll`."""

    def __init__(self, name: str, defaults: dict[str, Any], spec: dict[str, Any]) -> None:
        self.name, self.out = name, RUNS / name
        self.train_argv, self.eval_argv = commands(name, defaults, spec)
        self.proc: subprocess.Popen | None = None
        self.stage = "train"

    def poll(self) -> bool:
        """Start or check the current stage; True once the experiment is done (or failed)."""
        if self.proc is not None:
            code = self.proc.poll()
            if code is None:
                return False
            self.proc = None
            if code != 0:
                print(f"{self.name}: {self.stage} failed (exit {code}); see {self.out / (self.stage + '.log')}", flush=True)
                return True
            if self.stage == "train" and not finished(self.out):
                print(f"{self.name}: training stopped before its budget (signal); run again to resume", flush=True)
                return True
            self.stage = "eval" if self.stage == "train" else "done"
        if self.stage == "train" and finished(self.out):
            self.stage = "eval"
        if self.stage == "eval" and (self.out / "eval" / "report.json").is_file():
            self.stage = "done"
        if self.stage == "done":
            print(f"{self.name}: {row(self.name)}", flush=True)
            return True
        if self.stage == "train":
            argv = self.train_argv + (["--resume"] if (self.out / "last.pt").is_file() else [])
        else:
            argv = self.eval_argv
        self.proc = rddn(argv, self.out / f"{self.stage}.log")
        return False


def run(names: list[str], parallel: int) -> int:
    defaults, specs = load_experiments()
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise SystemExit(f"unknown experiments {unknown}; see {EXPERIMENTS}")
    waiting = [Experiment(n, defaults, specs[n]) for n in names]
    active: list[Experiment] = []
    while waiting or active:
        while waiting and len(active) < parallel:
            active.append(waiting.pop(0))
        active = [e for e in active if not e.poll()]
        time.sleep(5)
    return 0


def stop_record(out: Path) -> dict[str, Any]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if '"type": "stop"' in line][-1]


def row(name: str) -> str:
    """One Markdown row: iterations, CPU s, the headline figures and AP50 per class."""
    out = RUNS / name
    if not (out / "eval" / "report.json").exists():
        return f"| {name} | not evaluated yet | | | | | | |"
    stop = stop_record(out)
    report = json.loads((out / "eval" / "report.json").read_text())
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    per_class = " / ".join(pct(report["per_class"][c]["ap50"]) for c in CLASS_ORDER if c in report["per_class"])
    return (f"| {name} | {stop['iteration']} | {stop['seconds']:.0f} | {pct(report['map50'])} | "
            f"{pct(report['deeppcb_map'])} | {pct(report['deeppcb_fscore'])} | {pct(report['coco_map'])} | {per_class} |")


def table(names: list[str]) -> int:
    print("| experiment | iterations | CPU s | mAP@0.5 | DeepPCB mAP | DeepPCB F | COCO mAP | AP50 open / short / mousebite / spur / copper / pin-hole |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name in names:
        print(row(name))
    return 0


def list_experiments() -> int:
    defaults, specs = load_experiments()
    for name, spec in specs.items():
        train, evaluate = commands(name, defaults, spec)
        print(f"{name}: {spec.get('note', '')}\n  rddn {' '.join(train)}\n  rddn {' '.join(evaluate)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="train (resumable) and evaluate experiments")
    p_run.add_argument("names", nargs="+")
    p_run.add_argument("--parallel", type=int, default=1, help="experiments trained at once (one thread each)")
    p_table = sub.add_parser("table", help="Markdown rows of finished experiments")
    p_table.add_argument("names", nargs="+")
    sub.add_parser("list", help="the experiments and their rddn commands")
    args = parser.parse_args()
    if args.cmd == "run":
        return run(args.names, args.parallel)
    if args.cmd == "table":
        return table(args.names)
    return list_experiments()


if __name__ == "__main__":
    sys.exit(main())
