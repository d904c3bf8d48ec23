"""RoI heads: per-stage IoU sampling, losses, cascade score averaging and post-processing."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from training.model import build_model
from training.model.roi_heads import RoIHeads

GT = {"boxes": torch.tensor([[0.0, 0.0, 100.0, 100.0]]), "labels": torch.tensor([2])}


def _heads(tiny_config, **overrides) -> RoIHeads:
    return RoIHeads(tiny_config(**overrides), in_channels=4)


def test_cascade_stages_label_proposals_at_their_own_iou_threshold(tiny_config) -> None:
    heads = _heads(tiny_config, architecture="cascade")
    assert [s.spec.iou_thresh for s in heads.stages] == [0.4, 0.5, 0.6]
    # proposals [0, 0, 100, h] have IoU h/100 with the GT
    proposals = [torch.tensor([[0.0, 0.0, 100.0, h] for h in (35.0, 45.0, 55.0, 65.0)])]
    expected_positive_ious = {0: [0.45, 0.55, 0.65, 1.0], 1: [0.55, 0.65, 1.0], 2: [0.65, 1.0]}
    for index, stage in enumerate(heads.stages):
        sampled = heads.sample_proposals(proposals, [GT], stage)
        labels, ious = sampled.labels[0], sampled.ious[0]
        assert sorted(round(v, 4) for v in ious[labels > 0].tolist()) == expected_positive_ious[index]
        assert set(labels[labels > 0].tolist()) == {2}
        assert bool((ious[labels == 0] < stage.spec.iou_thresh).all())


def test_faster_uses_roi_head_threshold_and_gt_is_added_as_proposal(tiny_config) -> None:
    heads = _heads(tiny_config, roi_head={"fg_iou_thresh": 0.6})
    assert len(heads.stages) == 1 and heads.stages[0].spec.iou_thresh == 0.6
    sampled = heads.sample_proposals([torch.zeros(0, 4)], [GT], heads.stages[0])
    assert torch.equal(sampled.boxes[0], GT["boxes"]) and sampled.labels[0].tolist() == [2]
    assert torch.allclose(sampled.regression_targets[0], torch.zeros(1, 4))


def test_sampling_caps_batch_and_positive_fraction(tiny_config) -> None:
    heads = _heads(tiny_config, roi_head={"batch_size_per_image": 40, "positive_fraction": 0.25})
    torch.manual_seed(0)
    near = GT["boxes"] + torch.randn(300, 4)  # all positives
    far = torch.tensor([[200.0, 200.0, 260.0, 260.0]]).repeat(300, 1) + torch.rand(300, 4)
    sampled = heads.sample_proposals([torch.cat((near, far))], [GT], heads.stages[0])
    labels = sampled.labels[0]
    assert labels.numel() == 40 and int((labels > 0).sum()) == 10


def test_sampling_image_without_defects_gives_only_background(tiny_config) -> None:
    heads = _heads(tiny_config)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    sampled = heads.sample_proposals([torch.tensor([[0.0, 0.0, 10.0, 10.0]])], [empty], heads.stages[0])
    assert sampled.labels[0].tolist() == [0]


def test_stage_losses_use_only_the_gt_class_deltas_of_positives() -> None:
    labels = torch.tensor([2, 0, 1])
    targets = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 0.5, 0.0]])
    deltas = torch.randn(3, 3, 4)
    deltas[0, 2], deltas[2, 1] = targets[0], targets[2]
    logits = torch.randn(3, 3)
    loss_cls, loss_box = RoIHeads.stage_losses(logits, deltas.view(3, 12), labels, targets)
    assert loss_box.item() == 0.0  # background rows and other classes' deltas do not count
    assert torch.isclose(loss_cls, nn.functional.cross_entropy(logits, labels))
    deltas[0, 2, 0] += 1.0  # |err| = 1 > beta: smooth-L1 = 1 - beta/2, divided by the 3 sampled RoIs
    _, loss_box = RoIHeads.stage_losses(logits, deltas.view(3, 12), labels, targets)
    assert torch.isclose(loss_box, torch.tensor((1.0 - 0.5 / 9.0) / 3.0))


def _constant_stage(stage: nn.Module, cls_bias: list[float], delta_bias: list[float]) -> None:
    """Make a stage's outputs independent of its input: zero weights, chosen biases."""
    predictor = stage.box_predictor
    for layer in (predictor.cls_score, predictor.bbox_pred):
        nn.init.zeros_(layer.weight)
    predictor.cls_score.bias.data = torch.tensor(cls_bias)
    predictor.bbox_pred.bias.data = torch.tensor(delta_bias)


