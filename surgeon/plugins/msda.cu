// MultiScaleDeformableAttn: mmcv's multi-scale deformable attention, one thread per output element.
//
// output[b, q, head * channels + c] = sum over levels l and points p of
//   attention_weights[b, q, head, l, p] * bilinear(value level l, head, channel c at
//   (loc_y * h - 0.5, loc_x * w - 0.5)), zero outside the level (grid_sample align_corners=False).
// Consecutive threads take consecutive channels, so the value reads of a warp are contiguous.
#include "common.cuh"

namespace {

template <typename T>
__global__ void msda_kernel(const T* __restrict__ value, const int64_t* __restrict__ spatial_shapes,
                            const int64_t* __restrict__ level_start_index, const T* __restrict__ locations,
                            const T* __restrict__ weights, T* __restrict__ output, int batch, int keys, int heads,
                            int channels, int levels, int queries, int points) {
  const long long total = static_cast<long long>(batch) * queries * heads * channels;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(i % channels);
    const int head = static_cast<int>((i / channels) % heads);
    const long long bq = i / (static_cast<long long>(channels) * heads);  // b * queries + q
    const int b = static_cast<int>(bq / queries);
    const long long pixel_stride = static_cast<long long>(heads) * channels;
    const T* value_bh = value + static_cast<long long>(b) * keys * pixel_stride + head * channels + c;
    const long long sample0 = (bq * heads + head) * levels * points;  // index of (b, q, head, 0, 0)
    float sum = 0.f;
    for (int l = 0; l < levels; ++l) {
      const int h = static_cast<int>(spatial_shapes[2 * l]), w = static_cast<int>(spatial_shapes[2 * l + 1]);
      const T* level = value_bh + level_start_index[l] * pixel_stride;
      for (int p = 0; p < points; ++p) {
        const long long s = sample0 + l * points + p;
        const float x = surgeon::to_float(locations[2 * s]) * w - 0.5f;
        const float y = surgeon::to_float(locations[2 * s + 1]) * h - 0.5f;
        if (y > -1.f && x > -1.f && y < h && x < w) {
          sum += surgeon::to_float(weights[s]) * surgeon::bilinear(level, h, w, pixel_stride, y, x);
        }
      }
    }
    output[i] = surgeon::from_float<T>(sum);
  }
}

template <typename T>
cudaError_t launch(const void* value, const int64_t* spatial_shapes, const int64_t* level_start_index,
                   const void* locations, const void* weights, void* output, int batch, int keys, int heads,
                   int channels, int levels, int queries, int points, cudaStream_t stream) {
  const long long total = static_cast<long long>(batch) * queries * heads * channels;
  if (total == 0) return cudaSuccess;
  msda_kernel<T><<<surgeon::blocks_for(total), surgeon::kThreads, 0, stream>>>(
      static_cast<const T*>(value), spatial_shapes, level_start_index, static_cast<const T*>(locations),
      static_cast<const T*>(weights), static_cast<T*>(output), batch, keys, heads, channels, levels, queries, points);
  return cudaGetLastError();
}

}  // namespace

extern "C" cudaError_t surgeon_msda(surgeon_dtype dtype, const void* value, const int64_t* spatial_shapes,
                                    const int64_t* level_start_index, const void* sampling_locations,
                                    const void* attention_weights, void* output, int batch, int keys, int heads,
                                    int channels, int levels, int queries, int points, cudaStream_t stream) {
  auto run = dtype == SURGEON_FLOAT16 ? launch<__half> : launch<float>;
  return run(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, output, batch, keys,
             heads, channels, levels, queries, points, stream);
}
