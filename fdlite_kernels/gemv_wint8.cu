// Decode GEMV for int8 weights (wint8, per-output-channel scales): y[m, n] = scale[n] * sum_k x[m, k] q[n, k]
//   x: bf16 [M, K] row-major (M <= MMAX), q: int8 [N, K] row-major, scale: f32 [N], y: bf16 [M, N].
// One warp owns one output row n at a time and streams it once with 16-byte loads (16 weights per lane,
// 512 per warp step); x rows are re-read from L1/L2 (M*K*2 bytes, shared by every warp), the weights are
// the only DRAM stream. Requires K % 16 == 0 (16-byte aligned rows), checked by the launcher.
#include "common.cuh"

template <int MMAX>
__global__ void __launch_bounds__(256) gemv_wint8(const bf16_t* __restrict__ x, const signed char* __restrict__ q,
                                                  const float* __restrict__ scale, bf16_t* __restrict__ y,
                                                  int M, int N, int K) {
  const int lane = threadIdx.x & 31;
  const int warps = blockDim.x >> 5;
  for (int n = blockIdx.x * warps + (threadIdx.x >> 5); n < N; n += gridDim.x * warps) {
    float acc[MMAX];
#pragma unroll
    for (int m = 0; m < MMAX; ++m) acc[m] = 0.f;
    const signed char* row = q + (size_t)n * K;
    for (int k = lane * 16; k < K; k += 32 * 16) {
      const int4 wv = __ldg(reinterpret_cast<const int4*>(row + k));      // 16 int8 weights
      float w[16];
      const int ws[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int b = 0; b < 4; ++b) w[4 * i + b] = (float)(signed char)((ws[i] >> (8 * b)) & 0xff);
      }
#pragma unroll
      for (int m = 0; m < MMAX; ++m) {
        if (m < M) {
          const uint4* xp = reinterpret_cast<const uint4*>(x + (size_t)m * K + k);
          float xf[16];
          bf16x8_to_f32(__ldg(xp), xf);
          bf16x8_to_f32(__ldg(xp + 1), xf + 8);
          float s = 0.f;
#pragma unroll
          for (int i = 0; i < 16; ++i) s = fmaf(xf[i], w[i], s);
          acc[m] += s;
        }
      }
    }
    const float sc = scale[n];
#pragma unroll
    for (int m = 0; m < MMAX; ++m) {
      if (m < M) {
        const float v = warp_sum(acc[m]);
        if (lane == 0) y[(size_t)m * N + n] = f32_to_bf16(v * sc);
      }
    }
  }
}

template __global__ void gemv_wint8<1>(const bf16_t*, const signed char*, const float*, bf16_t*, int, int, int);
template __global__ void gemv_wint8<4>(const bf16_t*, const signed char*, const float*, bf16_t*, int, int, int);
template __global__ void gemv_wint8<8>(const bf16_t*, const signed char*, const float*, bf16_t*, int, int, int);
template __global__ void gemv_wint8<16>(const bf16_t*, const signed char*, const float*, bf16_t*, int, int, int);
