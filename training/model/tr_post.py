"""Template reference post-processing (TR-Post), paper eq. (10)-(11).

A proposal whose region feature on the image looks like its region feature on the template is probably not a
defect: its class scores are multiplied by 1 - cos(F_I, F_T). F_I, F_T come from a ReLU layer, so the cosine is
in [0, 1]; it is clamped anyway so rounding can never flip a sign. Needs no training: any model can use it.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def region_cosine(image_features: Tensor, template_features: Tensor) -> Tensor:
    """cos<F_I, F_T> per region, eq. (11), clamped to [0, 1]; an all-zero feature gives 0 (no evidence)."""
    cos = F.cosine_similarity(image_features.float(), template_features.float(), dim=1, eps=1e-8)
    return cos.clamp(min=0.0, max=1.0)


def tr_post_scores(scores: Tensor, image_features: Tensor, template_features: Tensor) -> Tensor:
    """Eq. (10): P^I * (1 - cos<F^I, F^T>), ``scores`` [R, K] (any class columns), features [R, D]."""
    return scores * (1.0 - region_cosine(image_features, template_features)).unsqueeze(1)
