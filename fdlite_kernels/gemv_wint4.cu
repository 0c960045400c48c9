// Decode GEMV for int4 weights with group-wise scales (wint4; per-channel is one group of K):
//   y[m, n] = sum_k x[m, k] * (nib(n, k) - 8) * scale[n, k / G]
//   x: bf16 [M, K] (M <= MMAX); q: uint8 [N, K/2], byte j of row n holds k = 2j in its low nibble and
//   k = 2j + 1 in its high nibble, each as q + 8 (offset binary, q in [-8, 7]); scale: f32 [N, K/G];
//   y: bf16 [M, N]. Requires K % 32 == 0 and G % 32 == 0 (a lane's 32 weights share one group).
// One warp streams one row: 16-byte loads = 32 weights per lane, 1024 per warp step.
#include "common.cuh"

template <int MMAX>
__global__ void __launch_bounds__(256) gemv_wint4(const bf16_t* __restrict__ x, const u8* __restrict__ q,
                                                  const float* __restrict__ scale, bf16_t* __restrict__ y,
                                                  int M, int N, int K, int G) {
  const int lane = threadIdx.x & 31;
  const int warps = blockDim.x >> 5;
  const int groups = K / G;
  for (int n = blockIdx.x * warps + (threadIdx.x >> 5); n < N; n += gridDim.x * warps) {
    float acc[MMAX];
#pragma unroll
    for (int m = 0; m < MMAX; ++m) acc[m] = 0.f;
    const u8* row = q + (size_t)n * (K / 2);
    for (int k = lane * 32; k < K; k += 32 * 32) {
      const uint4 wv = __ldg(reinterpret_cast<const uint4*>(row + k / 2));   // 32 int4 weights
      const float sc = __ldg(scale + (size_t)n * groups + k / G);
      float w[32];
      const unsigned ws[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int b = 0; b < 8; ++b) w[8 * i + b] = (float)((int)((ws[i] >> (4 * b)) & 0xf) - 8) * sc;
      }
#pragma unroll
      for (int m = 0; m < MMAX; ++m) {
        if (m < M) {
          const uint4* xp = reinterpret_cast<const uint4*>(x + (size_t)m * K + k);
          float s = 0.f;
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            float xf[8];
            bf16x8_to_f32(__ldg(xp + c), xf);
#pragma unroll
            for (int i = 0; i < 8; ++i) s = fmaf(xf[i], w[8 * c + i], s);
          }
          acc[m] += s;
        }
      }
    }
#pragma unroll
    for (int m = 0; m < MMAX; ++m) {
      if (m < M) {
        const float v = warp_sum(acc[m]);
        if (lane == 0) y[(size_t)m * N + n] = f32_to_bf16(v);
      }
    }
  }
}

template __global__ void gemv_wint4<1>(const bf16_t*, const u8*, const float*, bf16_t*, int, int, int, int);
template __global__ void gemv_wint4<4>(const bf16_t*, const u8*, const float*, bf16_t*, int, int, int, int);
template __global__ void gemv_wint4<8>(const bf16_t*, const u8*, const float*, bf16_t*, int, int, int, int);
template __global__ void gemv_wint4<16>(const bf16_t*, const u8*, const float*, bf16_t*, int, int, int, int);
