// GridSample2D: torch.nn.functional.grid_sample (bilinear / nearest; zeros / border / reflection).
//
// One thread per output pixel (n, y, x) computes the source coordinate once and loops over channels,
// so the grid is read once per pixel instead of once per channel. Coordinates follow PyTorch's
// grid_sampler_compute_source_index.
#include "common.cuh"

namespace {

__device__ float unnormalize(float coord, int size, bool align_corners) {
  return align_corners ? ((coord + 1.f) / 2.f) * (size - 1) : ((coord + 1.f) * size - 1.f) / 2.f;
}

__device__ float reflect(float coord, int twice_low, int twice_high) {
  if (twice_low == twice_high) return 0.f;
  const float low = twice_low / 2.f, span = (twice_high - twice_low) / 2.f;
  coord = fabsf(coord - low);
  const float extra = fmodf(coord, span);
  const int flips = static_cast<int>(floorf(coord / span));
  return flips % 2 == 0 ? extra + low : span - extra + low;
}

__device__ float source_index(float coord, int size, int padding_mode, bool align_corners) {
  coord = unnormalize(coord, size, align_corners);
  if (padding_mode == 1) {
    coord = fminf(fmaxf(coord, 0.f), static_cast<float>(size - 1));
  } else if (padding_mode == 2) {
    coord = align_corners ? reflect(coord, 0, 2 * (size - 1)) : reflect(coord, -1, 2 * size - 1);
    coord = fminf(fmaxf(coord, 0.f), static_cast<float>(size - 1));
  }
  return coord;
}

template <typename T>
__global__ void grid_sample_kernel(const T* __restrict__ input, const T* __restrict__ grid, T* __restrict__ output,
                                   int n, int c, int h, int w, int out_h, int out_w, int interpolation_mode,
                                   int padding_mode, bool align_corners) {
  const long long pixels = static_cast<long long>(out_h) * out_w;
  const long long total = n * pixels;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long batch = i / pixels, pixel = i % pixels;
    const float x = source_index(surgeon::to_float(grid[2 * i]), w, padding_mode, align_corners);
    const float y = source_index(surgeon::to_float(grid[2 * i + 1]), h, padding_mode, align_corners);
    const T* plane = input + batch * c * h * w;
    T* out = output + batch * c * pixels + pixel;
    for (int channel = 0; channel < c; ++channel, plane += static_cast<long long>(h) * w, out += pixels) {
      const float v = interpolation_mode == 1 ? surgeon::nearest(plane, h, w, 1, y, x)
                                              : surgeon::bilinear(plane, h, w, 1, y, x);
      *out = surgeon::from_float<T>(v);
    }
  }
}

template <typename T>
cudaError_t launch(const void* input, const void* grid, void* output, int n, int c, int h, int w, int out_h,
                   int out_w, int interpolation_mode, int padding_mode, int align_corners, cudaStream_t stream) {
  const long long total = static_cast<long long>(n) * out_h * out_w;
  if (total == 0) return cudaSuccess;
  grid_sample_kernel<T><<<surgeon::blocks_for(total), surgeon::kThreads, 0, stream>>>(
      static_cast<const T*>(input), static_cast<const T*>(grid), static_cast<T*>(output), n, c, h, w, out_h, out_w,
      interpolation_mode, padding_mode, align_corners != 0);
  return cudaGetLastError();
}

}  // namespace

extern "C" cudaError_t surgeon_grid_sample_2d(surgeon_dtype dtype, const void* input, const void* grid,
                                              void* output, int n, int c, int h, int w, int out_h, int out_w,
                                              int interpolation_mode, int padding_mode, int align_corners,
                                              cudaStream_t stream) {
  auto run = dtype == SURGEON_FLOAT16 ? launch<__half> : launch<float>;
  return run(input, grid, output, n, c, h, w, out_h, out_w, interpolation_mode, padding_mode, align_corners, stream);
}
