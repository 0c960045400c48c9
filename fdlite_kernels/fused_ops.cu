// Small fused ops of the forward, bf16 in and out, float32 inside (twins: fdlite/ops.py).
//   rms_norm:      y = x / sqrt(mean(x^2) + eps) * w                       x, y: [M, H]; w: [H]
//   add_rms_norm:  x <- bf16(x + d); y = rms_norm(x)  (the residual add fused with the next norm; x in place)
//   silu_mul:      y = silu(gu[:, :I]) * gu[:, I:]                          gu: [M, 2I]; y: [M, I]
// One CTA per row for the norms (a row is read once into registers-sized chunks, reduced, then written).
#include "common.cuh"

#define THREADS 256

__device__ __forceinline__ float block_sum(float v, float* red) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  if (lane == 0) red[wid] = v;
  __syncthreads();
  float t = 0.f;
  for (int i = 0; i < (int)(blockDim.x >> 5); ++i) t += red[i];
  __syncthreads();
  return t;
}

template <bool ADD>
__global__ void __launch_bounds__(THREADS) rms_norm(bf16_t* __restrict__ x, const bf16_t* __restrict__ d,
                                                     const bf16_t* __restrict__ w, bf16_t* __restrict__ y, int H,
                                                     float eps) {
  __shared__ float red[THREADS / 32];
  bf16_t* xr = x + (size_t)blockIdx.x * H;
  float ss = 0.f;
  for (int i = threadIdx.x; i < H; i += THREADS) {
    float v = bf16_to_f32(xr[i]);
    if (ADD) {
      const bf16_t r = f32_to_bf16(v + bf16_to_f32(d[(size_t)blockIdx.x * H + i]));
      xr[i] = r;                                   // each element is read and written by the same thread
      v = bf16_to_f32(r);
    }
    ss += v * v;
  }
  const float r = sqrtf(block_sum(ss, red) / (float)H + eps);
  for (int i = threadIdx.x; i < H; i += THREADS)
    y[(size_t)blockIdx.x * H + i] = f32_to_bf16(bf16_to_f32(xr[i]) / r * bf16_to_f32(w[i]));
}

__global__ void __launch_bounds__(THREADS) silu_mul(const bf16_t* __restrict__ gu, bf16_t* __restrict__ y, int M,
                                                     int I) {
  const size_t total = (size_t)M * I;
  for (size_t e = (size_t)blockIdx.x * THREADS + threadIdx.x; e < total; e += (size_t)gridDim.x * THREADS) {
    const size_t m = e / I, i = e % I;
    const float g = bf16_to_f32(gu[m * 2 * I + i]);
    y[e] = f32_to_bf16(g / (1.f + expf(-g)) * bf16_to_f32(gu[m * 2 * I + I + i]));
  }
}

template __global__ void rms_norm<false>(bf16_t*, const bf16_t*, const bf16_t*, bf16_t*, int, float);
template __global__ void rms_norm<true>(bf16_t*, const bf16_t*, const bf16_t*, bf16_t*, int, float);
