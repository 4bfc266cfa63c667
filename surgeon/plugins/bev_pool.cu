// BEVPool: BEVDet v2 / CUDA-BEVFusion interval bev_pool into a [1, C, bev_h, bev_w] map.
//
// One thread per (interval, channel) sums depth * feature over the interval's points (sorted by BEV
// cell, so no atomics) and writes the interval's cell; cells without an interval stay zero.
#include "common.cuh"

namespace {

template <typename T>
__global__ void bev_pool_kernel(const T* __restrict__ depth, const T* __restrict__ feat,
                                const int32_t* __restrict__ ranks_depth, const int32_t* __restrict__ ranks_feat,
                                const int32_t* __restrict__ ranks_bev, const int32_t* __restrict__ interval_starts,
                                const int32_t* __restrict__ interval_lengths, T* __restrict__ output, int intervals,
                                int channels, int cells) {
  const long long total = static_cast<long long>(intervals) * channels;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const int interval = static_cast<int>(i / channels), c = static_cast<int>(i % channels);
    const int start = interval_starts[interval], length = interval_lengths[interval];
    float sum = 0.f;
    for (int point = start; point < start + length; ++point) {
      sum += surgeon::to_float(depth[ranks_depth[point]]) *
             surgeon::to_float(feat[static_cast<long long>(ranks_feat[point]) * channels + c]);
    }
    output[static_cast<long long>(c) * cells + ranks_bev[start]] = surgeon::from_float<T>(sum);
  }
}

template <typename T>
cudaError_t launch(const void* depth, const void* feat, const int32_t* ranks_depth, const int32_t* ranks_feat,
                   const int32_t* ranks_bev, const int32_t* interval_starts, const int32_t* interval_lengths,
                   void* output, int intervals, int channels, int bev_h, int bev_w, cudaStream_t stream) {
  const int cells = bev_h * bev_w;
  cudaError_t status = cudaMemsetAsync(output, 0, sizeof(T) * static_cast<size_t>(channels) * cells, stream);
  const long long total = static_cast<long long>(intervals) * channels;
  if (status != cudaSuccess || total == 0) return status;
  bev_pool_kernel<T><<<surgeon::blocks_for(total), surgeon::kThreads, 0, stream>>>(
      static_cast<const T*>(depth), static_cast<const T*>(feat), ranks_depth, ranks_feat, ranks_bev, interval_starts,
      interval_lengths, static_cast<T*>(output), intervals, channels, cells);
  return cudaGetLastError();
}

}  // namespace

extern "C" cudaError_t surgeon_bev_pool(surgeon_dtype dtype, const void* depth, const void* feat,
                                        const int32_t* ranks_depth, const int32_t* ranks_feat,
                                        const int32_t* ranks_bev, const int32_t* interval_starts,
                                        const int32_t* interval_lengths, void* output, int intervals, int channels,
                                        int bev_h, int bev_w, cudaStream_t stream) {
  auto run = dtype == SURGEON_FLOAT16 ? launch<__half> : launch<float>;
  return run(depth, feat, ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths, output, intervals,
             channels, bev_h, bev_w, stream);
}
