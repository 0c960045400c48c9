// Decode GEMV for int8 weights (wint8, per-output-channel scales): y[m, n] = scale[n] * sum_k x[m, k] q[n, k]
//   x: bf16 [M, K] row-major (M <= MMAX), q: int8 [N, K] row-major, scale: f32 [N], y: bf16 [M, N].
// One warp owns ROWS consecutive output rows and streams them once with 16-byte loads (16 weights per lane
// per row, 512 per warp step). Each x chunk a lane loads (from L1/L2: x is small and shared by every warp)
// serves all ROWS rows, so x traffic per weight byte falls by ROWS; the weights are the only DRAM stream.
// Requires K % 16 == 0 (16-byte aligned rows), checked by the launcher.
#include "common.cuh"

#define ROWS 4

template <int MMAX>
__global__ void __launch_bounds__(256) gemv_wint8(const bf16_t* __restrict__ x, const signed char* __restrict__ q,
                                                  const float* __restrict__ scale, bf16_t* __restrict__ y,
                                                  int M, int N, int K) {
  const int lane = threadIdx.x & 31;
  const int warps = blockDim.x >> 5;
  for (int n0 = (blockIdx.x * warps + (threadIdx.x >> 5)) * ROWS; n0 < N; n0 += gridDim.x * warps * ROWS) {
    float acc[MMAX][ROWS];
#pragma unroll
    for (int m = 0; m < MMAX; ++m)
#pragma unroll
      for (int r = 0; r < ROWS; ++r) acc[m][r] = 0.f;
    for (int k = lane * 16; k < K; k += 32 * 16) {
      float w[ROWS][16];
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        const int n = min(n0 + r, N - 1);                       // tail rows re-read the last row; not stored
        const int4 wv = __ldg(reinterpret_cast<const int4*>(q + (size_t)n * K + k));
        const int ws[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int b = 0; b < 4; ++b) w[r][4 * i + b] = (float)(signed char)((ws[i] >> (8 * b)) & 0xff);
      }
#pragma unroll
      for (int m = 0; m < MMAX; ++m) {
        if (m < M) {
          const uint4* xp = reinterpret_cast<const uint4*>(x + (size_t)m * K + k);
          float xf[16];
          bf16x8_to_f32(__ldg(xp), xf);
          bf16x8_to_f32(__ldg(xp + 1), xf + 8);
#pragma unroll
          for (int r = 0; r < ROWS; ++r) {
            float s = 0.f;
#pragma unroll
            for (int i = 0; i < 16; ++i) s = fmaf(xf[i], w[r][i], s);
            acc[m][r] += s;
          }
        }
      }
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      const int n = n0 + r;
      const float sc = n < N ? scale[n] : 0.f;
#pragma unroll
      for (int m = 0; m < MMAX; ++m) {
        if (m < M) {
          const float v = warp_sum(acc[m][r]);
          if (lane == 0 && n < N) y[(size_t)m * N + n] = f32_to_bf16(v * sc);
        }
      }
    }
  }
}

template __global__ void gemv_wint8<1>(const bf16_t*, const signed char*, const float*, bf16_t*, int, int, int);
template __global__ void gemv_wint8<4>(const bf16_t*, const signed char*, const float*, bf16_t*, int, int, int);
template __global__ void gemv_wint8<8>(const bf16_t*, const signed char*, const float*, bf16_t*, int, int, int);
template __global__ void gemv_wint8<16>(const bf16_t*, const signed char*, const float*, bf16_t*, int, int, int);
