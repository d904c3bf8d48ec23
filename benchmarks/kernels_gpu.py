"""The plugins' PTX kernels vs torchvision's CUDA roi_align (model routing) on a GPU, FP32 and FP16.

Same inputs for both, CUDA-event timing, median of --repeat; also prints the max difference. Exits with a message
(status 0) where there is no CUDA device, so it can sit in a benchmark sweep on CPU machines.

    .venv/bin/python benchmarks/kernels_gpu.py [--height 800 --width 1344 --rois 1000 --channels 256]
"""
from __future__ import annotations

import argparse
import statistics
from typing import Callable

import torch

from engines import custom_ops as co
from engines import tensorrt_plugins as tp
from training.model import roi_semantics as rs


def _cuda_time(fn: Callable[[], object], repeat: int) -> float:
    fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end))
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1344)
    parser.add_argument("--rois", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device here: nothing to measure (run on a GPU machine)")
        return 0
    major, minor = torch.cuda.get_device_capability()
    arch = f"sm_{major}{minor}"
    gen = torch.Generator().manual_seed(0)
    side = torch.exp(torch.empty(args.rois, 2).uniform_(2.5, 6.5, generator=gen))
    centre = torch.rand(args.rois, 2, generator=gen) * torch.tensor([float(args.width), float(args.height)])
    rois = torch.cat([torch.zeros(args.rois, 1), centre - side / 2, centre + side / 2], dim=1).cuda().contiguous()
    image_hw = (args.height, args.width)
    print(f"{torch.cuda.get_device_name()} ({arch}); input {args.height}x{args.width}, C={args.channels}, "
          f"R={args.rois}, 7x7; median of {args.repeat} (ms)")
    for dtype in (torch.float32, torch.float16):
        feats = [torch.randn(1, args.channels, args.height // s, args.width // s, generator=gen).to(dtype).cuda()
                 for s in rs.ROI_STRIDES]
        feature_type = "f16" if dtype == torch.float16 else "f32"
        for op, mode in ((tp.MULTILEVEL_OP, None), (tp.CONTEXT_OP, "concat")):
            defines = tp.kernel_defines(rs.ROI_ALIGN.spatial_scales, 7, 2, 1, rs.CANONICAL_SCALE, rs.LEVEL_EPS,
                                        **({"k": rs.CONTEXT_SCALE, "mode": mode} if mode else {}))
            kernel = tp.PTXPoolKernel(op, defines, arch=arch, feature_type=feature_type)
            factor = 2 if mode == "concat" else 1
            out = torch.empty(args.rois, args.channels * factor, 7, 7, dtype=dtype, device="cuda")
            stream = torch.cuda.current_stream().cuda_stream

            def ptx() -> None:
                kernel.launch([f.data_ptr() for f in feats], [tuple(f.shape[2:]) for f in feats], args.channels,
                              rois.data_ptr(), args.rois, out.data_ptr(), image_hw=image_hw, stream=stream)

            if mode:
                def ref() -> torch.Tensor:
                    return co.context_roi_align(feats, rois, image_height=image_hw[0], image_width=image_hw[1])
            else:
                def ref() -> torch.Tensor:
                    return co.multilevel_roi_align(feats, rois)

            t_ptx, t_ref = _cuda_time(ptx, args.repeat), _cuda_time(ref, args.repeat)
            diff = (out.float() - ref().float()).abs().max().item()
            print(f"  {op:<20s} {feature_type}: PTX {t_ptx:7.3f}  torchvision {t_ref:7.3f}  "
                  f"speed-up {t_ref / t_ptx:5.2f}x  max|diff| {diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
