// Helpers the kernels share: float/half conversion, launch sizes, bilinear taps with zero outside.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "surgeon_plugins.h"

namespace surgeon {

constexpr int kThreads = 256;

inline unsigned int blocks_for(long long work) {
  return static_cast<unsigned int>((work + kThreads - 1) / kThreads);
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

// Bilinear sample of a [h, w] plane whose neighbouring pixels lie `pixel_stride` elements apart,
// at pixel coordinates (y, x); corners outside read zero (mmcv's ms_deform_attn_im2col_bilinear,
// PyTorch's grid_sampler zero padding), weights and sum in PyTorch's order.
template <typename T>
__device__ __forceinline__ float bilinear(const T* plane, int h, int w, long long pixel_stride, float y, float x) {
  const float y0f = floorf(y), x0f = floorf(x);
  const int y0 = static_cast<int>(y0f), x0 = static_cast<int>(x0f);
  const float south = y - y0f, east = x - x0f, north = 1.f - south, west = 1.f - east;
  auto tap = [&](int yy, int xx) -> float {
    return (yy >= 0 && yy < h && xx >= 0 && xx < w) ? to_float(plane[(static_cast<long long>(yy) * w + xx) * pixel_stride])
                                                    : 0.f;
  };
  return tap(y0, x0) * (north * west) + tap(y0, x0 + 1) * (north * east) + tap(y0 + 1, x0) * (south * west) +
         tap(y0 + 1, x0 + 1) * (south * east);
}

template <typename T>
__device__ __forceinline__ float nearest(const T* plane, int h, int w, long long pixel_stride, float y, float x) {
  const int yy = static_cast<int>(nearbyintf(y)), xx = static_cast<int>(nearbyintf(x));
  return (yy >= 0 && yy < h && xx >= 0 && xx < w) ? to_float(plane[(static_cast<long long>(yy) * w + xx) * pixel_stride])
                                                  : 0.f;
}

}  // namespace surgeon
