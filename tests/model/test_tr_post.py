"""TR-Post, eq. (10)-(11): score * (1 - cos(F_I, F_T)), cos clamped to [0, 1]; usable on any model."""
from __future__ import annotations

import math

import pytest
import torch

from training.model import build_model
from training.model.tr_post import region_cosine, tr_post_scores


def test_tr_post_formula() -> None:
    scores = torch.tensor([[0.2, 0.8], [0.5, 0.5], [0.9, 0.1], [0.4, 0.6]])
    f_image = torch.tensor([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0], [0.0, 0.0]])
    f_template = torch.tensor([[0.0, 2.0], [2.0, 2.0], [4.0, 3.0], [1.0, 1.0]])
    cos = torch.tensor([0.0, 1.0, 24.0 / 25.0, 0.0])  # orthogonal, parallel, 3-4-5, zero feature
    assert torch.allclose(region_cosine(f_image, f_template), cos)
    assert torch.allclose(tr_post_scores(scores, f_image, f_template), scores * (1 - cos).unsqueeze(1), atol=1e-6)


def test_tr_post_cosine_is_clamped_to_unit_interval() -> None:
    # negative features cannot come out of a ReLU, but a clamp must keep the score in [0, p] anyway
    cos = region_cosine(torch.tensor([[1.0, 0.0]]), torch.tensor([[-1.0, 0.0]]))
    assert cos.item() == 0.0
    torch.manual_seed(0)
    f_i, f_t = torch.relu(torch.randn(50, 16)), torch.relu(torch.randn(50, 16))
    scores = torch.rand(50, 3)
    out = tr_post_scores(scores, f_i, f_t)
    assert bool(((out >= 0) & (out <= scores + 1e-7)).all())
    nonzero = f_i.sum(1) > 0
    assert math.isclose(float(region_cosine(f_i[nonzero], f_i[nonzero]).min()), 1.0, rel_tol=1e-5)


def test_tr_post_on_model_trained_without_templates(tiny_config) -> None:
    """A plain mean/std model: TR-Post with template == image must suppress everything (cos = 1)."""
    model = build_model(tiny_config()).eval()
    images = torch.rand(1, 3, 64, 64) * 255
    template = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        plain = model(images)[0]
        same = model(images, templates=images.clone(), tr_post=True)[0]
        other = model(images, templates=template, tr_post=True)[0]
        not_asked = model(images, templates=template)[0]  # config default tr_post=False
    assert plain["scores"].numel() > 0
    assert same["scores"].numel() == 0  # every score times (1 - 1) = 0 falls below score_thresh
    assert max(other["scores"].tolist(), default=0.0) <= float(plain["scores"].max()) + 1e-6
    assert torch.equal(not_asked["scores"], plain["scores"])


def test_tr_post_config_default_is_skipped_without_template_but_explicit_request_fails(tiny_config) -> None:
    model = build_model(tiny_config(reference={"tr_post": True})).eval()
    images = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        assert model(images)[0]["scores"].numel() > 0
        assert model(images, templates=images.clone())[0]["scores"].numel() == 0
        with pytest.raises(ValueError, match="tr_post=True needs templates"):
            model(images, tr_post=True)
