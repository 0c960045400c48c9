// Decode GEMV for block_wise_fp8 (e4m3 weights in 128x128 blocks, fp8 activations per token and K group):
//   y[m, n] = sum_b xs[m, b] * ws[n / 128, b] * sum_{k in group b} e4m3(xq[m, k]) * e4m3(q[n, k])
//   xq: uint8 [M, Kp] and xs: f32 [M, Kb] from act_quant_fp8 (Kp = Kb * 128); q: uint8 [N, K] e4m3 bits;
//   ws: f32 [ceil(N / 128), Kb] (weight_scale_inv); y: bf16 [M, N]. Requires K % 16 == 0.
// A warp owns ROWS rows; a lane's 16 consecutive weights lie inside one 128-group, so its partial dot is
// scaled once per 16 weights. Weights stream with 16-byte loads; x codes (M*Kp bytes) come from L1/L2.
#include "common.cuh"

#define ROWS 4

template <int MMAX>
__global__ void __launch_bounds__(256) gemv_block_fp8(const u8* __restrict__ xq, const float* __restrict__ xs,
                                                      const u8* __restrict__ q, const float* __restrict__ ws,
                                                      bf16_t* __restrict__ y, int M, int N, int K, int Kb) {
  const int lane = threadIdx.x & 31;
  const int warps = blockDim.x >> 5;
  const int Kp = Kb * 128;
  for (int n0 = (blockIdx.x * warps + (threadIdx.x >> 5)) * ROWS; n0 < N; n0 += gridDim.x * warps * ROWS) {
    float acc[MMAX][ROWS];
#pragma unroll
    for (int m = 0; m < MMAX; ++m)
#pragma unroll
      for (int r = 0; r < ROWS; ++r) acc[m][r] = 0.f;
    for (int k = lane * 16; k < K; k += 32 * 16) {
      const int b = k >> 7;
      float w[ROWS][16];
      float wsc[ROWS];
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        const int n = min(n0 + r, N - 1);
        const uint4 wv = __ldg(reinterpret_cast<const uint4*>(q + (size_t)n * K + k));
        const unsigned wd[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) w[r][4 * i + j] = e4m3_to_f32((wd[i] >> (8 * j)) & 0xffu);
        wsc[r] = __ldg(ws + (size_t)(n >> 7) * Kb + b);
      }
#pragma unroll
      for (int m = 0; m < MMAX; ++m) {
        if (m < M) {
          const uint4 xv = __ldg(reinterpret_cast<const uint4*>(xq + (size_t)m * Kp + k));
          const unsigned xd[4] = {xv.x, xv.y, xv.z, xv.w};
          float xf[16];
#pragma unroll
          for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) xf[4 * i + j] = e4m3_to_f32((xd[i] >> (8 * j)) & 0xffu);
          const float xsc = __ldg(xs + (size_t)m * Kb + b);
#pragma unroll
          for (int r = 0; r < ROWS; ++r) {
            float s = 0.f;
#pragma unroll
            for (int i = 0; i < 16; ++i) s = fmaf(xf[i], w[r][i], s);
            acc[m][r] = fmaf(s, xsc * wsc[r], acc[m][r]);
          }
        }
      }
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

template __global__ void gemv_block_fp8<1>(const u8*, const float*, const u8*, const float*, bf16_t*, int, int, int, int);
template __global__ void gemv_block_fp8<4>(const u8*, const float*, const u8*, const float*, bf16_t*, int, int, int, int);
template __global__ void gemv_block_fp8<8>(const u8*, const float*, const u8*, const float*, bf16_t*, int, int, int, int);
template __global__ void gemv_block_fp8<16>(const u8*, const float*, const u8*, const float*, bf16_t*, int, int, int, int);
