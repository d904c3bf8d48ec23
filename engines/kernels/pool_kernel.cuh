// The CUDA side of the pooling core: compile-time attributes and the one-thread-per-element kernel body.
//
// TensorRT's AOT plugins do not serialize plugin attributes into the engine and pass only int32 scalars to the
// kernel, so the float attributes (spatial scales, canonical scale, level eps, k) and the fixed switches
// (output size, sampling ratio, aligned, mode, number of levels) are compiled into the PTX with -D defines
// (engines/tensorrt_plugins.py builds one PTX per attribute set). Shapes and the image size arrive as int32
// kernel arguments. Argument order is TensorRT's AOT convention: input pointers, int32 scalars, output pointer.
#pragma once
#include "roi_align_core.h"

#ifndef RDDN_ATTR_OUTPUT_SIZE
#define RDDN_ATTR_OUTPUT_SIZE RDDN_OUTPUT_SIZE
#endif
#ifndef RDDN_ATTR_SAMPLING_RATIO
#define RDDN_ATTR_SAMPLING_RATIO RDDN_SAMPLING_RATIO
#endif
#ifndef RDDN_ATTR_ALIGNED
#define RDDN_ATTR_ALIGNED RDDN_ALIGNED
#endif
#ifndef RDDN_ATTR_NUM_LEVELS
#define RDDN_ATTR_NUM_LEVELS RDDN_MAX_LEVELS
#endif
#ifndef RDDN_ATTR_SCALE0
#define RDDN_ATTR_SCALE0 (1.0f / RDDN_STRIDE_P2)
#endif
#ifndef RDDN_ATTR_SCALE1
#define RDDN_ATTR_SCALE1 (1.0f / RDDN_STRIDE_P3)
#endif
#ifndef RDDN_ATTR_SCALE2
#define RDDN_ATTR_SCALE2 (1.0f / RDDN_STRIDE_P4)
#endif
#ifndef RDDN_ATTR_SCALE3
#define RDDN_ATTR_SCALE3 (1.0f / RDDN_STRIDE_P5)
#endif
#ifndef RDDN_ATTR_CANONICAL_SCALE
#define RDDN_ATTR_CANONICAL_SCALE RDDN_CANONICAL_SCALE
#endif
#ifndef RDDN_ATTR_LEVEL_EPS
#define RDDN_ATTR_LEVEL_EPS RDDN_LEVEL_EPS
#endif
#ifndef RDDN_ATTR_K
#define RDDN_ATTR_K RDDN_CONTEXT_SCALE
#endif
#ifndef RDDN_ATTR_MODE
#define RDDN_ATTR_MODE 0
#endif

namespace rddn {

__device__ __forceinline__ PoolingParams compiled_params(int image_height, int image_width) {
    PoolingParams p;
    p.output_size = RDDN_ATTR_OUTPUT_SIZE;
    p.sampling_ratio = RDDN_ATTR_SAMPLING_RATIO;
    p.aligned = RDDN_ATTR_ALIGNED;
    p.num_levels = RDDN_ATTR_NUM_LEVELS;
    p.spatial_scales[0] = RDDN_ATTR_SCALE0;
    p.spatial_scales[1] = RDDN_ATTR_SCALE1;
    p.spatial_scales[2] = RDDN_ATTR_SCALE2;
    p.spatial_scales[3] = RDDN_ATTR_SCALE3;
    p.canonical_scale = RDDN_ATTR_CANONICAL_SCALE;
    p.level_eps = RDDN_ATTR_LEVEL_EPS;
    p.k = RDDN_ATTR_K;
    p.image_height = static_cast<float>(image_height);
    p.image_width = static_cast<float>(image_width);
    p.mode = RDDN_ATTR_MODE;
    return p;
}

// Grid-stride loop over the R x C_out x P x P output: any grid size is correct, TensorRT's launch uses
// ceil(total / block).
template <typename T>
__device__ __forceinline__ void pool_kernel_body(const T* p2, const T* p3, const T* p4, const T* p5,
                                                 const float* rois, int num_rois, int channels, int h2, int w2,
                                                 int h3, int w3, int h4, int w4, int h5, int w5, int image_height,
                                                 int image_width, T* out, bool context) {
    const PoolingParams p = compiled_params(image_height, image_width);
    const LevelView<T> levels[RDDN_MAX_LEVELS] = {{p2, h2, w2}, {p3, h3, w3}, {p4, h4, w4}, {p5, h5, w5}};
    const long size = p.output_size;
    const long total = static_cast<long>(num_rois) * output_channels(channels, p, context) * size * size;
    const long stride = static_cast<long>(blockDim.x) * gridDim.x;
    for (long index = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; index < total; index += stride) {
        pool_linear_index(index, levels, channels, rois, p, context, out);
    }
}

}  // namespace rddn

// extern "C" entry points (unmangled names the plugins refer to), one per feature type.
#define RDDN_DEFINE_POOL_KERNEL(NAME, T, CONTEXT)                                                              \
    extern "C" __global__ void NAME(const T* p2, const T* p3, const T* p4, const T* p5, const float* rois,      \
                                    int num_rois, int channels, int h2, int w2, int h3, int w3, int h4, int w4, \
                                    int h5, int w5, int image_height, int image_width, T* out) {                \
        rddn::pool_kernel_body<T>(p2, p3, p4, p5, rois, num_rois, channels, h2, w2, h3, w3, h4, w4, h5, w5,     \
                                  image_height, image_width, out, CONTEXT);                                     \
    }
