// Decode GEMV (M <= 4) over the SAME fragment-ordered int8/int4 layout as mma_wq.cu, so one packed copy
// of the weights serves every M: here M <= 4 on CUDA cores, mma_wq for larger M.
//   y[m, n] = sum_k x[m, k] * q[n, k] * scale[n, k / group]     (int8: one scale per channel, applied last)
// Layout (see mma_wq.cu): tile (nt, kt) of 8 rows x KT columns at ((nt * ktiles + kt) * 512) bytes, lane
// l = 4 g + t holding row 8 nt + g, k = KT kt + 16 j + {2t, 2t+1, 2t+8, 2t+9} for each step j.
// A block holds NT n8 tiles and WARPS warps that split the K tiles; each lane accumulates its row's partial
// sums, the 4 lanes of a row and the warps are then reduced (shuffles, then shared memory).
#include "common.cuh"

#define NT 2
#define WARPS 8

__device__ __forceinline__ unsigned word_of(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// POST (int4, groups covering whole K tiles): one scale load and multiply per tile instead of per step.
template <int BITS, int MMAX, bool POST>
__global__ void __launch_bounds__(32 * WARPS) gemv_packed(const bf16_t* __restrict__ x, const uint4* __restrict__ qp,
                                                          const float* __restrict__ scale, bf16_t* __restrict__ y,
                                                          int M, int N, int K, int group) {
  constexpr int KT = BITS == 8 ? 64 : 128;
  constexpr int STEPS = KT / 16;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int nt0 = blockIdx.x * NT;
  const int ktiles = K / KT, G = K / group;
  float acc[MMAX][NT];
#pragma unroll
  for (int m = 0; m < MMAX; ++m)
#pragma unroll
    for (int h = 0; h < NT; ++h) acc[m][h] = 0.f;
  uint4 wn[2][NT];                                   // two tiles ahead in flight while one is consumed
#pragma unroll
  for (int d = 0; d < 2; ++d)
#pragma unroll
    for (int h = 0; h < NT; ++h)
      wn[d][h] = warp + d * WARPS < ktiles ? __ldg(qp + ((size_t)(nt0 + h) * ktiles + warp + d * WARPS) * 32 + lane)
                                           : make_uint4(0, 0, 0, 0);
  for (int kt = warp; kt < ktiles; kt += WARPS) {
    uint4 w[NT];
#pragma unroll
    for (int h = 0; h < NT; ++h) {
      w[h] = wn[0][h];
      wn[0][h] = wn[1][h];
      if (kt + 2 * WARPS < ktiles) wn[1][h] = __ldg(qp + ((size_t)(nt0 + h) * ktiles + kt + 2 * WARPS) * 32 + lane);
    }
    float tacc[MMAX][NT];                              // POST: this tile's unscaled sums
#pragma unroll
    for (int m = 0; m < MMAX; ++m)
#pragma unroll
      for (int h = 0; h < NT; ++h) tacc[m][h] = 0.f;
#pragma unroll
    for (int j = 0; j < STEPS; ++j) {
      const int k = kt * KT + 16 * j + 2 * t;
      float wf[NT][4];                                 // exact codes q (int4: the group scale comes after)
      float sc[NT];
#pragma unroll
      for (int h = 0; h < NT; ++h) {
        if (BITS == 8) {
          const unsigned v = word_of(w[h], j) ^ 0x80808080u;
#pragma unroll
          for (int i = 0; i < 4; ++i) wf[h][i] = s8_to_f32(v, i);
        } else {
          unsigned r[4];
          u4x8_to_bf16x2(word_of(w[h], j >> 1), r);
          const unsigned p0 = r[2 * (j & 1)], p1 = r[2 * (j & 1) + 1];
          wf[h][0] = __uint_as_float(p0 << 16);
          wf[h][1] = __uint_as_float(p0 & 0xffff0000u);
          wf[h][2] = __uint_as_float(p1 << 16);
          wf[h][3] = __uint_as_float(p1 & 0xffff0000u);
          if (!POST) sc[h] = __ldg(scale + (size_t)(8 * (nt0 + h) + g) * G + (kt * KT + 16 * j) / group);
        }
      }
#pragma unroll
      for (int m = 0; m < MMAX; ++m) {
        if (m < M) {
          const unsigned lo = __ldg(reinterpret_cast<const unsigned*>(x + (size_t)m * K + k));
          const unsigned hi = __ldg(reinterpret_cast<const unsigned*>(x + (size_t)m * K + k + 8));
          const float xf[4] = {__uint_as_float(lo << 16), __uint_as_float(lo & 0xffff0000u),
                               __uint_as_float(hi << 16), __uint_as_float(hi & 0xffff0000u)};
#pragma unroll
          for (int h = 0; h < NT; ++h) {
            float d = 0.f;                             // this step's 4 products, then one scale (a step is in one group)
#pragma unroll
            for (int i = 0; i < 4; ++i) d = fmaf(xf[i], wf[h][i], d);
            if (BITS == 8 || POST) tacc[m][h] += d;
            else acc[m][h] = fmaf(d, sc[h], acc[m][h]);
          }
        }
      }
    }
    if (BITS == 8 || POST) {
#pragma unroll
      for (int h = 0; h < NT; ++h) {
        const float st = BITS == 8 ? 1.f : __ldg(scale + (size_t)(8 * (nt0 + h) + g) * G + kt * KT / group);
#pragma unroll
        for (int m = 0; m < MMAX; ++m) acc[m][h] = fmaf(tacc[m][h], st, acc[m][h]);
      }
    }
  }
  __shared__ float red[WARPS][MMAX * NT][8];
#pragma unroll
  for (int m = 0; m < MMAX; ++m)
#pragma unroll
    for (int h = 0; h < NT; ++h) {
      float v = acc[m][h];
      v += __shfl_xor_sync(0xffffffffu, v, 1);       // the 4 lanes (t) of a row
      v += __shfl_xor_sync(0xffffffffu, v, 2);
      if (t == 0) red[warp][m * NT + h][g] = v;
    }
  __syncthreads();
  for (int i = threadIdx.x; i < MMAX * NT * 8; i += 32 * WARPS) {
    const int m = i / (NT * 8), h = (i / 8) % NT, r = i % 8;
    float v = 0.f;
#pragma unroll
    for (int o = 0; o < WARPS; ++o) v += red[o][m * NT + h][r];
    const int col = 8 * (nt0 + h) + r;
    if (BITS == 8) v *= __ldg(scale + col);
    if (m < M && col < N) y[(size_t)m * N + col] = f32_to_bf16(v);
  }
}

#ifndef FDLITE_NVRTC   // nvcc (CI's compile check) needs them; NVRTC instantiates what name_expressions ask
template __global__ void gemv_packed<8, 1, false>(const bf16_t*, const uint4*, const float*, bf16_t*, int, int, int, int);
template __global__ void gemv_packed<8, 4, false>(const bf16_t*, const uint4*, const float*, bf16_t*, int, int, int, int);
template __global__ void gemv_packed<4, 1, false>(const bf16_t*, const uint4*, const float*, bf16_t*, int, int, int, int);
template __global__ void gemv_packed<4, 4, false>(const bf16_t*, const uint4*, const float*, bf16_t*, int, int, int, int);
template __global__ void gemv_packed<4, 1, true>(const bf16_t*, const uint4*, const float*, bf16_t*, int, int, int, int);
template __global__ void gemv_packed<4, 4, true>(const bf16_t*, const uint4*, const float*, bf16_t*, int, int, int, int);
#endif
