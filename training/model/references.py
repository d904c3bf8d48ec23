"""Template reference (TR-Pre, TR-Inter, TR-Fuse) and the pseudo template generator (PTG), paper Sec. IV-A/B.

Input level:   ``normalize`` = (I - mean) / std (eq. 6), ``tr_pre`` = (I - T) / (2 std) (eq. 7).
Feature level: ``TemplateFusion`` turns per-stage features of image and reference into what the FPN is built on:
               tr_inter C_i(I) - C_i(T) (eq. 9); tr_fuse conv1x1([C_i(I), C_i(I) - C_i(T)]);
               PTG is tr_inter with the reference C_i(T) replaced by G_i(C_i(I)) (eq. 14).
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _channel_vector(values: Sequence[float], like: Tensor) -> Tensor:
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Standard pre-processing, eq. (6): (I - mean) / std per channel."""
    return (images - _channel_vector(mean, images)) / _channel_vector(std, images)


def tr_pre(images: Tensor, templates: Tensor, std: Sequence[float]) -> Tensor:
    """TR-Pre, eq. (7): the template replaces the mean, and the doubled value range [-255, 255] is halved so the
    input keeps the scale the (frozen, pretrained) stem expects."""
    if images.shape != templates.shape:
        raise ValueError(f"tr_pre: images {tuple(images.shape)} and templates {tuple(templates.shape)} differ in shape")
    return (images - templates) / (2.0 * _channel_vector(std, images))


class TemplateFusion(nn.Module):
    """Combine image features C_i(I) with reference features R_i (a real template's C_i(T) or a pseudo template
    G_i(C_i(I))), stage by stage.

    ``tr_inter``: C_i(I) - R_i, parameter-free (eq. 9 / 14).
    ``tr_fuse``:  conv1x1(concat[C_i(I), C_i(I) - R_i]) back to the stage width: lets the network keep the image's
                  own appearance where the difference alone is ambiguous (an extension beyond the paper).
    """

    def __init__(self, mode: Literal["tr_inter", "tr_fuse"], channels: Sequence[int]) -> None:
        super().__init__()
        if mode not in ("tr_inter", "tr_fuse"):
            raise ValueError(f"TemplateFusion mode must be tr_inter or tr_fuse, got {mode!r}")
        self.mode = mode
        self.fuse = (
            nn.ModuleList(nn.Conv2d(2 * c, c, kernel_size=1) for c in channels) if mode == "tr_fuse" else None
        )

    def forward(self, image_features: Sequence[Tensor], reference_features: Sequence[Tensor]) -> list[Tensor]:
        diffs = [ci - ri for ci, ri in zip(image_features, reference_features)]
        if self.fuse is None:
            return diffs
        return [conv(torch.cat((ci, di), dim=1)) for conv, ci, di in zip(self.fuse, image_features, diffs)]


def _match_spatial_size(x: Tensor, height: int, width: int) -> Tensor:
    """Crop (or zero-pad) the bottom/right so a decoder output matches its encoder input: strided convs round odd
    sizes up, so the two stride-2 deconvs can overshoot by up to 3 pixels."""
    x = x[..., :height, :width]
    pad_h, pad_w = height - x.shape[-2], width - x.shape[-1]
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    return x


class StageGenerator(nn.Sequential):
    """G_i: conv, conv/2, conv/2, deconv*2, deconv*2, deconv; ReLU on all but the last deconv (Sec. IV-B)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__(
            nn.Conv2d(channels, hidden, 3, stride=1, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(hidden, hidden, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(hidden, hidden, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(hidden, channels, 3, stride=1, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return _match_spatial_size(super().forward(x), x.shape[-2], x.shape[-1])


class PseudoTemplateGenerator(nn.Module):
    """One generator per ResNet stage; returns the pseudo templates G_i(C_i) (same shapes as C_i)."""

    def __init__(self, channels: Sequence[int], hidden: int = 256) -> None:
        super().__init__()
        self.generators = nn.ModuleList(StageGenerator(c, hidden) for c in channels)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        return [g(c) for g, c in zip(self.generators, features)]


def ptg_loss(features: Sequence[Tensor], pseudo_templates: Sequence[Tensor], is_normal: Tensor) -> Tensor:
    """Eq. (13): sum over stages of MSE(C_i(N), G_i(C_i(N))), averaged over the NORMAL samples of the batch only.

    A defect-free image is its own template, so only normal samples supervise the generator; defective samples
    contribute exactly nothing. Nothing is detached: the paper trains PTG and detector "end-to-end" and jointly
    (Sec. IV-B), with the detection losses as what keeps G from collapsing to the identity, so eq. (13) is one
    more loss of the whole network. Its gradient reaches the backbone through both C_i(N) (the target) and
    G_i's input, and the backbone learns features of normal boards that G can predict, while the detection losses
    need C_i(I) - G_i(C_i(I)) to show the defects.
    With no normal sample the loss is an exact, still differentiable, zero.
    """
    mask = is_normal.to(device=features[0].device, dtype=torch.bool).flatten()
    if mask.numel() != features[0].shape[0]:
        raise ValueError(f"ptg_loss: is_normal has {mask.numel()} entries for a batch of {features[0].shape[0]}")
    count = mask.sum().clamp(min=1).to(torch.float32)
    total = features[0].new_zeros((), dtype=torch.float32)
    for target, generated in zip(features, pseudo_templates):
        per_sample = (generated.float() - target.float()).pow(2).flatten(1).mean(dim=1)  # fp16 overflows
        total = total + torch.where(mask, per_sample, torch.zeros_like(per_sample)).sum() / count
    return total
