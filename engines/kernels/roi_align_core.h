// RDDN region pooling core: ONE source for the CUDA kernels and the host (CPU) test build.
//
// Reproduces, element by element, what the model computes in PyTorch (training/model/roi_semantics.py):
//   * torchvision.ops.roi_align (aligned=True half-pixel offset, sampling_ratio=2 fixed grid, per-level spatial
//     scale, zero outside [-1, H] x [-1, W], clamping of the low corner and of the last row/column as torchvision
//     does), accumulated in float whatever the feature type;
//   * the FPN level mapping floor(log2(sqrt(w*h) / canonical_scale + eps)) clamped to [0, num_levels);
//   * the context box (cx, cy, k*w, k*h) clipped to the unpadded image [0, W] x [0, H], pooled from the RoI's
//     own level.
// Box coordinates are always float (FP16 boxes are too coarse above ~1024 px); features are float or half.
//
// Everything is __host__ __device__ (macro-guarded) so plain g++ compiles this very file for the CPU tests
// (engines/host_kernels.py) and nvcc/NVRTC compile it to PTX for the TensorRT plugins.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define RDDN_HD __host__ __device__ __forceinline__
#include <cuda_fp16.h>
namespace rddn {
typedef __half half_t;
RDDN_HD float to_float(float v) { return v; }
RDDN_HD float to_float(__half v) { return __half2float(v); }
template <typename T> RDDN_HD T from_float(float v);
template <> RDDN_HD float from_float<float>(float v) { return v; }
template <> RDDN_HD __half from_float<__half>(float v) { return __float2half_rn(v); }
RDDN_HD float rddn_floor(float v) { return floorf(v); }
RDDN_HD float rddn_sqrt(float v) { return sqrtf(v); }
RDDN_HD float rddn_log2(float v) { return log2f(v); }
RDDN_HD float rddn_ceil(float v) { return ceilf(v); }
}  // namespace rddn
#else
#include <cmath>
#define RDDN_HD inline
namespace rddn {
typedef _Float16 half_t;  // GCC >= 12 on x86-64 / aarch64: IEEE binary16, same bits as CUDA's __half
RDDN_HD float to_float(float v) { return v; }
RDDN_HD float to_float(_Float16 v) { return static_cast<float>(v); }
template <typename T> RDDN_HD T from_float(float v) { return static_cast<T>(v); }
RDDN_HD float rddn_floor(float v) { return std::floor(v); }
RDDN_HD float rddn_sqrt(float v) { return std::sqrt(v); }
RDDN_HD float rddn_log2(float v) { return std::log2(v); }
RDDN_HD float rddn_ceil(float v) { return std::ceil(v); }
}  // namespace rddn
#endif

// Defaults of training/model/roi_semantics.py. tests/engines/test_kernels.py checks these against the Python
// module, and every entry point also takes them as parameters (the ONNX node attributes), so a model with a
// different setting still pools exactly as it was trained.
#define RDDN_MAX_LEVELS 4
#define RDDN_OUTPUT_SIZE 7
#define RDDN_SAMPLING_RATIO 2
#define RDDN_ALIGNED 1
#define RDDN_CANONICAL_SCALE 56.0f
#define RDDN_LEVEL_EPS 1e-6f
#define RDDN_CONTEXT_SCALE 1.5f
#define RDDN_STRIDE_P2 4
#define RDDN_STRIDE_P3 8
#define RDDN_STRIDE_P4 16
#define RDDN_STRIDE_P5 32

