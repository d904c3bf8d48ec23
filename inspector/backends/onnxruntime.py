"""ONNX Runtime backend (the CPU default): runs an artifact directory exactly as ``engines/artifact.py`` documents.

Resizing is outside the graph (``inspector.backends.frames``: stretch to the input size, boxes scaled back per
axis); normalisation and NMS are inside it. Labels in the graph are 0-based indices into ``class_names``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from engines.artifact import ArtifactMetadata, sha256_file
from inspector.backends.base import Detection
from inspector.backends.frames import OUTPUT_NAMES, detections_from_outputs, resize_batch


class OnnxRuntimeBackend:
    thread_safe = True  # InferenceSession.run is documented thread-safe
    def __init__(self, artifact_dir: Path | str, providers: Sequence[str] | None = None, intra_op_threads: int = 0,
                 verify_hash: bool = True) -> None:
        import onnxruntime as ort  # lazy: keeps `inspector --help` fast

        self.artifact_dir = Path(artifact_dir)
        self.metadata = ArtifactMetadata.load(self.artifact_dir)
        model_path = ArtifactMetadata.file_path(self.artifact_dir, self.metadata.model_file)
        if not model_path.is_file():
            raise FileNotFoundError(f"{self.artifact_dir / 'metadata.json'}: model_file '{self.metadata.model_file}' "
                                    f"not found at {model_path}")
        if verify_hash and sha256_file(model_path) != self.metadata.model_sha256:
            raise ValueError(f"{model_path}: sha256 does not match metadata.json model_sha256 (corrupt or swapped file)")
        self.class_names = tuple(self.metadata.class_names)
        # A graph with TR-Post compiled in rescores p * (1 - cos(F_I, F_T)): fed without a real template it would
        # score every detection ~0, so for the daemon such a model needs templates like a TR-Pre/Inter one.
        self.uses_template = self.metadata.needs_template or self.metadata.tr_post
        self.needs_template = self.uses_template
        self.model_sha256 = self.metadata.model_sha256
        self.precision = self.metadata.precision
        options = ort.SessionOptions()
        if intra_op_threads:
            options.intra_op_num_threads = int(intra_op_threads)
        self.session = ort.InferenceSession(str(model_path), options,
                                            providers=list(providers or ["CPUExecutionProvider"]))
        inputs = {i.name for i in self.session.get_inputs()}
        expected = {"image", "template"} if self.uses_template else {"image"}
        if inputs != expected:
            raise ValueError(f"{model_path}: graph inputs {sorted(inputs)} != {sorted(expected)} expected from "
                             f"metadata.json (needs_template={self.metadata.needs_template}, tr_post={self.metadata.tr_post})")
        self._size = (self.metadata.preprocessing.input_height, self.metadata.preprocessing.input_width)

    def detect(self, images: Sequence[np.ndarray], templates: Sequence[np.ndarray | None]) -> list[list[Detection]]:
        if not images:
            return []
        feeds = {"image": resize_batch(images, self._size)}
        if self.uses_template:
            if any(t is None for t in templates):
                raise ValueError("this model needs a template for every frame")
            feeds["template"] = resize_batch(templates, self._size)  # type: ignore[arg-type]
        outputs = dict(zip(OUTPUT_NAMES, self.session.run(list(OUTPUT_NAMES), feeds)))
        return detections_from_outputs(outputs, [f.shape for f in images], self._size, self.class_names)

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
