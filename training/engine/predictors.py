"""What ``rddn eval`` evaluates: a predictor turns original-size samples into detections in their own pixels.

Two kinds, one loop (``training.engine.evaluate``):

- :class:`ModelPredictor`: an RDDN in torch (``--checkpoint``): the dataset's test resize, zero-padded batches,
  boxes mapped back to the original pixels;
- :class:`BackendPredictor`: a compiled artifact run by the daemon's own backend (``--artifact DIR --backend
  NAME``): the frame goes in at its native size, one at a time as the pipeline calls it, and the backend does what
  it does on the line (its resize, the graph with the thresholds of ``metadata.json``, boxes scaled back). The
  figure quoted is then the one the daemon runs.

Backends come from :data:`ARTIFACT_BACKENDS`, one entry per runtime (name -> factory). The factories import
``inspector.backends`` when called, never at import time: the daemon's code is the consumer end of the chain
(training -> checkpoint -> engines -> artifact -> inspector), and training only borrows its backend to measure an
artifact, exactly as the daemon would load it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from training.data.sample import Sample

Detections = dict[str, np.ndarray]  # boxes [D, 4] (x1, y1, x2, y2, the sample's pixels), scores [D], labels [D] 1..C


class Predictor(Protocol):
    """Detections for a batch of untransformed samples; ``describe`` goes into report.json."""

    class_names: tuple[str, ...]

    def predict(self, samples: Sequence[Sample]) -> list[Detections]: ...

    def describe(self) -> dict[str, Any]: ...


class ModelPredictor:
    """An RDDN model in eval mode, fed as in training's test path: ``transform`` (the test resize), then the
    padded batch; templates go in when the model needs them or TR-Post is on."""

    def __init__(self, model: nn.Module, transform: Callable[[Sample], Any], *, device: torch.device | str = "cpu",
                 tr_post: bool | None = None) -> None:
        self.model = model.eval().to(device)
        self.transform = transform
        self.device = torch.device(device)
        self.tr_post = tr_post
        reference = model.config.reference
        self.uses_tr_post = bool(tr_post if tr_post is not None else reference.tr_post)
        self.needs_templates = bool(reference.needs_template or self.uses_tr_post)
        self.class_names = tuple(model.config.class_names)

    @torch.no_grad()
    def predict(self, samples: Sequence[Sample]) -> list[Detections]:
        from training.data import collate_batch
        from training.data.transforms import unscale_boxes

        items = [self.transform(s) for s in samples]
        images, templates, _, sizes = collate_batch(items)
        if self.needs_templates and templates is None:
            raise ValueError("the model needs templates (reference.input/feature or TR-Post) but the data has none")
        outputs = self.model(
            images.to(self.device),
            templates=templates.to(self.device) if (templates is not None and self.needs_templates) else None,
            image_sizes=sizes,
            tr_post=self.tr_post,
        )
        return [
            {
                "boxes": unscale_boxes(out["boxes"].detach().cpu().float().numpy().reshape(-1, 4), item.scale),
                "scores": out["scores"].detach().cpu().float().numpy().reshape(-1),
                "labels": out["labels"].detach().cpu().numpy().astype(np.int64).reshape(-1),
            }
            for out, item in zip(outputs, items)
        ]

    def describe(self) -> dict[str, Any]:
        return {"tr_post": self.uses_tr_post}


class BackendPredictor:
    """A daemon backend (``inspector.backends`` interface: ``detect(frames, templates)`` of uint8 RGB frames at
    their native size -> detections in frame pixels, class ids 0-based), called frame by frame as the pipeline
    does."""

    def __init__(self, backend: Any, name: str, artifact_dir: Path) -> None:
        self.backend = backend
        self.name = name
        self.artifact_dir = Path(artifact_dir)
        self.class_names = tuple(backend.class_names)
        self.needs_templates = bool(backend.needs_template)

    def predict(self, samples: Sequence[Sample]) -> list[Detections]:
        out = []
        for sample in samples:
            if self.needs_templates and sample.template is None:
                raise ValueError(f"{sample.image_id or sample.path}: the artifact needs a template, the data has none")
            template = sample.template if self.needs_templates else None
            detections = self.backend.detect([sample.image], [template])[0]
            out.append({
                "boxes": np.asarray([d.box for d in detections], np.float32).reshape(-1, 4),
                "scores": np.asarray([d.score for d in detections], np.float32),
                "labels": np.asarray([d.class_id + 1 for d in detections], np.int64),
            })
        return out

    def describe(self) -> dict[str, Any]:
        """The artifact's identity and the settings baked into its graph (from metadata.json)."""
        info: dict[str, Any] = {"artifact": str(self.artifact_dir), "backend": self.name}
        metadata = getattr(self.backend, "metadata", None)
        if metadata is not None:
            pre = metadata.preprocessing
            info.update(
                target=metadata.target, precision=metadata.precision, model_sha256=metadata.model_sha256,
                checkpoint_sha256=metadata.checkpoint_sha256, input_size=[pre.input_height, pre.input_width],
                score_thresh=metadata.score_thresh, nms_thresh=metadata.nms_thresh,
                max_detections=metadata.max_detections, tr_post=metadata.tr_post,
            )
        return info

    def close(self) -> None:
        self.backend.close()


def _onnxruntime_backend(artifact_dir: Path, threads: int | None) -> Any:
    from inspector.backends import load_backend

    return load_backend("onnxruntime", artifact_dir, **({"intra_op_threads": threads} if threads else {}))


def _openvino_backend(artifact_dir: Path, threads: int | None) -> Any:
    from inspector.backends import load_backend

    return load_backend("openvino", artifact_dir, **({"threads": threads} if threads else {}))


#: ``rddn eval --artifact DIR --backend NAME``: NAME -> factory(artifact_dir, threads or None) returning the
#: daemon's backend object for that runtime. A new runtime is one entry here.
ARTIFACT_BACKENDS: dict[str, Callable[[Path, int | None], Any]] = {
    "onnxruntime": _onnxruntime_backend,
    "openvino": _openvino_backend,
}
#: The backend that runs each artifact target by default (an onnxruntime artifact also runs on openvino).
DEFAULT_BACKEND = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


def artifact_predictor(artifact_dir: Path | str, backend: str | None = None,
                       threads: int | None = None) -> BackendPredictor:
    """The predictor for a compiled artifact directory, run by the daemon's ``backend`` (default: the one its
    metadata's target names)."""
    artifact_dir = Path(artifact_dir)
    if not artifact_dir.is_dir():
        raise FileNotFoundError(f"--artifact {artifact_dir}: not a directory (an artifact written by rddn compile)")
    if backend is None:
        from engines.artifact import ArtifactMetadata

        target = ArtifactMetadata.load(artifact_dir).target
        backend = DEFAULT_BACKEND.get(target, target)
    factory = ARTIFACT_BACKENDS.get(backend)
    if factory is None:
        raise ValueError(f"--backend {backend!r}: unknown (choose one of {', '.join(sorted(ARTIFACT_BACKENDS))})")
    return BackendPredictor(factory(artifact_dir, threads), backend, artifact_dir)
