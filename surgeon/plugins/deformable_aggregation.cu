// DeformableAggregation: Sparse4D v3's deformable_aggregation, one thread per output element.
//
// output[b, a, c] = sum over points p, cameras k, scales s of
//   weights[b, a, p, k, s, c / (channels / groups)] * bilinear(scale s of camera k, channel c at
//   (loc_y * h - 0.5, loc_x * w - 0.5)), locations outside the open (0, 1) square skipped.
// Sparse4D's kernel uses one thread per (b, a, p, k, s, c) and atomicAdd; summing in the thread
// needs no atomics and gives the same result for every run.
#include "common.cuh"

namespace {

template <typename T>
__global__ void deformable_aggregation_kernel(const T* __restrict__ feat, const int32_t* __restrict__ spatial_shape,
                                              const int32_t* __restrict__ scale_start_index,
                                              const T* __restrict__ locations, const T* __restrict__ weights,
                                              T* __restrict__ output, int batch, int features, int channels, int cams,
                                              int scales, int anchors, int points, int groups) {
  const long long total = static_cast<long long>(batch) * anchors * channels;
  const int group_size = channels / groups;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(i % channels);
    const long long ba = i / channels;  // b * anchors + a
    const int b = static_cast<int>(ba / anchors);
    const T* feat_bc = feat + static_cast<long long>(b) * features * channels + c;
    float sum = 0.f;
    for (int p = 0; p < points; ++p) {
      for (int k = 0; k < cams; ++k) {
        const long long loc = ((ba * points + p) * cams + k) * 2;
        const float lx = surgeon::to_float(locations[loc]), ly = surgeon::to_float(locations[loc + 1]);
        if (lx <= 0.f || lx >= 1.f || ly <= 0.f || ly >= 1.f) continue;
        for (int s = 0; s < scales; ++s) {
          const int ks = k * scales + s;
          const int h = spatial_shape[2 * ks], w = spatial_shape[2 * ks + 1];
          const float weight = surgeon::to_float(weights[(((ba * points + p) * cams + k) * scales + s) * groups +
                                                         c / group_size]);
          const T* plane = feat_bc + static_cast<long long>(scale_start_index[ks]) * channels;
          sum += weight * surgeon::bilinear(plane, h, w, channels, ly * h - 0.5f, lx * w - 0.5f);
        }
      }
    }
    output[i] = surgeon::from_float<T>(sum);
  }
}

template <typename T>
cudaError_t launch(const void* feat, const int32_t* spatial_shape, const int32_t* scale_start_index,
                   const void* locations, const void* weights, void* output, int batch, int features, int channels,
                   int cams, int scales, int anchors, int points, int groups, cudaStream_t stream) {
  const long long total = static_cast<long long>(batch) * anchors * channels;
  if (total == 0) return cudaSuccess;
  if (groups <= 0 || channels % groups != 0) return cudaErrorInvalidValue;
  deformable_aggregation_kernel<T><<<surgeon::blocks_for(total), surgeon::kThreads, 0, stream>>>(
      static_cast<const T*>(feat), spatial_shape, scale_start_index, static_cast<const T*>(locations),
      static_cast<const T*>(weights), static_cast<T*>(output), batch, features, channels, cams, scales, anchors,
      points, groups);
  return cudaGetLastError();
}

}  // namespace

extern "C" cudaError_t surgeon_deformable_aggregation(surgeon_dtype dtype, const void* mc_ms_feat,
                                                      const int32_t* spatial_shape, const int32_t* scale_start_index,
                                                      const void* sampling_location, const void* weights, void* output,
                                                      int batch, int features, int channels, int cams, int scales,
                                                      int anchors, int points, int groups, cudaStream_t stream) {
  auto run = dtype == SURGEON_FLOAT16 ? launch<__half> : launch<float>;
  return run(mc_ms_feat, spatial_shape, scale_start_index, sampling_location, weights, output, batch, features,
             channels, cams, scales, anchors, points, groups, stream);
}
