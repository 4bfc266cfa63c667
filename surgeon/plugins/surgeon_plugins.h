/* surgeon_plugins.h: the C API of libsurgeon_plugins.so, one launch function per plugin.
 *
 * Every function takes device pointers, the sizes, and the CUDA stream to launch on; it returns the
 * launch's cudaError_t and never synchronises. `dtype` says what the float tensors hold (float32 or
 * float16; index tensors have fixed types, see each function). Layouts are the plugin specs' (see
 * surgeon/plugins/specs.py and docs/plugins.md): contiguous, row-major.
 */
#ifndef SURGEON_PLUGINS_H
#define SURGEON_PLUGINS_H

#include <stdint.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { SURGEON_FLOAT32 = 0, SURGEON_FLOAT16 = 1 } surgeon_dtype;

/* mmcv's multi-scale deformable attention.
 * value [batch, keys, heads, channels]; spatial_shapes int64 [levels, 2] (h, w); level_start_index int64
 * [levels]; sampling_locations [batch, queries, heads, levels, points, 2]; attention_weights
 * [batch, queries, heads, levels, points]; output [batch, queries, heads * channels]. */
cudaError_t surgeon_msda(surgeon_dtype dtype, const void* value, const int64_t* spatial_shapes,
                         const int64_t* level_start_index, const void* sampling_locations,
                         const void* attention_weights, void* output, int batch, int keys, int heads, int channels,
                         int levels, int queries, int points, cudaStream_t stream);

/* torch.nn.functional.grid_sample: input [n, c, h, w], grid [n, out_h, out_w, 2], output [n, c, out_h, out_w].
 * interpolation_mode 0 bilinear, 1 nearest; padding_mode 0 zeros, 1 border, 2 reflection. */
cudaError_t surgeon_grid_sample_2d(surgeon_dtype dtype, const void* input, const void* grid, void* output, int n,
                                   int c, int h, int w, int out_h, int out_w, int interpolation_mode,
                                   int padding_mode, int align_corners, cudaStream_t stream);

/* BEVDet v2 / CUDA-BEVFusion interval bev_pool: depth [cams, bins, h, w], feat [cams, h, w, channels],
 * int32 ranks_depth / ranks_feat / ranks_bev [points], int32 interval_starts / interval_lengths [intervals];
 * output [1, channels, bev_h, bev_w], zeroed first (on `stream`). */
cudaError_t surgeon_bev_pool(surgeon_dtype dtype, const void* depth, const void* feat, const int32_t* ranks_depth,
                             const int32_t* ranks_feat, const int32_t* ranks_bev, const int32_t* interval_starts,
                             const int32_t* interval_lengths, void* output, int intervals, int channels, int bev_h,
                             int bev_w, cudaStream_t stream);

/* torchvision's rotate: input/output [n, c, h, w] (n = 1 for a [c, h, w] map); angle float32 [1] degrees
 * counter-clockwise; center float32 [2] (x, y) in pixels; zero fill. interpolation_mode 0 bilinear, 1 nearest. */
cudaError_t surgeon_rotate(surgeon_dtype dtype, const void* input, const float* angle, const float* center,
                           void* output, int n, int c, int h, int w, int interpolation_mode, cudaStream_t stream);

/* Sparse4D v3's deformable aggregation: mc_ms_feat [batch, features, channels]; spatial_shape int32
 * [cams, scales, 2]; scale_start_index int32 [cams, scales]; sampling_location [batch, anchors, points, cams, 2];
 * weights [batch, anchors, points, cams, scales, groups]; output [batch, anchors, channels]. */
cudaError_t surgeon_deformable_aggregation(surgeon_dtype dtype, const void* mc_ms_feat, const int32_t* spatial_shape,
                                           const int32_t* scale_start_index, const void* sampling_location,
                                           const void* weights, void* output, int batch, int features, int channels,
                                           int cams, int scales, int anchors, int points, int groups,
                                           cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* SURGEON_PLUGINS_H */