namespace rddn {

enum ContextMode { kConcat = 0, kContextOnly = 1 };

// Every switch of the pooling, filled from the ONNX attributes (host: ctypes struct; device: kernel args and
// compile-time defines). Plain old data so that ctypes can mirror it field by field.
struct PoolingParams {
    int output_size;      // pooled height = width (7)
    int sampling_ratio;   // samples per bin and axis; <= 0: adaptive ceil(roi_size / output_size) as torchvision
    int aligned;          // 1: half-pixel offset (aligned=True)
    int num_levels;       // FPN levels given (<= RDDN_MAX_LEVELS)
    float spatial_scales[RDDN_MAX_LEVELS];
    float canonical_scale;
    float level_eps;
    float k;              // context scale
    float image_height;   // unpadded image size the context box is clipped to
    float image_width;
    int mode;             // ContextMode
};

// One feature level of one batch: NCHW, the pointer is to element (0, 0, 0, 0).
template <typename T>
struct LevelView {
    const T* data;
    int height;
    int width;
};

// torchvision's bilinear_interpolate: zero outside [-1, H] x [-1, W]; the low corner clamps to 0 and the last
// row/column is replicated.
template <typename T>
RDDN_HD float bilinear_interpolate(const T* plane, int height, int width, float y, float x) {
    if (y < -1.0f || y > static_cast<float>(height) || x < -1.0f || x > static_cast<float>(width)) {
        return 0.0f;
    }
    if (y <= 0.0f) y = 0.0f;
    if (x <= 0.0f) x = 0.0f;
    int y_low = static_cast<int>(y);
    int x_low = static_cast<int>(x);
    int y_high;
    int x_high;
    if (y_low >= height - 1) {
        y_high = y_low = height - 1;
        y = static_cast<float>(y_low);
    } else {
        y_high = y_low + 1;
    }
    if (x_low >= width - 1) {
        x_high = x_low = width - 1;
        x = static_cast<float>(x_low);
    } else {
        x_high = x_low + 1;
    }
    const float ly = y - static_cast<float>(y_low);
    const float lx = x - static_cast<float>(x_low);
    const float hy = 1.0f - ly;
    const float hx = 1.0f - lx;
    const float w1 = hy * hx;
    const float w2 = hy * lx;
    const float w3 = ly * hx;
    const float w4 = ly * lx;
    const float v1 = to_float(plane[y_low * width + x_low]);
    const float v2 = to_float(plane[y_low * width + x_high]);
    const float v3 = to_float(plane[y_high * width + x_low]);
    const float v4 = to_float(plane[y_high * width + x_high]);
    return w1 * v1 + w2 * v2 + w3 * v3 + w4 * v4;
}

// One output element (ph, pw) of RoIAlign of box (x1, y1, x2, y2) in input pixels on one channel plane.
template <typename T>
RDDN_HD float roi_align_element(const T* plane, int height, int width, float spatial_scale, float x1, float y1,
                                float x2, float y2, int ph, int pw, const PoolingParams& p) {
    const float offset = p.aligned ? 0.5f : 0.0f;
    const float roi_start_w = x1 * spatial_scale - offset;
    const float roi_start_h = y1 * spatial_scale - offset;
    const float roi_end_w = x2 * spatial_scale - offset;
    const float roi_end_h = y2 * spatial_scale - offset;
    float roi_width = roi_end_w - roi_start_w;
    float roi_height = roi_end_h - roi_start_h;
    if (!p.aligned) {
        roi_width = roi_width > 1.0f ? roi_width : 1.0f;
        roi_height = roi_height > 1.0f ? roi_height : 1.0f;
    }
    const float pooled = static_cast<float>(p.output_size);
    const float bin_size_h = roi_height / pooled;
    const float bin_size_w = roi_width / pooled;
    const int grid_h = p.sampling_ratio > 0 ? p.sampling_ratio : static_cast<int>(rddn_ceil(roi_height / pooled));
    const int grid_w = p.sampling_ratio > 0 ? p.sampling_ratio : static_cast<int>(rddn_ceil(roi_width / pooled));
    const int samples = grid_h * grid_w;
    const float count = static_cast<float>(samples > 1 ? samples : 1);

    float sum = 0.0f;
    for (int iy = 0; iy < grid_h; ++iy) {
        const float y = roi_start_h + static_cast<float>(ph) * bin_size_h +
                        (static_cast<float>(iy) + 0.5f) * bin_size_h / static_cast<float>(grid_h);
        for (int ix = 0; ix < grid_w; ++ix) {
            const float x = roi_start_w + static_cast<float>(pw) * bin_size_w +
                            (static_cast<float>(ix) + 0.5f) * bin_size_w / static_cast<float>(grid_w);
            sum += bilinear_interpolate(plane, height, width, y, x);
        }
    }
    return sum / count;
}

// FPN level index (0 -> P2) of a box in input pixels: roi_semantics.map_roi_levels.
RDDN_HD int map_roi_level(float x1, float y1, float x2, float y2, const PoolingParams& p) {
    float w = x2 - x1;
    float h = y2 - y1;
    w = w > 0.0f ? w : 0.0f;
    h = h > 0.0f ? h : 0.0f;
    const float scale = rddn_sqrt(w * h);
    float level = rddn_floor(rddn_log2(scale / p.canonical_scale + p.level_eps));
    const float top = static_cast<float>(p.num_levels - 1);
    level = level < 0.0f ? 0.0f : (level > top ? top : level);
    return static_cast<int>(level);
}

RDDN_HD float clip(float v, float hi) { return v < 0.0f ? 0.0f : (v > hi ? hi : v); }

// roi_semantics.context_boxes: concentric k-scaled box clipped to [0, W] x [0, H].
RDDN_HD void context_box(float x1, float y1, float x2, float y2, const PoolingParams& p, float out[4]) {
    const float cx = (x1 + x2) * 0.5f;
    const float cy = (y1 + y2) * 0.5f;
    const float half_k = 0.5f * p.k;
    const float half_w = (x2 - x1) * half_k;
    const float half_h = (y2 - y1) * half_k;
    out[0] = clip(cx - half_w, p.image_width);
    out[1] = clip(cy - half_h, p.image_height);
    out[2] = clip(cx + half_w, p.image_width);
    out[3] = clip(cy + half_h, p.image_height);
}

// Level lookups with constant indices only: lets nvcc keep the four views and scales in registers instead of
// spilling an indexed array to local memory. `level` is already clamped to [0, num_levels).
template <typename T>
RDDN_HD LevelView<T> level_view(const LevelView<T>* levels, int level) {
    return level == 0 ? levels[0] : (level == 1 ? levels[1] : (level == 2 ? levels[2] : levels[3]));
}

RDDN_HD float level_scale(const PoolingParams& p, int level) {
    return level == 0 ? p.spatial_scales[0]
                      : (level == 1 ? p.spatial_scales[1] : (level == 2 ? p.spatial_scales[2] : p.spatial_scales[3]));
}

// One element (r, c, ph, pw) of the pooled output, for both ops:
//   multi-level (context=false): out[R, C, P, P], the RoI on its own level;
//   context (context=true): out[R, 2C, P, P] (concat: RoI channels then context channels) or [R, C, P, P]
//   (context_only); the context box is pooled from the RoI's level.
// `levels[l]` views level l of the whole batch; `channels` is C of the features.
template <typename T>
RDDN_HD float pooled_element(const LevelView<T>* levels, int channels, const float* roi, int c, int ph, int pw,
                             const PoolingParams& p, bool context) {
    const int batch = static_cast<int>(roi[0]);
    float box[4] = {roi[1], roi[2], roi[3], roi[4]};
    const int level = map_roi_level(box[0], box[1], box[2], box[3], p);
    int channel = c;
    bool use_context = false;
    if (context) {
        if (p.mode == kContextOnly) {
            use_context = true;
        } else if (c >= channels) {
            use_context = true;
            channel = c - channels;
        }
    }
    if (use_context) {
        float ctx[4];
        context_box(box[0], box[1], box[2], box[3], p, ctx);
        box[0] = ctx[0];
        box[1] = ctx[1];
        box[2] = ctx[2];
        box[3] = ctx[3];
    }
    const LevelView<T> view = level_view(levels, level);
    const long plane_size = static_cast<long>(view.height) * view.width;
    const T* plane = view.data + (static_cast<long>(batch) * channels + channel) * plane_size;
    return roi_align_element(plane, view.height, view.width, level_scale(p, level), box[0], box[1], box[2],
                             box[3], ph, pw, p);
}

// Channels of the output for the given op / mode.
RDDN_HD int output_channels(int channels, const PoolingParams& p, bool context) {
    return (context && p.mode == kConcat) ? 2 * channels : channels;
}

// Linear output index -> element: the loop body shared by the CUDA kernels (one thread per element) and the
// host entry points (a plain loop).
template <typename T>
RDDN_HD void pool_linear_index(long index, const LevelView<T>* levels, int channels, const float* rois,
                               const PoolingParams& p, bool context, T* out) {
    const int size = p.output_size;
    const int out_channels = output_channels(channels, p, context);
    const int pw = static_cast<int>(index % size);
    const int ph = static_cast<int>((index / size) % size);
    const int c = static_cast<int>((index / (static_cast<long>(size) * size)) % out_channels);
    const long r = index / (static_cast<long>(size) * size * out_channels);
    out[index] = from_float<T>(pooled_element(levels, channels, rois + r * 5, c, ph, pw, p, context));
}

}  // namespace rddn
