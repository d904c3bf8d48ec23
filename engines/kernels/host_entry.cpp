// Host (CPU) entry points over the very same pooling core as the CUDA kernels, for tests and benchmarks.
//
// Built by engines/host_kernels.py with the system C++ compiler and loaded through ctypes; the loops below
// are the CPU twin of the one-thread-per-element CUDA kernels in multilevel_roi_align.cu /
// context_roi_align.cu. Returns 0 on success, a negative code on bad arguments (checked again in Python with
// a clear message).
#include "roi_align_core.h"

namespace {

template <typename T>
int run(const T* const* feats, const int* heights, const int* widths, int channels, const float* rois,
        long num_rois, const rddn::PoolingParams* params, int context, T* out) {
    if (params == nullptr || params->num_levels < 1 || params->num_levels > RDDN_MAX_LEVELS) return -1;
    if (params->output_size < 1 || channels < 1 || num_rois < 0) return -2;
    rddn::LevelView<T> levels[RDDN_MAX_LEVELS];
    for (int l = 0; l < params->num_levels; ++l) {
        if (feats[l] == nullptr || heights[l] < 1 || widths[l] < 1) return -3;
        levels[l].data = feats[l];
        levels[l].height = heights[l];
        levels[l].width = widths[l];
    }
    const long size = params->output_size;
    const long total = num_rois * rddn::output_channels(channels, *params, context != 0) * size * size;
    for (long index = 0; index < total; ++index) {
        rddn::pool_linear_index(index, levels, channels, rois, *params, context != 0, out);
    }
    return 0;
}

}  // namespace

extern "C" {

int rddn_pool_f32(const float* const* feats, const int* heights, const int* widths, int channels, const float* rois,
                  long num_rois, const rddn::PoolingParams* params, int context, float* out) {
    return run(feats, heights, widths, channels, rois, num_rois, params, context, out);
}

// FP16 features and output as raw binary16 bits (numpy float16), float boxes, float accumulation.
int rddn_pool_f16(const rddn::half_t* const* feats, const int* heights, const int* widths, int channels,
                  const float* rois, long num_rois, const rddn::PoolingParams* params, int context,
                  rddn::half_t* out) {
    return run(feats, heights, widths, channels, rois, num_rois, params, context, out);
}

// Single-level, single-box helpers exposing the core's pieces so tests can pin each one separately.
int rddn_map_roi_level(float x1, float y1, float x2, float y2, const rddn::PoolingParams* params) {
    return rddn::map_roi_level(x1, y1, x2, y2, *params);
}

void rddn_context_box(float x1, float y1, float x2, float y2, const rddn::PoolingParams* params, float* out) {
    rddn::context_box(x1, y1, x2, y2, *params, out);
}

int rddn_abi_version(void) { return 1; }

}  // extern "C"
