"""RDDN end to end on a TINY config: the MODEL contract (inputs, losses, detections) and its error messages."""
from __future__ import annotations

import pytest
import torch

from training.model import RDDN, build_model

VARIANTS = {
    "baseline": {},
    "tr_pre_cr": {"reference": {"input": "tr_pre"}, "context": {"enabled": True}},
    "tr_inter": {"reference": {"feature": "tr_inter"}},
    "tr_fuse_cr_star": {"reference": {"feature": "tr_fuse"}, "context": {"enabled": True, "mode": "context_only"}},
    "ptg_cascade": {"architecture": "cascade", "reference": {"feature": "ptg"}},
}


def _batch(n: int = 2, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.rand(n, 3, size, size) * 255, torch.rand(n, 3, size, size) * 255


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_train_forward_backward_gives_scalar_losses_and_gradients(tiny_config, targets, name: str) -> None:
    model = build_model(tiny_config(**VARIANTS[name])).train()
    images, templates = _batch()
    losses = model(images, templates, targets)
    assert {"loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    assert ("loss_ptg" in losses) == (name == "ptg_cascade")
    sum(losses.values()).backward()
    head = model.roi_heads.stages[0].box_head.fc6.weight
    assert head.grad is not None and head.grad.abs().sum() > 0
    assert model.backbone.layer4[0].conv1.weight.grad.abs().sum() > 0
    if name == "ptg_cascade":
        assert all(p.grad is not None for p in model.ptg.parameters())


@pytest.mark.parametrize("name", ["baseline", "ptg_cascade", "tr_pre_cr"])
def test_eval_returns_detections_in_contract_format(tiny_config, name: str) -> None:
    model = build_model(tiny_config(**VARIANTS[name])).eval()
    assert isinstance(model, RDDN) and model.config.architecture == VARIANTS[name].get("architecture", "faster")
    images, templates = _batch(n=2, size=96)
    with torch.no_grad():
        out = model(images, templates, image_sizes=[(96, 96), (70, 50)])
    assert len(out) == 2
    for det, (h, w) in zip(out, [(96, 96), (70, 50)]):
        assert set(det) == {"boxes", "scores", "labels"}
        d = det["scores"].shape[0]
        assert 0 < d <= 100 and det["boxes"].shape == (d, 4) and det["labels"].dtype == torch.int64
        assert bool(((det["labels"] >= 1) & (det["labels"] <= 2)).all())
        assert bool((det["scores"] > 0.01).all()) and bool((det["scores"][:-1] >= det["scores"][1:]).all())
        boxes = det["boxes"]
        assert bool((boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all())


def test_detections_on_a_padded_image_stay_inside_its_content(tiny_config) -> None:
    """A 64x64 image zero-padded to 96x96 with image_sizes=(64, 64): no box may reach into the padding."""
    model = build_model(tiny_config(reference={"input": "tr_pre"})).eval()
    image, template = _batch(n=1, size=64)
    padded_i = torch.zeros(1, 3, 96, 96)
    padded_t = torch.zeros(1, 3, 96, 96)
    padded_i[..., :64, :64], padded_t[..., :64, :64] = image, template
    with torch.no_grad():
        det = model(padded_i, padded_t, image_sizes=[(64, 64)])[0]
    assert det["boxes"].shape[0] > 0
    assert bool((det["boxes"][:, 2:] <= 64).all())
    assert float(det["boxes"][:, 2:].max()) > 32  # boxes do spread over the content, just not beyond it


def test_detections_per_image_cap_keeps_the_top_scores(tiny_config) -> None:
    model = build_model(tiny_config(roi_head={"detections_per_img": 5})).eval()
    images = _batch(n=1)[0]
    with torch.no_grad():
        capped = model(images)[0]
        model.roi_heads.detections_per_img = 100
        uncapped = model(images)[0]
    assert uncapped["scores"].shape[0] > 5
    assert capped["scores"].shape[0] == 5
    assert torch.equal(capped["scores"], uncapped["scores"][:5])
    assert torch.equal(capped["boxes"], uncapped["boxes"][:5])


def test_input_errors_name_the_problem(tiny_config, targets) -> None:
    model = build_model(tiny_config(reference={"input": "tr_pre"}))
    images, templates = _batch()
    with pytest.raises(ValueError, match="needs a template"):
        model.eval()(images)
    with pytest.raises(ValueError, match="multiples of 32"):
        model.eval()(images[..., :50], templates[..., :50])
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        model.eval()(images[:, :1], templates[:, :1])
    with pytest.raises(ValueError, match="templates shape"):
        model.eval()(images, templates[:1])
    with pytest.raises(ValueError, match="image_sizes has 1 entries"):
        model.eval()(images, templates, image_sizes=[(64, 64)])
    with pytest.raises(ValueError, match="outside the padded batch"):
        model.eval()(images, templates, image_sizes=[(64, 64), (65, 64)])
    with pytest.raises(ValueError, match="one target dict per image"):
        model.train()(images, templates)
    bad = [dict(targets[0], labels=torch.tensor([1, 3])), targets[1]]
    with pytest.raises(ValueError, match=r"labels'\] must be in 1..2"):
        model.train()(images, templates, bad)


def test_ptg_training_needs_is_normal(tiny_config, targets) -> None:
    model = build_model(tiny_config(reference={"feature": "ptg"})).train()
    no_flag = [{k: v for k, v in t.items() if k != "is_normal"} for t in targets]
    with pytest.raises(ValueError, match="is_normal"):
        model(_batch()[0], targets=no_flag)


def test_ptg_loss_alone_trains_generator_and_backbone(tiny_config, targets) -> None:
    """Eq. (13) is a loss of the whole network (paper: PTG and detector trained jointly, end to end): its gradient
    reaches the backbone, and it never reaches the detection heads."""
    model = build_model(tiny_config(reference={"feature": "ptg"})).train()
    model(_batch()[0], targets=targets)["loss_ptg"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.ptg.generators[0].parameters())
    for stage in (model.backbone.conv1, model.backbone.layer1[0].conv1, model.backbone.layer4[0].conv1):
        assert stage.weight.grad is not None and stage.weight.grad.abs().sum() > 0
    assert model.roi_heads.stages[0].box_head.fc6.weight.grad is None
    assert model.fpn.inner_blocks[0].weight.grad is None


def test_ptg_loss_uses_only_the_normal_image(tiny_config, targets) -> None:
    model = build_model(tiny_config(reference={"feature": "ptg"})).train()
    images, _ = _batch()
    all_defective = [dict(t, is_normal=torch.tensor(False)) for t in targets]
    assert model(images, targets=all_defective)["loss_ptg"].item() == 0.0
    assert model(images, targets=targets)["loss_ptg"].item() > 0.0
