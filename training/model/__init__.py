"""The Reference-based Defect Detection Network (Zeng et al., IEEE TIP 2021) in PyTorch.

``build_model(cfg)`` is the entry point; ``RDDN`` and ``ModelConfig`` are re-exported for type hints.
"""
from training.model.config import ModelConfig
from training.model.detector import RDDN, build_model

__all__ = ["ModelConfig", "RDDN", "build_model"]