def test_training_passes_each_stage_the_refined_boxes_of_the_previous(tiny_config, targets, monkeypatch) -> None:
    """Stage t+1 samples from stage t's sampled RoIs moved by stage t's deltas. Constant deltas make the move known
    by hand: stage 0 dx = 3 with weight 10 -> +0.3 w in x; stage 1 dy = 3 with weight 20 -> +0.15 h in y."""
    model = build_model(tiny_config(architecture="cascade")).train()
    heads = model.roi_heads
    _constant_stage(heads.stages[0], [0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0] * 3)
    _constant_stage(heads.stages[1], [0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0] * 3)
    calls = []
    original = heads.sample_proposals

    def spy(proposals, tgts, stage):
        out = original(proposals, tgts, stage)
        calls.append(([p.clone() for p in proposals], [b.clone() for b in out.boxes]))
        return out

    monkeypatch.setattr(heads, "sample_proposals", spy)
    losses = model(torch.rand(2, 3, 64, 64) * 255, targets=targets)
    assert len(calls) == 3 and {f"loss_cls_stage{i}" for i in range(3)} <= set(losses)
    moves = [lambda b: b + torch.stack([0.3 * (b[:, 2] - b[:, 0]), 0 * b[:, 0]] * 2, dim=1),
             lambda b: b + torch.stack([0 * b[:, 0], 0.15 * (b[:, 3] - b[:, 1])] * 2, dim=1)]
    for stage, move in enumerate(moves):
        _, sampled = calls[stage]
        given_next, _ = calls[stage + 1]
        for boxes, nxt in zip(sampled, given_next):
            expected = move(boxes).clamp(min=0, max=64)
            assert nxt.shape == boxes.shape
            assert torch.allclose(nxt, expected, atol=1e-4)
            assert not torch.allclose(nxt, boxes, atol=1e-2)  # the refinement really moved them


def test_cascade_inference_averages_stage_scores_and_uses_last_stage_boxes(tiny_config) -> None:
    heads = _heads(tiny_config, architecture="cascade", roi_head={"score_thresh": 0.0}).eval()
    logits = [[0.0, 1.0, -1.0], [0.0, 0.0, 2.0], [1.0, 0.5, 0.0]]
    last_delta = [0.0] * 4 + [3.0, 0.0, 0.0, 0.0] + [0.0] * 4  # class 1: dx = 3 / 30 of the width
    first_delta = [3.0, 0.0, 0.0, 0.0] * 3  # every class: dx = 3 / 10 of the width
    for stage, stage_logits, delta in zip(heads.stages, logits, (first_delta, [0.0] * 12, last_delta)):
        _constant_stage(stage, stage_logits, delta)
    features = [torch.rand(1, 4, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
    proposal = torch.tensor([[10.0, 10.0, 30.0, 40.0]])
    with torch.no_grad():
        out = heads.forward_test(features, [proposal], torch.tensor([[64, 64]]))[0]
    expected = torch.stack([torch.softmax(torch.tensor(l), 0) for l in logits]).mean(0)[1:]
    by_label = {int(l): (s, b) for l, s, b in zip(out["labels"], out["scores"], out["boxes"])}
    assert set(by_label) == {1, 2}
    assert torch.allclose(torch.stack([by_label[1][0], by_label[2][0]]), expected)
    # stage 0 moves the 20 px wide proposal by 6 px, stage 1 keeps it, stage 2 moves class 1 by another 2 px
    refined = proposal[0] + torch.tensor([6.0, 0.0, 6.0, 0.0])
    assert torch.allclose(by_label[1][1], refined + torch.tensor([2.0, 0.0, 2.0, 0.0]), atol=1e-5)
    assert torch.allclose(by_label[2][1], refined, atol=1e-5)


def test_postprocess_thresholds_nms_per_class_and_caps(tiny_config) -> None:
    heads = _heads(tiny_config, roi_head={"detections_per_img": 3})
    box = torch.tensor([10.0, 10.0, 50.0, 50.0])
    shifted = box + 2.0
    class_boxes = torch.stack([
        torch.stack([box, box, box]),
        torch.stack([shifted, shifted, shifted]),
        torch.stack([box + 100, box + 100, box + 100]),
    ])  # [3 RoIs, bg + 2 classes, 4]
    scores = torch.tensor([[0.1, 0.6, 0.3], [0.1, 0.5, 0.4], [0.99, 0.005, 0.005]])
    out = heads.postprocess(class_boxes, scores)
    # class 1: RoI 0 suppresses RoI 1 (IoU > 0.5); class 2: same; RoI 2 below score_thresh
    assert out["labels"].tolist() == [1, 2]
    assert torch.allclose(out["scores"], torch.tensor([0.6, 0.4]))
    assert torch.allclose(out["boxes"], torch.stack([box, shifted]))
    many = heads.postprocess(
        torch.stack([torch.stack([box + 60 * i] * 3) for i in range(6)]), torch.full((6, 3), 0.3)
    )
    assert many["scores"].numel() == 3
    assert many["labels"].dtype == torch.int64


@pytest.mark.parametrize("architecture", ["faster", "cascade"])
def test_every_stage_has_its_own_head(tiny_config, architecture) -> None:
    heads = _heads(tiny_config, architecture=architecture)
    ids = {id(s.box_head.fc6.weight) for s in heads.stages}
    assert len(ids) == len(heads.stages) == (1 if architecture == "faster" else 3)
    weights = [s.box_coder.weights for s in heads.stages]
    assert weights == ([(10.0, 10.0, 5.0, 5.0)] if architecture == "faster" else
                       [(10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0)])
