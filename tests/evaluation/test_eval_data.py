"""``rddn eval --data``: a dataset root, a data config or a training config (with its ``base:`` chain)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from training.engine.evaluate import resolve_eval_data

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"


def test_training_config_with_a_base_gives_its_held_out_side() -> None:
    """deeppcb_cpu_tr_inter_cr.yaml states only its reference; data, sizes and held-out groups come from its base."""
    cfg = resolve_eval_data(CONFIGS / "deeppcb_cpu_tr_inter_cr.yaml")
    assert cfg.format == "deeppcb" and cfg.val_groups == ("92000", "44000")
    assert (cfg.test_short_size, cfg.test_max_size) == (384, 384)
    assert cfg.side(train=False) == "val"


def test_data_config_yaml_and_dataset_root(tmp_path: Path) -> None:
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({"format": "synthetic", "synthetic_val_samples": 3}))
    assert resolve_eval_data(data_yaml).synthetic_val_samples == 3
    root = resolve_eval_data(tmp_path, val_groups=["20085"], sizes={"test_short_size": 640, "test_max_size": 640})
    assert (root.format, root.split, root.val_groups, root.test_short_size) == ("deeppcb", "val", ("20085",), 640)


def test_bad_data_yaml_is_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(ValueError, match="broken.yaml: not valid YAML"):
        resolve_eval_data(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="--data YAML"):
        resolve_eval_data(listing)
    with pytest.raises(FileNotFoundError, match="neither a dataset directory nor a YAML file"):
        resolve_eval_data(tmp_path / "missing.yaml")


def test_tr_post_evaluation_of_a_model_without_a_template_input() -> None:
    """``rddn eval --tr-post`` on a baseline model: the report says so and the scores are the rescored ones."""
    import torch

    from training.data import DataConfig
    from training.engine.evaluate import evaluate_model
    from training.model import build_model
    from training.model.config import ModelConfig

    torch.manual_seed(0)
    model = build_model(ModelConfig.model_validate({
        "class_names": ["spot", "scratch", "hole", "open", "short"],
        "backbone": {"depth": 18, "width": 16, "norm": "gn", "frozen_stages": 0}, "fpn": {"out_channels": 16},
        "rpn": {"pre_nms_top_n_test": 100, "post_nms_top_n_test": 30}, "roi_head": {"representation_size": 32},
    }))
    data = DataConfig(format="synthetic", synthetic={"height": 96, "width": 96, "defect_size": (8, 24)},
                      synthetic_val_samples=2, test_short_size=96, test_max_size=96)
    plain = evaluate_model(model, data)
    rescored = evaluate_model(model, data, tr_post=True)
    assert (plain["tr_post"], rescored["tr_post"]) == (False, True)
    assert plain["num_pred"] > 0
    assert (rescored["num_pred"], rescored["map50"]) != (plain["num_pred"], plain["map50"])  # TR-Post did rescore
