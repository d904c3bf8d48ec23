// rddn::ContextRoIAlign: as MultiLevelRoIAlign, plus the RoI's concentric k-scaled context box clipped to the
// image (image_height x image_width), pooled from the RoI's level, in the same launch.
// mode concat (RDDN_ATTR_MODE=0) -> [R, 2C, P, P]: channels 0..C-1 the RoI, C..2C-1 its context;
// mode context_only (RDDN_ATTR_MODE=1) -> [R, C, P, P]: the context box alone (the paper's CR* ablation).
#include "pool_kernel.cuh"

RDDN_DEFINE_POOL_KERNEL(rddn_context_roi_align_f32, float, true)
RDDN_DEFINE_POOL_KERNEL(rddn_context_roi_align_f16, __half, true)
