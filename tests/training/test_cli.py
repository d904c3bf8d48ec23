"""``rddn`` smoke: train two iterations, resume to three, evaluate: report.json with the promised keys."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from training.cli import main
from training.engine.checkpoint import load_checkpoint, load_model_from_checkpoint

REPORT_KEYS = ("map50", "coco_map", "deeppcb_map", "deeppcb_fscore", "per_class", "images", "seconds")


def test_train_resume_eval(tiny_config, tmp_path: Path, capsys) -> None:
    raw = tiny_config("cli")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw))
    run = Path(raw["output_dir"])

    assert main(["train", "--config", str(config), "--set", "max_iters=3", "--stop-at", "2"]) == 0
    assert load_checkpoint(run / "last.pt")["iteration"] == 2
    assert main(["train", "--config", str(config), "--set", "max_iters=3"]) == 2  # exists, no --resume
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--config", str(config), "--set", "max_iters=3", "--resume"]) == 0
    ck = load_checkpoint(run / "last.pt")
    assert ck["iteration"] == 3 and ck["class_names"] == raw["model"]["class_names"]
    assert not load_model_from_checkpoint(run / "last.pt").training

    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--data", str(config), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert all(k in report for k in REPORT_KEYS)
    assert report["images"] == raw["data"]["train"]["synthetic_val_samples"]
    assert set(report["per_class"]) == set(raw["model"]["class_names"])
    assert (out / "pr_curves.png").stat().st_size > 0
    assert "map50=" in capsys.readouterr().out
    assert report["tr_post"] is False

    # TR-Post needs a model without a template input: on this TR-Pre model it is refused with the reason
    out_post = tmp_path / "eval_tr_post"
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--data", str(config), "--tr-post", "--out", str(out_post)]) == 2
    assert "T - T" in capsys.readouterr().err and not (out_post / "report.json").exists()


def test_bad_inputs_give_one_clear_line(tmp_path: Path, capsys) -> None:
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.pt"), "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "rddn eval: error" in err and "missing.pt" in err and "Traceback" not in err
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_compile_without_the_compiler_exits_2_with_a_reason(monkeypatch, capsys) -> None:
    import sys

    import engines

    monkeypatch.setitem(sys.modules, "engines.compile", None)  # makes "from engines import compile" fail
    monkeypatch.delattr(engines, "compile", raising=False)  # ... also when an earlier test imported it
    assert main(["compile"]) == 2
    assert "rddn compile is unavailable" in capsys.readouterr().err


def test_compile_delegates_to_engines_compile(monkeypatch) -> None:
    import sys
    import types

    calls = []
    fake = types.ModuleType("engines.compile")
    fake.add_arguments = lambda parser: parser.add_argument("--checkpoint")
    fake.run = lambda args: calls.append(args.checkpoint) or 0
    monkeypatch.setitem(sys.modules, "engines.compile", fake)
    import engines

    monkeypatch.setattr(engines, "compile", fake, raising=False)
    assert main(["compile", "--checkpoint", "x.pt"]) == 0
    assert calls == ["x.pt"]


def test_eval_on_a_deeppcb_root_holds_out_groups_at_the_trained_size(tiny_config, tmp_path: Path) -> None:
    import cv2

    from training.data.synthetic import SyntheticSpec, write_deeppcb_layout

    raw = tiny_config("pcb", max_iters=1)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["train", "--config", str(config)]) == 0
    root = tmp_path / "deeppcb_like"
    write_deeppcb_layout(root, 4, SyntheticSpec(height=96, width=96, defect_size=(6, 20), normal_fraction=0.0), group_size=2)
    out = tmp_path / "eval_pcb"
    code = main(["eval", "--checkpoint", str(Path(raw["output_dir"]) / "last.pt"), "--data", str(root),
                 "--list-file", "trainval.txt", "--val-groups", "00002", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["images"] == 2  # only group00002's pairs
    assert (report["data"]["test_short_size"], report["data"]["test_max_size"]) == (64, 64)  # the checkpoint's, not 800
    examples = sorted((out / "examples").glob("*.png"))
    assert examples and cv2.imread(str(examples[0])).shape[:2] == (96, 96)  # drawn on the frame as it was read
