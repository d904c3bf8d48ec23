"""TrainConfig validation: impossible combinations and typos fail at load time, naming the file and keys."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from training.engine.config import ConfigError, load_train_config, train_config_from_dict

CONFIG_DIR = Path(__file__).resolve().parents[2] / "training" / "configs"


def write(tmp_path: Path, raw: dict, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_model_needing_templates_on_data_without_them_names_both_keys(tiny_config) -> None:
    raw = tiny_config()
    raw["data"]["train"] = {"format": "tianchi_aluminum", "root": "/nonexistent/aluminum"}
    with pytest.raises(ConfigError) as err:
        train_config_from_dict(raw)
    message = str(err.value)
    assert "model.reference" in message and "input=tr_pre" in message
    assert "data.train" in message and "tianchi_aluminum" in message


def test_template_free_model_on_data_without_templates_is_fine(tiny_config) -> None:
    raw = tiny_config()
    raw["model"]["reference"] = {"input": "mean_std", "feature": "ptg"}
    raw["data"]["train"] = {"format": "tianchi_aluminum", "root": "/nonexistent/aluminum"}
    cfg = train_config_from_dict(raw)
    assert cfg.model.reference.feature == "ptg"


def test_ptg_needs_room_for_defect_samples_in_a_batch(tiny_config) -> None:
    raw = tiny_config(batch_size=1)
    raw["model"]["reference"] = {"input": "mean_std", "feature": "ptg"}
    with pytest.raises(ConfigError, match="ptg_normals_per_batch"):
        train_config_from_dict(raw)


def test_unknown_key_names_the_file_and_dotted_key(tiny_config, tmp_path: Path) -> None:
    raw = tiny_config()
    raw["optimizer"]["learning_rate"] = 0.1
    path = write(tmp_path, raw, "typo.yaml")
    with pytest.raises(ConfigError) as err:
        load_train_config(path)
    assert "typo.yaml" in str(err.value) and "optimizer.learning_rate" in str(err.value)


def test_bad_yaml_and_missing_file_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_train_config(bad)
    with pytest.raises(ConfigError, match="not found: .*absent.yaml"):
        load_train_config(tmp_path / "absent.yaml")


def test_set_overrides_and_base_inheritance(tiny_config, tmp_path: Path) -> None:
    write(tmp_path, tiny_config(), "base.yaml")
    (tmp_path / "variant.yaml").write_text("base: base.yaml\nmodel:\n  reference: {input: mean_std, feature: tr_inter}\n")
    cfg = load_train_config(tmp_path / "variant.yaml", ["max_iters=7", "model.context.enabled=false"])
    assert cfg.model.reference.feature == "tr_inter" and cfg.model.reference.input == "mean_std"
    assert cfg.model.backbone.width == 8  # inherited from the base
    assert cfg.max_iters == 7 and cfg.model.context.enabled is False
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_train_config(tmp_path / "variant.yaml", ["max_iters"])


def test_paper_schedule_defaults_and_linear_lr_scaling(tiny_config) -> None:
    raw = tiny_config()
    del raw["optimizer"], raw["schedule"]
    cfg = train_config_from_dict(raw)
    assert (cfg.schedule.epochs, cfg.schedule.milestones, cfg.schedule.warmup_iters) == (24, (16, 22), 500)
    assert (cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.9, 1e-4)
    assert cfg.optimizer.scaled_lr(8) == pytest.approx(0.01)
    assert cfg.optimizer.scaled_lr(2) == pytest.approx(0.0025)


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path) -> None:
    cfg = load_train_config(path)
    assert cfg.name == path.stem
    # the paper's configs share the FPN 3x3 conv (Sec. III-B.1); the CPU recipe and the demo model keep one per
    # level, as they were measured and shipped
    assert cfg.model.fpn.shared_output_conv == path.name.startswith("paper_")
