"""TR-Post, eq. (10)-(11): score * (1 - cos(F_I, F_T)), cos clamped to [0, 1]; usable on any model."""
from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

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


def _spy_tr_post(monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Record (scores, F_I, F_T) of every TR-Post call inside the RoI heads."""
    from training.model import roi_heads

    calls = []
    original = roi_heads.tr_post_scores

    def spy(scores, image_features, template_features):
        calls.append((scores.clone(), image_features.clone(), template_features.clone()))
        return original(scores, image_features, template_features)

    monkeypatch.setattr(roi_heads, "tr_post_scores", spy)
    return calls


@pytest.mark.parametrize("reference", [{}, {"feature": "ptg"}], ids=["baseline", "ptg"])
def test_template_region_features_come_from_the_template_at_the_images_rois(tiny_config, monkeypatch, reference) -> None:
    """F_T is the template pushed through the image's own path and pooled at the image's RoIs: it equals F_I when
    the template is the image, varies from RoI to RoI, and changes with the template."""
    model = build_model(tiny_config(reference=reference)).eval()
    calls = _spy_tr_post(monkeypatch)
    torch.manual_seed(1)
    image = torch.rand(1, 3, 64, 64) * 255
    template_a = torch.rand(1, 3, 64, 64) * 255
    template_b = (image * 0.5 + 60.0).round()
    with torch.no_grad():
        for template in (image.clone(), template_a, template_b):
            model(image, templates=template, tr_post=True)
    (_, f_i_same, f_t_same), (_, f_i_a, f_t_a), (_, f_i_b, f_t_b) = calls
    assert torch.equal(f_t_same, f_i_same)
    assert torch.equal(f_i_a, f_i_same) and torch.equal(f_i_b, f_i_same)  # F_I does not depend on the template
    assert f_t_a.shape == f_i_a.shape and f_t_a.shape[0] > 1
    assert float(f_t_a.std(dim=0).max()) > 1e-3  # not one constant vector for every RoI
    assert not torch.allclose(f_t_a, f_i_a, atol=1e-4)
    assert not torch.allclose(f_t_a, f_t_b, atol=1e-4)


def test_tr_post_rescoring_on_model_trained_without_templates(tiny_config, monkeypatch) -> None:
    """A plain mean/std model: template == image suppresses everything (cos = 1); another template keeps the
    detections, each at p * (1 - cos(F_I, F_T)) of its unrescored score."""
    model = build_model(tiny_config(roi_head={"score_thresh": 0.0})).eval()
    calls = _spy_tr_post(monkeypatch)
    images = torch.rand(1, 3, 64, 64) * 255
    template = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        plain = model(images)[0]
        same = model(images, templates=images.clone(), tr_post=True)[0]
        other = model(images, templates=template, tr_post=True)[0]
        not_asked = model(images, templates=template)[0]  # config default tr_post=False
    assert plain["scores"].numel() > 0
    assert bool((same["scores"] < 1e-6).all())  # every score times (1 - 1) = 0, up to rounding of the cosine
    assert other["scores"].numel() > 0
    scores, f_i, f_t = calls[-1]
    rescored = scores[:, 1:] * (1.0 - region_cosine(f_i, f_t)).unsqueeze(1)
    assert float(rescored.max()) > 0.01  # a real template difference: 1 - cos is far from 0
    assert torch.allclose(other["scores"].max(), rescored.max(), atol=1e-6)
    assert float(other["scores"].max()) < float(plain["scores"].max())
    assert torch.equal(not_asked["scores"], plain["scores"])


@pytest.mark.parametrize("reference", [{"input": "tr_pre"}, {"feature": "tr_inter"}, {"feature": "tr_fuse"}])
def test_tr_post_is_rejected_for_models_with_a_template_input(tiny_config, reference) -> None:
    """Their template's own region features would be those of T - T: one constant for every RoI."""
    with pytest.raises(ValidationError, match="T - T"):
        tiny_config(reference={**reference, "tr_post": True})
    model = build_model(tiny_config(reference=reference)).eval()
    images = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad(), pytest.raises(ValueError, match=r"reference.input=.*T - T"):
        model(images, templates=images * 0.5, tr_post=True)
    with torch.no_grad():
        assert len(model(images, templates=images * 0.5, tr_post=False)) == 1


def test_tr_post_config_default_is_skipped_without_template_but_explicit_request_fails(tiny_config) -> None:
    model = build_model(tiny_config(reference={"tr_post": True})).eval()
    images = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        assert model(images)[0]["scores"].numel() > 0
        assert model(images, templates=images.clone())[0]["scores"].numel() == 0
        with pytest.raises(ValueError, match="tr_post=True needs templates"):
            model(images, tr_post=True)
