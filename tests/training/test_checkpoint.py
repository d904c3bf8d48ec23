"""Checkpoint contract 2: keys, weights_only loading, atomic replace, clear errors, RNG round trip."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from training.engine.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from training.engine.rng import capture_rng_state, restore_rng_state
from training.model.config import ModelConfig


class TinyDetectorStandIn(nn.Module):
    """A real small module carrying a ModelConfig, as RDDN does (the checkpoint only needs that much)."""

    def __init__(self) -> None:
        super().__init__()
        self.config = ModelConfig(class_names=("spot", "scratch"))
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.BatchNorm2d(4)


def test_save_then_load_weights_only(tmp_path: Path) -> None:
    model = TinyDetectorStandIn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.conv.weight.sum().backward()
    opt.step()
    path = save_checkpoint(
        tmp_path / "run" / "last.pt", model, epoch=3, iteration=42, optimizer=opt,
        scheduler={"base_lr": 0.01}, train_config={"seed": 1}, metrics={"map50": 0.5},
        rng_state={"per_rank": [capture_rng_state()]},
    )
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == CHECKPOINT_FORMAT and raw["version"] == 1
    assert raw["class_names"] == ["spot", "scratch"]
    assert raw["epoch"] == 3 and raw["iteration"] == 42
    assert ModelConfig.model_validate(raw["model_config"]) == model.config
    assert torch.equal(raw["model"]["conv.weight"], model.conv.weight)
    assert "momentum_buffer" in raw["optimizer"]["state"][0]
    assert load_checkpoint(path)["metrics"] == {"map50": 0.5}
    assert not list(path.parent.glob("*.tmp")), "the temp file must be renamed away"


def test_missing_and_foreign_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="foreign.pt is not an rddn checkpoint"):
        load_checkpoint(foreign)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read checkpoint .*garbage.pt"):
        load_checkpoint(garbage)


def test_rng_state_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    path = save_checkpoint(tmp_path / "c.pt", TinyDetectorStandIn(), rng_state={"per_rank": [capture_rng_state()]})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(load_checkpoint(path)["rng_state"]["per_rank"][0])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]


def test_strip_checkpoint_keeps_weights_and_drops_resume_state(tmp_path: Path) -> None:
    from training.engine.checkpoint import strip_checkpoint

    model = TinyDetectorStandIn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.conv.weight.sum().backward()
    opt.step()
    full = save_checkpoint(tmp_path / "last.pt", model, optimizer=opt, iteration=5,
                           rng_state={"per_rank": [capture_rng_state()]}, trainer_state={"elapsed_seconds": 1.0})
    slim = strip_checkpoint(full, tmp_path / "model.pt")
    payload = load_checkpoint(slim)
    assert payload["optimizer"] is None and "rng_state" not in payload and "trainer_state" not in payload
    assert payload["iteration"] == 5
    assert torch.equal(payload["model"]["conv.weight"], model.conv.weight)
    assert slim.stat().st_size < full.stat().st_size
