// Tensor-core GEMM for int8 / int4 (and dense bf16) weights with bf16 activations (decode M <= 16 and prefill tiles):
//   y[m, n] = sum_k x[m, k] * w[n, k],  w = q * scale (int8: per output channel; int4: per (n, K-group))
// x: bf16 [M, K]; y: bf16 [M, N]; scale: f32 [N, G] (G = K / group; int8 per channel: G = 1).
// qp: weights repacked on the host (mma_wq.py: repack) so that one warp's 16-byte-per-lane load of a
// (8 rows x KT columns) tile hands every lane exactly the B fragments of mma.m16n8k16 it needs:
//   tile (nt, kt) at byte ((nt * (K / KT) + kt) * 512), lane l = 4 g + t at +16 l, holding for each k16
//   step j the weights of row 8 nt + g at k = KT kt + 16 j + {2t, 2t+1, 2t+8, 2t+9}:
//   int8 (KT = 64): 4 bytes per step; int4 (KT = 128): a 32-bit word per step pair, offset binary (q + 8),
//   its 8 codes (step 2i's four, then step 2i+1's) in the nibble order 0 2 4 6 1 3 5 7 (common.cuh:
//   u4x8_to_bf16x2). A warp thus reads 512 contiguous bytes per tile.
// Grid: x = N / (8 NT) (NT n8 tiles per block), y = ceil(M / (16 MT)); WARPS warps split the K tiles of
// the block (interleaved) and reduce their fp32 accumulators through shared memory at the end.
// Codes become exact bf16 without I2F (common.cuh: s8_to_f32, u4x8_to_bf16x2). int8 weights enter the mma
// exactly and the channel scale is applied to the fp32 sum; int4 weights too when groups cover whole K tiles
// (POST), else their group scale is folded into the bf16 weight before the mma (as Marlin does).
#include "common.cuh"

// two floats that are exact in bf16 (small integers) -> bf16x2 by keeping their upper halves (one prmt)
__device__ __forceinline__ unsigned pack_exact(float lo, float hi) {
  return __byte_perm(__float_as_uint(lo), __float_as_uint(hi), 0x7632);
}

// bf16 pair at x[row, k], k even; zero outside the matrix rows
__device__ __forceinline__ unsigned ld_x2(const bf16_t* x, int row, int M, int K, int k) {
  return row < M ? __ldg(reinterpret_cast<const unsigned*>(x + (size_t)row * K + k)) : 0u;
}

// A lane's 16-byte weight chunk of tile (nt, kt). Packed int8/int4: the tiles are contiguous 512-byte runs.
// BITS = 16 (dense bf16, no repack): row-major w [N, K]; the lane of row g reads k = 32 kt + 8 t .. + 7, and the
// A fragment takes x at those k (a consistent permutation of k inside each 32-wide tile; rows past N read 0).
template <int BITS>
__device__ __forceinline__ uint4 ld_w(const uint4* qp, int nt, int kt, int ktiles, int lane, int N, int K) {
  if (BITS == 16) {
    const int row = 8 * nt + (lane >> 2);
    return row < N ? __ldg(reinterpret_cast<const uint4*>(reinterpret_cast<const bf16_t*>(qp) + (size_t)row * K +
                                                          32 * kt + 8 * (lane & 3)))
                   : make_uint4(0, 0, 0, 0);
  }
  return 8 * nt < N ? __ldg(qp + ((size_t)nt * ktiles + kt) * 32 + lane) : make_uint4(0, 0, 0, 0);   // N padded to 16
}

