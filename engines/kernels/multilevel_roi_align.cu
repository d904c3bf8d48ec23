// rddn::MultiLevelRoIAlign: features P2..P5 (NCHW, fp32 or fp16), rois float32 [R, 5] (batch, x1, y1, x2, y2
// in input pixels) -> [R, C, P, P] in the feature type; each RoI pooled from its own FPN level.
// image_height / image_width are unused here (no context box) but kept so both ops share one signature.
#include "pool_kernel.cuh"

RDDN_DEFINE_POOL_KERNEL(rddn_multilevel_roi_align_f32, float, false)
RDDN_DEFINE_POOL_KERNEL(rddn_multilevel_roi_align_f16, __half, false)
