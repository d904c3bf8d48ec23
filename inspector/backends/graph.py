"""What the CPU graph runtimes (ONNX Runtime, OpenVINO) share: reading and checking an artifact directory, the
template rule, and running a fixed-batch graph over any number of frames.

A runtime subclass says which artifact targets it runs, opens the graph file, and implements ``_run`` (feeds ->
the four contract outputs); frames go in and detections come out through ``inspector.backends.frames``, so every
runtime maps boxes and labels identically.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np

from engines.artifact import ArtifactMetadata, sha256_file
from inspector.backends.base import Detection
from inspector.backends.frames import detections_from_outputs, resize_batch


class GraphBackend(ABC):
    """``DetectorBackend`` over a compiled artifact run by a CPU graph runtime (see the module docstring)."""

    runtime: ClassVar[str]  # backend name used in messages ("onnxruntime", "openvino")
    targets: ClassVar[tuple[str, ...]]  # artifact targets this runtime can run
    thread_safe = True  # both runtimes allow concurrent runs (ORT: session.run; OpenVINO: a request per thread)

    def __init__(self, artifact_dir: Path | str, verify_hash: bool = True) -> None:
        self.artifact_dir = Path(artifact_dir)
        self.metadata = ArtifactMetadata.load(self.artifact_dir)
        if self.metadata.target not in self.targets:
            raise ValueError(f"{self.artifact_dir / 'metadata.json'}: target is '{self.metadata.target}'; the "
                             f"{self.runtime} backend runs {' or '.join(repr(t) for t in self.targets)} artifacts")
        self.model_path = self.artifact_file(self.metadata.model_file, "model_file")
        if verify_hash:
            check_sha256(self.model_path, self.metadata.model_sha256, "model_sha256")
        self.class_names = tuple(self.metadata.class_names)
        # A graph with TR-Post compiled in rescores p * (1 - cos(F_I, F_T)): fed without a real template it would
        # score every detection ~0, so for the daemon such a model needs templates like a TR-Pre/Inter one.
        self.uses_template = self.metadata.needs_template or self.metadata.tr_post
        self.needs_template = self.uses_template
        self.model_sha256 = self.metadata.model_sha256
        self.precision = self.metadata.precision
        self._size = (self.metadata.preprocessing.input_height, self.metadata.preprocessing.input_width)
        self.batch_size: int | None = None  # the graph's static batch; None = any (set by the subclass)

    def artifact_file(self, name: str, key: str) -> Path:
        """A file named in metadata.json, which must lie inside the artifact directory (also after resolving
        symbolic links) and exist."""
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"{self.artifact_dir / 'metadata.json'}: {key} '{name}' points outside the artifact")
        path = ArtifactMetadata.file_path(self.artifact_dir, name)
        if not path.is_file():
            raise FileNotFoundError(f"{self.artifact_dir / 'metadata.json'}: {key} '{name}' not found at {path}")
        return path

    def check_graph_inputs(self, names: set[str]) -> None:
        expected = {"image", "template"} if self.uses_template else {"image"}
        if names != expected:
            raise ValueError(f"{self.model_path}: graph inputs {sorted(names)} != {sorted(expected)} expected from "
                             f"metadata.json (needs_template={self.metadata.needs_template}, "
                             f"tr_post={self.metadata.tr_post})")

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One graph run: ``image`` (and ``template``) -> boxes, scores, labels, num_detections (per runtime)."""

    def detect(self, images: Sequence[np.ndarray], templates: Sequence[np.ndarray | None]) -> list[list[Detection]]:
        if not images:
            return []
        if self.uses_template and any(t is None for t in templates):
            raise ValueError("this model needs a template for every frame")
        step = self.batch_size or len(images)
        results: list[list[Detection]] = []
        for start in range(0, len(images), step):
            chunk = list(images[start:start + step])
            pad = [chunk[-1]] * (step - len(chunk))  # a static graph batch: repeat the last frame, drop its rows
            feeds = {"image": resize_batch(chunk + pad, self._size)}
            if self.uses_template:
                chunk_t = list(templates[start:start + step])
                feeds["template"] = resize_batch(chunk_t + [chunk_t[-1]] * len(pad), self._size)  # type: ignore
            results += detections_from_outputs(self._run(feeds), [f.shape for f in chunk], self._size,
                                               self.class_names)
        return results


def check_sha256(path: Path, expected: str, key: str) -> None:
    if sha256_file(path) != expected:
        raise ValueError(f"{path}: sha256 does not match metadata.json {key} (corrupt or swapped file)")


def static_batch(dim: object) -> int | None:
    """The graph's batch dimension as an int when static, None when symbolic."""
    return int(dim) if isinstance(dim, int) and dim > 0 else None
