// Decode GEMV for int4 weights with group-wise scales (wint4; per-channel is one group of K):
//   y[m, n] = sum_k x[m, k] * (nib(n, k) - 8) * scale[n, k / G]
//   x: bf16 [M, K] (M <= MMAX); q: uint8 [N, K/2], byte j of row n holds k = 2j in its low nibble and
//   k = 2j + 1 in its high nibble, each as q + 8 (offset binary, q in [-8, 7]); scale: f32 [N, K/G];
//   y: bf16 [M, N]. Requires K % 32 == 0 and G % 32 == 0 (a lane's 32 weights share one group).
// One warp streams ROWS rows: 16-byte loads = 32 weights per lane per row, 1024 per warp step; each x
// chunk loaded serves all ROWS rows. The group scale is folded into the x·q partial sum (one multiply
// per 32 weights instead of one per weight).
#include "common.cuh"

#define ROWS 4

template <int MMAX>
__global__ void __launch_bounds__(256) gemv_wint4(const bf16_t* __restrict__ x, const u8* __restrict__ q,
                                                  const float* __restrict__ scale, bf16_t* __restrict__ y,
                                                  int M, int N, int K, int G) {
  const int lane = threadIdx.x & 31;
  const int warps = blockDim.x >> 5;
  const int groups = K / G;
  for (int n0 = (blockIdx.x * warps + (threadIdx.x >> 5)) * ROWS; n0 < N; n0 += gridDim.x * warps * ROWS) {
    float acc[MMAX][ROWS];
#pragma unroll
    for (int m = 0; m < MMAX; ++m)
#pragma unroll
      for (int r = 0; r < ROWS; ++r) acc[m][r] = 0.f;
    for (int k = lane * 32; k < K; k += 32 * 32) {
      uint4 wv[ROWS];
      float sc[ROWS];
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        const int n = min(n0 + r, N - 1);
        wv[r] = __ldg(reinterpret_cast<const uint4*>(q + (size_t)n * (K / 2) + k / 2));
        sc[r] = __ldg(scale + (size_t)n * groups + k / G);
      }
      float s[MMAX][ROWS];
#pragma unroll
      for (int m = 0; m < MMAX; ++m)
#pragma unroll
        for (int r = 0; r < ROWS; ++r) s[m][r] = 0.f;
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        float wf[ROWS][8];                                   // decode 8 weights per row once, reuse for every m
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
          const unsigned word = c == 0 ? wv[r].x : c == 1 ? wv[r].y : c == 2 ? wv[r].z : wv[r].w;
#pragma unroll
          for (int i = 0; i < 8; ++i) wf[r][i] = (float)((int)((word >> (4 * i)) & 0xf) - 8);
        }
#pragma unroll
        for (int m = 0; m < MMAX; ++m) {
          if (m < M) {
            float xf[8];
            bf16x8_to_f32(__ldg(reinterpret_cast<const uint4*>(x + (size_t)m * K + k) + c), xf);
#pragma unroll
            for (int r = 0; r < ROWS; ++r)
#pragma unroll
              for (int i = 0; i < 8; ++i) s[m][r] = fmaf(xf[i], wf[r][i], s[m][r]);
          }
        }
      }
#pragma unroll
      for (int m = 0; m < MMAX; ++m)
#pragma unroll
        for (int r = 0; r < ROWS; ++r) acc[m][r] = fmaf(s[m][r], sc[r], acc[m][r]);
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      const int n = n0 + r;
#pragma unroll
      for (int m = 0; m < MMAX; ++m) {
        if (m < M) {
          const float v = warp_sum(acc[m][r]);
          if (lane == 0 && n < N) y[(size_t)m * N + n] = f32_to_bf16(v);
        }
      }
    }
  }
}

template __global__ void gemv_wint4<1>(const bf16_t*, const u8*, const float*, bf16_t*, int, int, int, int);
template __global__ void gemv_wint4<4>(const bf16_t*, const u8*, const float*, bf16_t*, int, int, int, int);
template __global__ void gemv_wint4<8>(const bf16_t*, const u8*, const float*, bf16_t*, int, int, int, int);
template __global__ void gemv_wint4<16>(const bf16_t*, const u8*, const float*, bf16_t*, int, int, int, int);
