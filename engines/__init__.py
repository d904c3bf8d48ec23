"""Export and compilation of trained RDDN checkpoints into deployable artifacts.

``engines.artifact`` (the artifact's metadata schema) is torch-free so the daemon can read it; everything that
exports or builds imports torch / onnx / tensorrt lazily inside its own module.
"""
