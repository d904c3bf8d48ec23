"""Demo/test/benchmark frames from the project's synthetic generator (``training.data.synthetic``, torch-free).

The daemon talks about positions by name (file names carry them); the generator numbers them. This adapter is
the one place that maps ``P00``, ``P01``, ... to generator positions and turns samples into JPEG bytes.
"""
from __future__ import annotations

import cv2
import numpy as np

from training.data.sample import Sample
from training.data.synthetic import SyntheticSpec, generate_frame, make_position_template


def demo_spec(size: int = 256, positions: int = 4, max_shift: int = 6, seed: int = 0,
              noise_std: float = 2.0) -> SyntheticSpec:
    """Frames misregistered by up to ``max_shift`` px (what alignment must undo), one design per position."""
    return SyntheticSpec(height=size, width=size, surface="pcb", positions=positions, seed=seed,
                         max_shift=max_shift, noise_std=noise_std, defect_size=(8, min(32, size // 4)))


def position_name(index: int) -> str:
    return f"P{index:02d}"


def position_templates(spec: SyntheticSpec) -> dict[str, np.ndarray]:
    """Defect-free, registered template (RGB) per position name."""
    return {position_name(i): make_position_template(spec, i) for i in range(spec.positions)}


def make_frame(spec: SyntheticSpec, index: int, rng: np.random.Generator, defective: bool) -> Sample:
    return generate_frame(spec, index, rng, defective=defective, image_id=position_name(index))


def encode_jpeg(image_rgb: np.ndarray, quality: int = 92) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()
