// Rotate: torchvision's rotate(img, angle, center) with zero fill, as BEVFormer rotates the previous BEV.
//
// Each thread maps one output pixel through the inverse affine matrix (computed in float32 from the
// device-side angle and center, as the CPU reference does) and samples every channel there.
#include "common.cuh"

namespace {

template <typename T>
__global__ void rotate_kernel(const T* __restrict__ input, const float* __restrict__ angle,
                              const float* __restrict__ center, T* __restrict__ output, int n, int c, int h, int w,
                              int interpolation_mode) {
  const float radians = -angle[0] * 3.14159265358979323846f / 180.f;
  const float cos_a = cosf(radians), sin_a = sinf(radians);
  const float cx = center[0] - w * 0.5f, cy = center[1] - h * 0.5f;
  const float tx = cos_a * -cx + -sin_a * -cy + cx, ty = sin_a * -cx + cos_a * -cy + cy;
  // theta^T / (w / 2, h / 2): the rescaled matrix of torchvision's _gen_affine_grid.
  const float sx = 0.5f * w, sy = 0.5f * h;
  const long long pixels = static_cast<long long>(h) * w;
  const long long total = n * pixels;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long batch = i / pixels, pixel = i % pixels;
    const float bx = static_cast<float>(pixel % w) - (w * 0.5f - 0.5f);
    const float by = static_cast<float>(pixel / w) - (h * 0.5f - 0.5f);
    const float gx = bx * (cos_a / sx) + by * (-sin_a / sx) + tx / sx;
    const float gy = bx * (sin_a / sy) + by * (cos_a / sy) + ty / sy;
    // grid_sample(align_corners=False) unnormalisation back to source pixels.
    const float x = ((gx + 1.f) * w - 1.f) / 2.f, y = ((gy + 1.f) * h - 1.f) / 2.f;
    const T* plane = input + batch * c * pixels;
    T* out = output + batch * c * pixels + pixel;
    for (int channel = 0; channel < c; ++channel, plane += pixels, out += pixels) {
      const float v = interpolation_mode == 1 ? surgeon::nearest(plane, h, w, 1, y, x)
                                              : surgeon::bilinear(plane, h, w, 1, y, x);
      *out = surgeon::from_float<T>(v);
    }
  }
}

template <typename T>
cudaError_t launch(const void* input, const float* angle, const float* center, void* output, int n, int c, int h,
                   int w, int interpolation_mode, cudaStream_t stream) {
  const long long total = static_cast<long long>(n) * h * w;
  if (total == 0) return cudaSuccess;
  rotate_kernel<T><<<surgeon::blocks_for(total), surgeon::kThreads, 0, stream>>>(
      static_cast<const T*>(input), angle, center, static_cast<T*>(output), n, c, h, w, interpolation_mode);
  return cudaGetLastError();
}

}  // namespace

extern "C" cudaError_t surgeon_rotate(surgeon_dtype dtype, const void* input, const float* angle, const float* center,
                                      void* output, int n, int c, int h, int w, int interpolation_mode,
                                      cudaStream_t stream) {
  auto run = dtype == SURGEON_FLOAT16 ? launch<__half> : launch<float>;
  return run(input, angle, center, output, n, c, h, w, interpolation_mode, stream);
}
