"""Template reference formulas: TR-Pre (eq. 7), TR-Inter (eq. 9), TR-Fuse, PTG (eq. 13/14)."""
from __future__ import annotations

import pytest
import torch

from training.model.backbone import ResNetBackbone
from training.model.config import BackboneConfig, IMAGENET_MEAN, IMAGENET_STD
from training.model.references import (
    PseudoTemplateGenerator,
    StageGenerator,
    TemplateFusion,
    normalize,
    ptg_loss,
    tr_pre,
)


def test_tr_pre_is_difference_over_twice_std() -> None:
    image = torch.full((1, 3, 2, 2), 200.0)
    template = torch.full((1, 3, 2, 2), 100.0)
    template[0, :, 0, 0] = 250.0
    out = tr_pre(image, template, (10.0, 20.0, 50.0))
    assert torch.allclose(out[0, :, 1, 1], torch.tensor([100 / 20, 100 / 40, 100 / 100]))
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([-50 / 20, -50 / 40, -50 / 100]))
    # identical image and template -> exactly zero input, whatever the std
    assert torch.equal(tr_pre(image, image, IMAGENET_STD), torch.zeros_like(image))


def test_tr_pre_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        tr_pre(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 8), IMAGENET_STD)


def test_normalize_is_mean_std() -> None:
    image = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) + torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(normalize(image, IMAGENET_MEAN, IMAGENET_STD), torch.ones(1, 3, 1, 1))


def test_tr_inter_gives_exact_zero_for_identical_image_and_template() -> None:
    backbone = ResNetBackbone(BackboneConfig(depth=18, width=16, norm="gn", frozen_stages=0)).eval()
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        features = backbone(image)
        diffs = TemplateFusion("tr_inter", backbone.out_channels)(features, backbone(image.clone()))
    assert [d.shape for d in diffs] == [f.shape for f in features]
    assert all(torch.count_nonzero(d) == 0 for d in diffs)
    assert any(torch.count_nonzero(f) > 0 for f in features)


def test_tr_inter_is_plain_difference() -> None:
    image = [torch.rand(2, 8, 4, 4), torch.rand(2, 16, 2, 2)]
    reference = [torch.rand(2, 8, 4, 4), torch.rand(2, 16, 2, 2)]
    inter = TemplateFusion("tr_inter", [8, 16])(image, reference)
    assert all(torch.equal(d, i - r) for d, i, r in zip(inter, image, reference))
    with pytest.raises(ValueError, match="tr_inter or tr_fuse"):
        TemplateFusion("ptg", [8])  # type: ignore[arg-type]


@pytest.mark.parametrize("height, width", [(16, 16), (7, 7), (5, 9), (1, 3), (3, 1), (13, 6)])
def test_ptg_generator_keeps_shape_for_even_and_odd_sizes(height: int, width: int) -> None:
    generator = StageGenerator(channels=6, hidden=8)
    out = generator(torch.rand(2, 6, height, width))
    assert out.shape == (2, 6, height, width)


def test_ptg_generator_architecture_matches_paper() -> None:
    layers = list(StageGenerator(channels=6, hidden=256))
    convs = [m for m in layers if type(m) is torch.nn.Conv2d]
    deconvs = [m for m in layers if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [c.stride[0] for c in convs] == [1, 2, 2]
    assert [d.stride[0] for d in deconvs] == [2, 2, 1]
    assert all(c.out_channels == 256 for c in convs) and deconvs[-1].out_channels == 6
    relus = sum(isinstance(m, torch.nn.ReLU) for m in layers)
    assert relus == 5 and isinstance(layers[-1], torch.nn.ConvTranspose2d)  # no ReLU after the last deconv


def _ptg_inputs(defective: torch.Tensor) -> tuple[PseudoTemplateGenerator, list[torch.Tensor]]:
    torch.manual_seed(1)
    ptg = PseudoTemplateGenerator([4, 8], hidden=8)
    normal = [torch.rand(1, 4, 8, 8), torch.rand(1, 8, 4, 4)]
    defect = [defective[:, :4], defective[:, 4:, :4, :4]]
    return ptg, [torch.cat((n, d)) for n, d in zip(normal, defect)]


def test_ptg_loss_ignores_defective_samples() -> None:
    is_normal = torch.tensor([True, False])
    results = []
    for seed in (0, 1):
        torch.manual_seed(100 + seed)
        ptg, features = _ptg_inputs(torch.rand(1, 12, 8, 8) * (1 + 10 * seed))
        loss = ptg_loss(features, ptg(features), is_normal)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in ptg.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.allclose(loss_a, loss_b)
    assert all(torch.allclose(a, b) for a, b in zip(grads_a, grads_b))
    assert loss_a > 0


def test_ptg_loss_is_per_stage_mse_summed() -> None:
    features = [torch.ones(2, 2, 2, 2), torch.ones(2, 3, 1, 1)]
    generated = [torch.zeros(2, 2, 2, 2), torch.full((2, 3, 1, 1), 3.0)]
    # normal sample 0: stage MSEs 1 and 4 -> 5; sample 1 (defective) would give the same, but is ignored
    assert torch.isclose(ptg_loss(features, generated, torch.tensor([True, False])), torch.tensor(5.0))


def test_ptg_loss_is_zero_but_differentiable_without_normal_samples() -> None:
    ptg = PseudoTemplateGenerator([4], hidden=8)
    features = [torch.rand(2, 4, 6, 6)]
    loss = ptg_loss(features, ptg(features), torch.tensor([False, False]))
    assert loss.item() == 0.0
    loss.backward()
    assert all(p.grad is not None and torch.count_nonzero(p.grad) == 0 for p in ptg.parameters())


def test_ptg_loss_gradient_reaches_the_features_through_target_and_generator() -> None:
    """Eq. (13) trained end to end (paper Sec. IV-B): nothing detached. With G(C) = C / 2 the loss of the normal
    sample is mean((C/2 - C)^2) = mean(C^2) / 4, so dL/dC = C / (2 n) (n = elements of one sample). Detaching the
    target C would leave only the path through G: 2 (C/2 - C) / 2 / n = -C / (2 n), the opposite sign."""
    torch.manual_seed(0)
    features = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = ptg_loss([features], [features * 0.5], torch.tensor([True, False]))
    loss.backward()
    n = 3 * 4 * 4
    assert torch.allclose(features.grad[0], features.detach()[0] / (2 * n), atol=1e-7)
    assert torch.count_nonzero(features.grad[1]) == 0  # the defective sample contributes nothing


def test_ptg_loss_rejects_wrong_mask_length() -> None:
    with pytest.raises(ValueError, match="is_normal has 3 entries"):
        ptg_loss([torch.rand(2, 1, 2, 2)], [torch.rand(2, 1, 2, 2)], torch.tensor([True, False, True]))
