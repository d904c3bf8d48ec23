"""Proof that the detector learns: a tiny TR-Pre + CR model overfits a handful of image/template pairs with planted
bright (class 1) and dark (class 2) rectangles and then finds them with the right class (recall >= 0.9 at IoU 0.5).

~20 s of CPU on one thread (more when the machine is shared). If this fails after a change, something in the sampling, losses, box coding,
pooling or post-processing is broken, even if every unit test still passes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from training.model import build_model

SIZE = 64
NUM_PAIRS = 6
STEPS = 160


def make_pair(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Template: smooth random colour texture plus pixel noise; image: template with 1-3 non-overlapping
    rectangles, +70 (bright, class 1) or -70 (dark, class 2)."""
    coarse = torch.rand(1, 3, SIZE // 8, SIZE // 8, generator=generator)
    template = F.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0] * 120 + 60
    template = template + torch.rand(3, SIZE, SIZE, generator=generator) * 30
    image = template.clone()
    boxes: list[torch.Tensor] = []
    labels: list[int] = []
    count = int(torch.randint(1, 4, (1,), generator=generator))
    for index in range(count):
        for _ in range(100):
            w, h = (int(v) for v in torch.randint(10, 30, (2,), generator=generator))
            x = int(torch.randint(0, SIZE - w, (1,), generator=generator))
            y = int(torch.randint(0, SIZE - h, (1,), generator=generator))
            box = torch.tensor([[x, y, x + w, y + h]], dtype=torch.float32)
            if not boxes or box_iou(box, torch.cat(boxes)).max() == 0:
                break
        label = 1 + index % 2 if count > 1 else int(torch.randint(1, 3, (1,), generator=generator))
        image[:, y : y + h, x : x + w] += 70.0 if label == 1 else -70.0
        boxes.append(box)
        labels.append(label)
    return image.clamp(0, 255), template.clamp(0, 255), torch.cat(boxes), torch.tensor(labels)


def recall_at_iou50(outputs: list[dict[str, torch.Tensor]], data: list, min_score: float) -> float:
    found = total = 0
    for det, (_, _, gt_boxes, gt_labels) in zip(outputs, data):
        keep = det["scores"] > min_score
        boxes, labels = det["boxes"][keep], det["labels"][keep]
        for gt_box, gt_label in zip(gt_boxes, gt_labels):
            total += 1
            if boxes.numel() and bool(((box_iou(gt_box[None], boxes)[0] >= 0.5) & (labels == gt_label)).any()):
                found += 1
    return found / total


def test_tiny_tr_pre_cr_model_overfits_planted_defects(tiny_config) -> None:
    generator = torch.Generator().manual_seed(0)
    data = [make_pair(generator) for _ in range(NUM_PAIRS)]
    torch.manual_seed(0)
    model = build_model(tiny_config(reference={"input": "tr_pre"}, context={"enabled": True})).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first_loss = None
    for step in range(STEPS):
        batch = [data[(2 * step) % NUM_PAIRS], data[(2 * step + 1) % NUM_PAIRS]]
        images = torch.stack([b[0] for b in batch])
        templates = torch.stack([b[1] for b in batch])
        targets = [{"boxes": b[2], "labels": b[3], "is_normal": torch.tensor(False)} for b in batch]
        loss = sum(model(images, templates, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first_loss = float(loss.detach()) if first_loss is None else first_loss
    assert float(loss.detach()) < 0.5 * first_loss
    model.eval()
    with torch.no_grad():
        outputs = model(torch.stack([d[0] for d in data]), torch.stack([d[1] for d in data]))
    assert recall_at_iou50(outputs, data, min_score=0.5) >= 0.9
    # and it does not just spray boxes: confident detections are about as many as the planted defects
    confident = sum(int((o["scores"] > 0.5).sum()) for o in outputs)
    assert confident <= 2 * sum(len(d[2]) for d in data)
