// Decode GEMV for dense bf16 weights: y[m, n] = sum_k x[m, k] w[n, k]   (the unquantized linears and lm_head
// inside the CUDA-graph decode step, where cuBLAS cannot be captured through CuPy).
//   x: bf16 [M, K] row-major (M <= MMAX), w: bf16 [N, K] row-major, y: bf16 [M, N]
// One warp owns ROWS consecutive rows and streams them once with 16-byte loads (8 weights per lane per row,
// 256 per warp step); each x chunk a lane loads serves all ROWS rows. Requires K % 8 == 0 (16-byte rows).
#include "common.cuh"

#define ROWS 4

template <int MMAX>
__global__ void __launch_bounds__(256) gemv_bf16(const bf16_t* __restrict__ x, const bf16_t* __restrict__ w,
                                                 bf16_t* __restrict__ y, int M, int N, int K) {
  const int lane = threadIdx.x & 31;
  const int warps = blockDim.x >> 5;
  x += pdl_wait();                                              // launched with PDL (common.cuh)
  for (int n0 = (blockIdx.x * warps + (threadIdx.x >> 5)) * ROWS; n0 < N; n0 += gridDim.x * warps * ROWS) {
    float acc[MMAX][ROWS];
#pragma unroll
    for (int m = 0; m < MMAX; ++m)
#pragma unroll
      for (int r = 0; r < ROWS; ++r) acc[m][r] = 0.f;
    for (int k = lane * 8; k < K; k += 32 * 8) {
      float wf[ROWS][8];
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        const int n = min(n0 + r, N - 1);                       // tail rows re-read the last row; not stored
        bf16x8_to_f32(__ldg(reinterpret_cast<const uint4*>(w + (size_t)n * K + k)), wf[r]);
      }
#pragma unroll
      for (int m = 0; m < MMAX; ++m) {
        if (m < M) {
          float xf[8];
          bf16x8_to_f32(__ldca(reinterpret_cast<const uint4*>(x + (size_t)m * K + k)), xf);   // coherent (PDL)
#pragma unroll
          for (int r = 0; r < ROWS; ++r) {
            float s = 0.f;
#pragma unroll
            for (int i = 0; i < 8; ++i) s = fmaf(xf[i], wf[r][i], s);
            acc[m][r] += s;
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

template __global__ void gemv_bf16<1>(const bf16_t*, const bf16_t*, bf16_t*, int, int, int);
template __global__ void gemv_bf16<4>(const bf16_t*, const bf16_t*, bf16_t*, int, int, int);
template __global__ void gemv_bf16<8>(const bf16_t*, const bf16_t*, bf16_t*, int, int, int);
template __global__ void gemv_bf16<16>(const bf16_t*, const bf16_t*, bf16_t*, int, int, int);
