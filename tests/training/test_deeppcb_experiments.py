"""The DeepPCB study's experiments file stays runnable: every experiment builds a valid training config."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from training.engine.config import load_train_config

ROOT = Path(__file__).resolve().parents[2]


def _runner():
    spec = importlib.util.spec_from_file_location("train_deeppcb_cpu", ROOT / "benchmarks" / "train_deeppcb_cpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def test_every_experiment_is_a_valid_training_config() -> None:
    runner = _runner()
    defaults, experiments = runner.load_experiments()
    assert experiments
    for name, spec in experiments.items():
        train_argv, eval_argv = runner.commands(name, defaults, spec)
        sets = [train_argv[i + 1] for i, a in enumerate(train_argv) if a == "--set"]
        cfg = load_train_config(ROOT / spec["config"], sets)
        assert cfg.name == name and Path(cfg.output_dir) == Path("runs/deeppcb") / name
        assert cfg.time_budget_clock == "process" and cfg.time_budget_minutes, f"{name}: not on a CPU budget"
        assert eval_argv[eval_argv.index("--val-groups") + 1:][:2] == ["92000", "44000"]
        for key, value in spec.get("set", {}).items():  # every override reached the config it names
            node = cfg.model_dump()
            for part in key.split("."):
                node = node[part]
            assert _plain(node) == _plain(value), f"{name}: {key} = {node!r}, expected {value!r}"
