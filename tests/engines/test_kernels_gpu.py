"""The plugins' PTX kernels on a real GPU against torchvision's CUDA roi_align (model routing), FP32 and FP16.

Runs only where a CUDA device and cuda-python are present (a lent GPU machine); skipped with the reason elsewhere.
"""
from __future__ import annotations

import importlib.util

import pytest
import torch

from engines import custom_ops as co
from engines import tensorrt_plugins as tp
from training.model import roi_semantics as rs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
    pytest.mark.skipif(importlib.util.find_spec("cuda") is None, reason="cuda-python is not installed"),
]
IMAGE = (800, 1344)


def _inputs(dtype: torch.dtype, rois: int = 500, channels: int = 16):
    gen = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, channels, IMAGE[0] // s, IMAGE[1] // s, generator=gen).to(dtype).cuda()
             for s in rs.ROI_STRIDES]
    side = torch.exp(torch.empty(rois, 2).uniform_(2.0, 7.0, generator=gen))
    centre = torch.rand(rois, 2, generator=gen) * torch.tensor([IMAGE[1] + 40.0, IMAGE[0] + 40.0]) - 20.0
    boxes = torch.cat([centre - side / 2, centre + side / 2], dim=1)
    batch = (torch.arange(rois) % 2).float()[:, None]
    return feats, torch.cat([batch, boxes], dim=1).cuda().contiguous()


def _run_ptx(op: str, feats, rois, mode: str = "concat"):
    major, minor = torch.cuda.get_device_capability()
    defines = tp.kernel_defines(rs.ROI_ALIGN.spatial_scales, 7, 2, 1, rs.CANONICAL_SCALE, rs.LEVEL_EPS,
                                **({"k": rs.CONTEXT_SCALE, "mode": mode} if op == tp.CONTEXT_OP else {}))
    feature_type = "f16" if feats[0].dtype == torch.float16 else "f32"
    kernel = tp.PTXPoolKernel(op, defines, arch=f"sm_{major}{minor}", feature_type=feature_type)
    channels = feats[0].shape[1]
    factor = 2 if op == tp.CONTEXT_OP and mode == "concat" else 1
    out = torch.empty(rois.shape[0], channels * factor, 7, 7, dtype=feats[0].dtype, device="cuda")
    kernel.launch([f.data_ptr() for f in feats], [tuple(f.shape[2:]) for f in feats], channels, rois.data_ptr(),
                  rois.shape[0], out.data_ptr(), image_hw=IMAGE,
                  stream=torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    return out


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float16, 2e-3)])
def test_multilevel_ptx_matches_torchvision_cuda(dtype: torch.dtype, tol: float) -> None:
    feats, rois = _inputs(dtype)
    expected = co.multilevel_roi_align(feats, rois).float()
    got = _run_ptx(tp.MULTILEVEL_OP, feats, rois).float()
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("mode", ["concat", "context_only"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float16, 2e-3)])
def test_context_ptx_matches_torchvision_cuda(dtype: torch.dtype, tol: float, mode: str) -> None:
    feats, rois = _inputs(dtype)
    expected = co.context_roi_align(feats, rois, image_height=IMAGE[0], image_width=IMAGE[1], mode=mode).float()
    got = _run_ptx(tp.CONTEXT_OP, feats, rois, mode).float()
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
