// Tensor-core GEMM for int8 / int4 weights with bf16 activations (decode M <= 16 and prefill tiles):
//   y[m, n] = sum_k x[m, k] * w[n, k],  w = q * scale (int8: per output channel; int4: per (n, K-group))
// x: bf16 [M, K]; y: bf16 [M, N]; scale: f32 [N, G] (G = K / group; int8 per channel: G = 1).
// qp: weights repacked on the host (mma_wq.py: repack) so that one warp's 16-byte-per-lane load of a
// (8 rows x KT columns) tile hands every lane exactly the B fragments of mma.m16n8k16 it needs:
//   tile (nt, kt) at byte ((nt * (K / KT) + kt) * 512), lane l = 4 g + t at +16 l, holding for each k16
//   step j the weights of row 8 nt + g at k = KT kt + 16 j + {2t, 2t+1, 2t+8, 2t+9}:
//   int8 (KT = 64): 4 bytes per step; int4 (KT = 128): 2 bytes per step, offset binary (q + 8), low
//   nibble first. A warp thus reads 512 contiguous bytes per tile.
// Grid: x = N / (8 NT) (NT n8 tiles per block), y = ceil(M / (16 MT)); WARPS warps split the K tiles of
// the block (interleaved) and reduce their fp32 accumulators through shared memory at the end.
// int4 weights are dequantized with their group scale into bf16 before the mma (scale folded in, as
// Marlin does); int8 weights enter the mma exactly and the channel scale is applied to the fp32 sum.
#include "common.cuh"

__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
  return (unsigned)f32_to_bf16(lo) | ((unsigned)f32_to_bf16(hi) << 16);
}

// two floats that are exact in bf16 (small integers) -> bf16x2 by keeping their upper halves (one prmt)
__device__ __forceinline__ unsigned pack_exact(float lo, float hi) {
  return __byte_perm(__float_as_uint(lo), __float_as_uint(hi), 0x7632);
}

__device__ __forceinline__ void mma_bf16(float* c, const unsigned* a, unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ unsigned word_of(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// bf16 pair at x[row, k], k even; zero outside the matrix rows
__device__ __forceinline__ unsigned ld_x2(const bf16_t* x, int row, int M, int K, int k) {
  return row < M ? __ldg(reinterpret_cast<const unsigned*>(x + (size_t)row * K + k)) : 0u;
}

// POST (int4 with groups that cover whole K tiles): the codes enter the mma exactly and each tile's fp32
// partial sums are scaled per output column afterwards; otherwise the group scale is folded into bf16.
template <int BITS, int MT, int NT, int WARPS, bool POST>
__global__ void __launch_bounds__(32 * WARPS) mma_wq(const bf16_t* __restrict__ x, const uint4* __restrict__ qp,
                                              const float* __restrict__ scale, bf16_t* __restrict__ y,
                                              int M, int N, int K, int group) {
  constexpr int KT = BITS == 8 ? 64 : 128;       // K columns per 16-byte lane chunk
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
    for (int h = 0; h < NT; ++h) wn[h] = __ldg(qp + ((size_t)(nt0 + h) * ktiles + warp) * 32 + lane);
  }
  for (int kt = warp; kt < ktiles; kt += WARPS) {
    uint4 w[NT];
#pragma unroll
    for (int h = 0; h < NT; ++h) w[h] = wn[h];
    if (kt + WARPS < ktiles) {
#pragma unroll
      for (int h = 0; h < NT; ++h) wn[h] = __ldg(qp + ((size_t)(nt0 + h) * ktiles + kt + WARPS) * 32 + lane);
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
        if (BITS == 8) {                         // step j = word j: bytes at k 2t, 2t+1, 2t+8, 2t+9
          const unsigned v = word_of(w[h], j);
          b[h][0] = pack_exact((float)(signed char)(v & 0xff), (float)(signed char)((v >> 8) & 0xff));
          b[h][1] = pack_exact((float)(signed char)((v >> 16) & 0xff), (float)(signed char)(v >> 24));
        } else if (POST) {
          const unsigned v = (word_of(w[h], j >> 1) >> (16 * (j & 1))) & 0xffffu;
          b[h][0] = pack_exact((float)((int)(v & 0xf) - 8), (float)((int)((v >> 4) & 0xf) - 8));
          b[h][1] = pack_exact((float)((int)((v >> 8) & 0xf) - 8), (float)((int)(v >> 12) - 8));
        } else {                                 // step j = 16-bit half (j & 1) of word j / 2
          const unsigned v = (word_of(w[h], j >> 1) >> (16 * (j & 1))) & 0xffffu;
          const float s = __ldg(scale + (size_t)(8 * (nt0 + h) + g) * G + k / group);
          b[h][0] = pack_bf16x2((float)((int)(v & 0xf) - 8) * s, (float)((int)((v >> 4) & 0xf) - 8) * s);
          b[h][1] = pack_bf16x2((float)((int)((v >> 8) & 0xf) - 8) * s, (float)((int)(v >> 12) - 8) * s);
        }
      }
#pragma unroll
      for (int a = 0; a < MT; ++a) {
        const int r0 = m0 + 16 * a + g;
        unsigned af[4] = {ld_x2(x, r0, M, K, k + 2 * t), ld_x2(x, r0 + 8, M, K, k + 2 * t),
                          ld_x2(x, r0, M, K, k + 2 * t + 8), ld_x2(x, r0 + 8, M, K, k + 2 * t + 8)};
#pragma unroll
        for (int h = 0; h < NT; ++h) mma_bf16(POST ? tmp[a][h] : acc[a][h], af, b[h][0], b[h][1]);
      }
    }
    if (POST) {                                  // C columns 2t, 2t+1 of each n-tile: their rows' group scales
#pragma unroll
      for (int h = 0; h < NT; ++h) {
        const size_t row = 8 * (nt0 + h) + 2 * t;
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
          if (BITS == 8) v *= __ldg(scale + col);
          if (row < M && col < N) y[(size_t)row * N + col] = f32_to_bf16(v);
        }
  }
}

template __global__ void mma_wq<8, 1, 2, 8, false>(const bf16_t*, const uint4*, const float*, bf16_t*, int, int, int, int);
template __global__ void mma_wq<8, 4, 2, 4, false>(const bf16_t*, const uint4*, const float*, bf16_t*, int, int, int, int);
template __global__ void mma_wq<4, 1, 2, 8, false>(const bf16_t*, const uint4*, const float*, bf16_t*, int, int, int, int);
template __global__ void mma_wq<4, 4, 2, 4, false>(const bf16_t*, const uint4*, const float*, bf16_t*, int, int, int, int);
template __global__ void mma_wq<4, 1, 2, 8, true>(const bf16_t*, const uint4*, const float*, bf16_t*, int, int, int, int);
template __global__ void mma_wq<4, 4, 2, 4, true>(const bf16_t*, const uint4*, const float*, bf16_t*, int, int, int, int);
