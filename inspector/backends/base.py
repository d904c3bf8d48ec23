"""The detector interface the daemon sees, whatever runs underneath (ONNX Runtime, TensorRT, torch)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class Detection:
    """One detected defect, box in the original frame's pixels (x1, y1, x2, y2)."""

    class_id: int
    label: str
    score: float
    box: tuple[float, float, float, float]

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)


class DetectorBackend(Protocol):
    """Load an artifact once, then detect batches.

    ``images`` are HxWx3 uint8 RGB frames at their native size; ``templates`` are aligned templates of the same
    size, or None where the model runs without one. The backend resizes to its input size and maps boxes back.

    Optional attributes the daemon reads with ``getattr``: ``thread_safe`` (bool, default False: the pipeline
    then serialises ``detect`` calls), ``model_sha256`` and ``precision`` (recorded in the models table).
    """

    class_names: Sequence[str]
    needs_template: bool

    def detect(
        self, images: Sequence[np.ndarray], templates: Sequence[np.ndarray | None]
    ) -> list[list[Detection]]: ...

    def close(self) -> None: ...
