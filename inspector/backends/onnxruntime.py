"""ONNX Runtime backend (the CPU default): runs an artifact directory exactly as ``engines/artifact.py`` documents.

Resizing is outside the graph (``inspector.backends.frames``: stretch to the input size, boxes scaled back per
axis); normalisation and NMS are inside it. Labels in the graph are 0-based indices into ``class_names``.
An INT8 artifact is a QDQ graph: ONNX Runtime fuses its QuantizeLinear/DequantizeLinear pairs into integer
kernels (QLinearConv ...), so the same backend runs FP32 and INT8 artifacts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from inspector.backends.frames import OUTPUT_NAMES
from inspector.backends.graph import GraphBackend, static_batch


class OnnxRuntimeBackend(GraphBackend):
    runtime = "onnxruntime"
    targets = ("onnxruntime",)

    def __init__(self, artifact_dir: Path | str, providers: Sequence[str] | None = None, intra_op_threads: int = 0,
                 verify_hash: bool = True) -> None:
        import onnxruntime as ort  # lazy: keeps `inspector --help` fast

        super().__init__(artifact_dir, verify_hash)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            options.intra_op_num_threads = int(intra_op_threads)
        self.session = ort.InferenceSession(str(self.model_path), options,
                                            providers=list(providers or ["CPUExecutionProvider"]))
        self.check_graph_inputs({i.name for i in self.session.get_inputs()})
        image = next(i for i in self.session.get_inputs() if i.name == "image")
        self.batch_size = static_batch(image.shape[0])

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(OUTPUT_NAMES, self.session.run(list(OUTPUT_NAMES), feeds)))

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
