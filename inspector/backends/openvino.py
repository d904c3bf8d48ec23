"""OpenVINO backend (CPU): runs a ``target: openvino`` artifact (IR ``model.xml`` + ``model.bin`` written by
``rddn compile --target openvino``) or the ONNX of a ``target: onnxruntime`` artifact, read directly.

Same frames <-> graph mapping as ONNX Runtime (``inspector.backends.frames``), same results. Settings:

- ``threads``: ``INFERENCE_NUM_THREADS`` (0: OpenVINO's choice, all cores); ``performance_hint`` LATENCY (one
  stream, all threads on one frame: what a camera line waiting on each frame wants) or THROUGHPUT;
- inference precision pinned to f32: on CPUs with AVX-512 BF16 / AMX OpenVINO would otherwise run an FP32
  graph in bf16 by default, and detections would differ from the validated artifact. INT8 artifacts (QDQ ONNX or
  an IR with FakeQuantize) run their quantised layers in int8 and everything else in f32;
- ``cache_dir``: OpenVINO's compiled-model cache, so a restart does not recompile.

One infer request per calling thread (OpenVINO requests are not shareable between threads), so the pipeline's
analysis workers may call ``detect`` concurrently.
"""
from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np

from engines.openvino_ir import core as openvino_core
from engines.openvino_ir import signal_stack_kept
from inspector.backends.frames import OUTPUT_NAMES
from inspector.backends.graph import GraphBackend, check_sha256, static_batch


class OpenVINOBackend(GraphBackend):
    runtime = "openvino"
    targets = ("openvino", "onnxruntime")

    def __init__(self, artifact_dir: Path | str, threads: int = 0,
                 performance_hint: Literal["LATENCY", "THROUGHPUT"] = "LATENCY", num_streams: int | None = None,
                 cache_dir: Path | str | None = None, verify_hash: bool = True) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise ImportError("the openvino backend needs OpenVINO (pip install 'rddn-inspector[openvino]'); "
                              "use backend 'onnxruntime' where it is not installed") from exc
        super().__init__(artifact_dir, verify_hash)
        if performance_hint not in ("LATENCY", "THROUGHPUT"):
            raise ValueError(f"openvino backend: performance_hint must be LATENCY or THROUGHPUT, got {performance_hint!r}")
        with signal_stack_kept():  # see engines.openvino_ir.signal_stack_kept: a reload must not crash
            core = openvino_core()  # with the conversion rules the ONNX frontend lacks (DeformConv)
            try:
                if cache_dir is not None:
                    core.set_property({"CACHE_DIR": str(cache_dir)})
                weights = None
                info = self.metadata.openvino
                if self.metadata.target == "openvino":
                    if info is None:
                        raise ValueError(f"{self.artifact_dir / 'metadata.json'}: target 'openvino' without an "
                                         "'openvino' section (weights file and hash)")
                    weights = self.artifact_file(info.weights_file, "openvino.weights_file")
                    if verify_hash:
                        check_sha256(weights, info.weights_sha256, "openvino.weights_sha256")
                model = core.read_model(str(self.model_path), None if weights is None else str(weights))
                self.check_graph_inputs({port.get_any_name() for port in model.inputs})
                batch = model.input("image").get_partial_shape()[0]
                self.batch_size = static_batch(batch.get_length() if batch.is_static else None)
                config: dict[str, Any] = {
                    "PERFORMANCE_HINT": performance_hint,
                    "INFERENCE_PRECISION_HINT": "f32",
                }
                if threads:
                    config["INFERENCE_NUM_THREADS"] = int(threads)
                if num_streams is not None:
                    config["NUM_STREAMS"] = int(num_streams)
                self.compiled = core.compile_model(model, "CPU", config)
                self.openvino_version = ov.get_version()
            finally:
                del core  # the plugin is dropped inside the guard, also when compiling fails
            self._local = threading.local()

    def _request(self) -> Any:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = self._request()
        request.infer(feeds)
        return {name: np.array(request.get_tensor(name).data, copy=True) for name in OUTPUT_NAMES}

    def close(self) -> None:
        with signal_stack_kept():  # the plugin dies here, on the closing thread
            self._local = threading.local()
            self.compiled = None

    def __del__(self) -> None:  # a backend dropped without close() dies inside the guard too
        if not sys.is_finalizing():
            self.close()
