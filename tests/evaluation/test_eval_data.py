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
