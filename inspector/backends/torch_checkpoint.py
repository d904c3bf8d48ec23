"""Development backend: run an RDDN training checkpoint directly with torch (contract 2, ``rddn-checkpoint``).

For the line use a compiled artifact (onnxruntime/tensorrt); this one exists so a freshly trained model can be
tried in the daemon without the export step. torch and the training code are imported lazily.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from inspector.backends.base import Detection

STRIDE = 32  # contract 1: padded batch sides are multiples of 32


class TorchCheckpointBackend:
    def __init__(self, checkpoint: Path | str, device: str = "cpu", tr_post: bool | None = None) -> None:
        import torch

        from engines.artifact import sha256_file
        from training.engine.checkpoint import load_checkpoint, load_model_from_checkpoint

        self._torch = torch
        self.checkpoint = Path(checkpoint)
        if not self.checkpoint.is_file():
            raise FileNotFoundError(f"torch backend: checkpoint not found: {self.checkpoint}")
        meta = load_checkpoint(self.checkpoint)
        self.model = load_model_from_checkpoint(self.checkpoint, map_location=device).to(device).eval()
        cfg = self.model.config
        self.class_names = tuple(meta.get("class_names") or cfg.class_names)
        self.needs_template = bool(cfg.reference.needs_template)
        self.tr_post = cfg.reference.tr_post if tr_post is None else tr_post
        self.device = device
        self.model_sha256 = sha256_file(self.checkpoint)
        self.precision = "fp32"

    def _batch(self, frames: Sequence[np.ndarray]):
        torch = self._torch
        h = max(f.shape[0] for f in frames)
        w = max(f.shape[1] for f in frames)
        H, W = -(-h // STRIDE) * STRIDE, -(-w // STRIDE) * STRIDE
        out = torch.zeros((len(frames), 3, H, W), dtype=torch.float32)
        for i, f in enumerate(frames):
            out[i, :, : f.shape[0], : f.shape[1]] = torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1)
        return out.to(self.device)

    def detect(self, images: Sequence[np.ndarray], templates: Sequence[np.ndarray | None]) -> list[list[Detection]]:
        if not images:
            return []
        have_all = all(t is not None for t in templates)
        if self.needs_template and not have_all:
            raise ValueError("this model needs a template for every frame")
        tpl = self._batch(templates) if have_all else None  # type: ignore[arg-type]
        sizes = [(f.shape[0], f.shape[1]) for f in images]
        with self._torch.inference_mode():
            outputs = self.model(self._batch(images), templates=tpl, image_sizes=sizes,
                                 tr_post=self.tr_post and tpl is not None)
        results = []
        for out in outputs:
            dets = []
            for box, score, label in zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist()):
                idx = int(label) - 1  # model labels are 1..C
                dets.append(Detection(idx, self.class_names[idx], float(score), tuple(float(v) for v in box)))
            results.append(dets)
        return results

    def close(self) -> None:
        self.model = None