// POST (int4 with groups that cover whole K tiles): the codes enter the mma exactly and each tile's fp32
// partial sums are scaled per output column afterwards; otherwise the group scale is folded into bf16.
template <int BITS, int MT, int NT, int WARPS, bool POST>
__global__ void __launch_bounds__(32 * WARPS) mma_wq(const bf16_t* __restrict__ x, const uint4* __restrict__ qp,
                                              const float* __restrict__ scale, bf16_t* __restrict__ y,
                                              int M, int N, int K, int group) {
  constexpr int KT = BITS == 16 ? 32 : BITS == 8 ? 64 : 128;   // K columns per 16-byte lane chunk
  constexpr int STEPS = KT / 16;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int nt0 = blockIdx.x * NT;               // NT n8 tiles per block
  const int m0 = blockIdx.y * 16 * MT;
  const int ktiles = K / KT, G = K / group;
  float acc[MT][NT][4];
#pragma unroll
  for (int a = 0; a < MT; ++a)
#pragma unroll
    for (int b = 0; b < NT; ++b)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[a][b][c] = 0.f;

  // register double buffer: the next tile's 16-byte loads are in flight while this tile's mmas run
  uint4 wn[NT];
  if (warp < ktiles) {
#pragma unroll
    for (int h = 0; h < NT; ++h) wn[h] = ld_w<BITS>(qp, nt0 + h, warp, ktiles, lane, N, K);
  }
  for (int kt = warp; kt < ktiles; kt += WARPS) {
    uint4 w[NT];
#pragma unroll
    for (int h = 0; h < NT; ++h) w[h] = wn[h];
    if (kt + WARPS < ktiles) {
#pragma unroll
      for (int h = 0; h < NT; ++h) wn[h] = ld_w<BITS>(qp, nt0 + h, kt + WARPS, ktiles, lane, N, K);
    }
    float tmp[MT][NT][4];
#pragma unroll
    for (int a = 0; a < MT; ++a)
#pragma unroll
      for (int h = 0; h < NT; ++h)
#pragma unroll
        for (int c = 0; c < 4; ++c) tmp[a][h][c] = 0.f;
#pragma unroll
    for (int j = 0; j < STEPS; ++j) {
      const int k = kt * KT + 16 * j;
      unsigned b[NT][2];
#pragma unroll
      for (int h = 0; h < NT; ++h) {
        if (BITS == 16) {                        // step j = words 2j, 2j+1: k 8t + 4j + {0, 1}, {2, 3}
          b[h][0] = word_of(w[h], 2 * j);
          b[h][1] = word_of(w[h], 2 * j + 1);
        } else if (BITS == 8) {                  // step j = word j: bytes at k 2t, 2t+1, 2t+8, 2t+9
          const unsigned v = word_of(w[h], j) ^ 0x80808080u;
          b[h][0] = pack_exact(s8_to_f32(v, 0), s8_to_f32(v, 1));
          b[h][1] = pack_exact(s8_to_f32(v, 2), s8_to_f32(v, 3));
        } else {                                 // step j = pairs 2 (j & 1), + 1 of word j / 2
          unsigned r[4];
          u4x8_to_bf16x2(word_of(w[h], j >> 1), r);
          b[h][0] = r[2 * (j & 1)];
          b[h][1] = r[2 * (j & 1) + 1];
          if (!POST) {                           // group scale folded into the bf16 weight
            const float sc = 8 * (nt0 + h) < N ? __ldg(scale + (size_t)(8 * (nt0 + h) + g) * G + k / group) : 0.f;
            b[h][0] = pack_bf16x2(__uint_as_float(b[h][0] << 16) * sc, __uint_as_float(b[h][0] & 0xffff0000u) * sc);
            b[h][1] = pack_bf16x2(__uint_as_float(b[h][1] << 16) * sc, __uint_as_float(b[h][1] & 0xffff0000u) * sc);
          }
        }
      }
#pragma unroll
      for (int a = 0; a < MT; ++a) {
        const int r0 = m0 + 16 * a + g;
        const int ka = BITS == 16 ? kt * KT + 8 * t + 4 * j : k + 2 * t;   // k of a0 a1; a2 a3 at ka + kb
        const int kb = BITS == 16 ? 2 : 8;
        unsigned af[4] = {ld_x2(x, r0, M, K, ka), ld_x2(x, r0 + 8, M, K, ka),
                          ld_x2(x, r0, M, K, ka + kb), ld_x2(x, r0 + 8, M, K, ka + kb)};
#pragma unroll
        for (int h = 0; h < NT; ++h) mma_16816(POST ? tmp[a][h] : acc[a][h], af, b[h][0], b[h][1]);
      }
    }
    if (POST) {                                  // C columns 2t, 2t+1 of each n-tile: their rows' group scales
#pragma unroll
      for (int h = 0; h < NT; ++h) {
        const size_t row = 8 * (nt0 + h) + 2 * t;
        if (8 * (nt0 + h) >= N) continue;          // a tile past the (16-padded) rows: its accumulators stay 0
        const float s0 = __ldg(scale + row * G + kt * KT / group), s1 = __ldg(scale + (row + 1) * G + kt * KT / group);
#pragma unroll
        for (int a = 0; a < MT; ++a)
#pragma unroll
          for (int c = 0; c < 4; ++c) acc[a][h][c] = fmaf(tmp[a][h][c], (c & 1) ? s1 : s0, acc[a][h][c]);
      }
    }
  }
  // reduce the 4 warps' partial sums: warps 1..3 park theirs in shared memory, warp 0 adds and stores
  __shared__ float red[WARPS - 1][MT * NT * 4][32];
  if (warp > 0) {
#pragma unroll
    for (int a = 0; a < MT; ++a)
#pragma unroll
      for (int h = 0; h < NT; ++h)
#pragma unroll
        for (int c = 0; c < 4; ++c) red[warp - 1][(a * NT + h) * 4 + c][lane] = acc[a][h][c];
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int a = 0; a < MT; ++a)
#pragma unroll
      for (int h = 0; h < NT; ++h)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          float v = acc[a][h][c];
#pragma unroll
          for (int o = 0; o < WARPS - 1; ++o) v += red[o][(a * NT + h) * 4 + c][lane];
          const int row = m0 + 16 * a + g + (c >= 2 ? 8 : 0);
          const int col = 8 * (nt0 + h) + 2 * t + (c & 1);
          if (row < M && col < N) {
            if (BITS == 8) v *= __ldg(scale + col);
            y[(size_t)row * N + col] = f32_to_bf16(v);
          }
        }
  }
}

#ifndef FDLITE_NVRTC   // nvcc (CI's compile check) needs them; NVRTC instantiates what name_expressions ask
#define MMA_WQ_INST(B, MT, NT, W, P) \
  template __global__ void mma_wq<B, MT, NT, W, P>(const bf16_t*, const uint4*, const float*, bf16_t*, int, int, int, int);
#define MMA_WQ_CFG(MT, NT, W) \
  MMA_WQ_INST(16, MT, NT, W, false) MMA_WQ_INST(8, MT, NT, W, false) MMA_WQ_INST(4, MT, NT, W, false) \
  MMA_WQ_INST(4, MT, NT, W, true)
// the configurations of mma_wq.py's _CONFIGS (MT m16 tiles, NT n8 tiles, warps)
MMA_WQ_CFG(1, 2, 8)
MMA_WQ_CFG(2, 4, 4)
MMA_WQ_CFG(2, 8, 4)
MMA_WQ_CFG(4, 2, 4)
MMA_WQ_CFG(4, 4, 4)
#endif
