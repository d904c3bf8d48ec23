"""The one in-memory form of a dataset item (cross-team contract 3).

Every reader (DeepPCB, Tianchi, COCO, synthetic) produces this, so transforms, the training loop, evaluation
and the daemon demo never need to know where an image came from. numpy only: the synthetic generator and the
daemon use it without torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Sample:
    """One image (and its aligned template when the dataset has one) with its defect boxes.

    ``boxes`` are x1y1x2y2 pixel corners (a box covering pixel columns 3..5 is x1=3, x2=6); ``labels`` are
    1..C (0 is the model's background). ``is_normal`` marks a defect-free image (no boxes): PTG trains its
    generator on those.
    """

    image: np.ndarray  # uint8 [H, W, 3] RGB
    template: np.ndarray | None  # uint8 [H, W, 3] RGB, aligned to image, or None
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # float32 [K, 4]
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))  # int64 [K]
    is_normal: bool = False
    image_id: str = ""
    path: str = ""

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.boxes) != len(self.labels):
            raise ValueError(f"{self.path or self.image_id}: {len(self.boxes)} boxes but {len(self.labels)} labels")
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(
                f"{self.path or self.image_id}: image must be uint8 [H, W, 3], got {self.image.dtype} "
                f"{tuple(self.image.shape)}"
            )
        if self.template is not None and self.template.shape != self.image.shape:
            raise ValueError(
                f"{self.path or self.image_id}: template shape {tuple(self.template.shape)} differs from image "
                f"shape {tuple(self.image.shape)}"
            )

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])
