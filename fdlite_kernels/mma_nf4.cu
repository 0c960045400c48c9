// Prefill GEMM for nf4 (weight-only, groups of 64) on the tensor cores: y = x @ (bf16(NF4_LEVELS[q]) * absmax).T with
// fp32 sums per group, the decode kernel's numerics (gemv_rows.cu, ROWS_NF4) at any number of rows.
//   x: bf16 [M, K], K % 256 == 0 (the padded K); q: uint8 [N, K / 2] level indices, low nibble = even k, in
//   nf4_interleave's order (gemv_rows.py: the device copy prepare() makes, the one decode reads too); ws: float32
//   [N, K / 64] absmax; y: bf16 [M, N]. Twin: fdlite.quant.nf4.Method.matmul (levels exact there: 2^-9 relative here).
// Block: 128 rows of x (blockIdx.x) x 128 output columns (blockIdx.y), 8 warps as WM x 8 / WM: WM = 2, each 64 x 32
// (4 m16 x 4 n8 tiles), or WM = 1, each 128 x 16 (8 x 2: each B fragment looked up by one warp, not two); 16 mma
// m16n8k16 a step either way. A K tile of 128 columns (two groups) is one cp.async stage: x [128][256 B] (16-byte
// chunk c of row r at c ^ (r & 7), conflict-free for ldmatrix), codes [128][64 B] (chunk c of row r at
// c ^ ((r >> 1) & 3)) and the rows' two absmax. A tile's codes are one 64-byte half of nf4_interleave's 128-byte
// tiles, so packed 8-byte block j (k 16 j .. 16 j + 15: step j) sits at byte 8 (2 (j & 3) + (j >> 2)) of the half.
// Lane (g, t) of an n8 tile takes bytes t and t + 4 of its row's block (k 2t, 2t + 1 and 2t + 8, 2t + 9: its B
// fragment), looks the four codes up as bf16 (gemv_rows_codes.cuh: lut16 with prmt's sign-replicated masks) and
// sums each group of 64 into tmp, which is scaled by the column's absmax into acc.
#include "common.cuh"
// NF4_H* / NF4_L* tables, prmt, lut16:
#include "gemv_rows_codes.cuh"

#define NF_BM 128
#define NF_BN 128
#define NF_THREADS 256

// the bf16 levels of 4 codes (nibbles 0..3 of s: k 2t, 2t + 1, 2t + 8, 2t + 9) as the B fragment {b0, b1}
__device__ __forceinline__ void nf4_b_frag(unsigned s, unsigned& b0, unsigned& b1) {
  const unsigned sel7 = s & 0x7777u, hi = prmt(s << 4, s, 0xD9C8u);
  const unsigned hb = lut16(s, sel7, hi, NF4_H0, NF4_H1, NF4_H2, NF4_H3);
  const unsigned lb = lut16(s, sel7, hi, NF4_L0, NF4_L1, NF4_L2, NF4_L3);
  b0 = prmt(lb, hb, 0x5140u);
  b1 = prmt(lb, hb, 0x7362u);
}

template <int STAGES, int WM>
__global__ void __launch_bounds__(NF_THREADS, 1) mma_nf4(const bf16_t* __restrict__ x, const uint4* __restrict__ q,
                                                         const float* __restrict__ ws, bf16_t* __restrict__ y, int M,
                                                         int N, int K) {
  constexpr int AB = NF_BM * 256, BB = NF_BN * 64, SB = NF_BN * 2 * 4;   // bytes of x, codes, absmax per stage
  constexpr int STB = AB + BB + SB;
  constexpr int MT = 8 / WM, NT = 2 * WM;                              // m16 and n8 tiles per warp
  constexpr int WR = 16 * MT, WC = 8 * NT;                             // the warp's rows and columns
  extern __shared__ uint4 smem_nf[];
  u8* smem = reinterpret_cast<u8*>(smem_nf);

  pdl_launch();
  x += pdl_wait();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int wm = warp % WM, wn = warp / WM;
  const int m0 = blockIdx.x * NF_BM, n0 = blockIdx.y * NF_BN;
  const int nk = K / 128, G = K / 64;

  auto load_stage = [&](int kt, int slot) {
    u8* as = smem + slot * STB;
    u8* bs = as + AB;
    float* ss = reinterpret_cast<float*>(bs + BB);
#pragma unroll
    for (int i = threadIdx.x; i < NF_BM * 16; i += NF_THREADS) {
      const int r = i >> 4, c = i & 15;
      const bool ok = m0 + r < M;
      cp_async16(as + r * 256 + 16 * (c ^ (r & 7)),
                 reinterpret_cast<const u8*>(x) + ((size_t)(ok ? m0 + r : 0) * K + kt * 128) * 2 + 16 * c, ok);
    }
#pragma unroll
    for (int i = threadIdx.x; i < NF_BN * 4; i += NF_THREADS) {
      const int r = i >> 2, c = i & 3;
      const bool ok = n0 + r < N;
      cp_async16(bs + r * 64 + 16 * (c ^ ((r >> 1) & 3)), q + (size_t)(ok ? n0 + r : 0) * (K / 32) + kt * 4 + c, ok);
    }
    {
      const int i = threadIdx.x, r = i >> 1;                         // 256 threads: 128 rows x 2 groups
      const bool ok = n0 + r < N;
      cp_async4(ss + i, ws + (size_t)(ok ? n0 + r : 0) * G + 2 * kt + (i & 1), ok);
    }
  };

  float acc[MT][NT][4], tmp[MT][NT][4];
#pragma unroll
  for (int a = 0; a < MT; ++a)
#pragma unroll
    for (int h = 0; h < NT; ++h)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[a][h][c] = tmp[a][h][c] = 0.f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < nk) load_stage(s, s);
    cp_async_commit();
  }
  const int arow = WR * wm + (lane & 15);
  const unsigned bsel = t | ((4 + t) << 4);                          // bytes t, t + 4 of a block's two words
  for (int i = 0; i < nk; ++i) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    if (i + STAGES - 1 < nk) load_stage(i + STAGES - 1, (i + STAGES - 1) % STAGES);
    cp_async_commit();

    const u8* as = smem + (i % STAGES) * STB;
    const u8* bs = as + AB;
    const float* ss = reinterpret_cast<const float*>(bs + BB);
#pragma unroll 1                              // unrolled, ptxas spills past 255 registers
    for (int grp = 0; grp < 2; ++grp) {
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
        const int j = 4 * grp + jj;                                  // k16 step of the tile
        unsigned b[NT][2];
#pragma unroll
        for (int h = 0; h < NT; ++h) {
          const int r = WC * wn + 8 * h + g;
          const uint2 blk = *reinterpret_cast<const uint2*>(bs + r * 64 + 16 * ((j & 3) ^ ((r >> 1) & 3)) + 8 * (j >> 2));
          nf4_b_frag(prmt(blk.x, blk.y, bsel), b[h][0], b[h][1]);
        }
#pragma unroll
        for (int a = 0; a < MT; ++a) {
          unsigned af[4];
          const int r = arow + 16 * a, c = 2 * j + (lane >> 4);
          ldmatrix_x4(af, as + r * 256 + 16 * (c ^ (r & 7)));
#pragma unroll
          for (int h = 0; h < NT; ++h) mma_16816(tmp[a][h], af, b[h][0], b[h][1]);
        }
      }
      // acc += tmp * absmax of the group, columns 2t, 2t + 1 of each n8 tile
#pragma unroll
      for (int h = 0; h < NT; ++h) {
        const int col = WC * wn + 8 * h + 2 * t;
        const float s0 = ss[2 * col + grp], s1 = ss[2 * (col + 1) + grp];
#pragma unroll
        for (int a = 0; a < MT; ++a)
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            acc[a][h][c] = fmaf(tmp[a][h][c], (c & 1) ? s1 : s0, acc[a][h][c]);
            tmp[a][h][c] = 0.f;
          }
      }
    }
  }
  cp_async_wait<0>();

#pragma unroll
  for (int a = 0; a < MT; ++a)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int row = m0 + WR * wm + 16 * a + g + 8 * e;
      if (row >= M) continue;
#pragma unroll
      for (int h = 0; h < NT; ++h) {
        const int col = n0 + WC * wn + 8 * h + 2 * t;
        if (col >= N) continue;
        const float v0 = acc[a][h][2 * e], v1 = acc[a][h][2 * e + 1];
        store_bf16_pair(y + (size_t)row * N + col, col, N, v0, v1);
      }
    }
}

#ifndef FDLITE_NVRTC   // nvcc (CI's compile check) needs them; NVRTC instantiates what name_expressions ask
#define MMA_NF4(S, WM) \
  template __global__ void mma_nf4<S, WM>(const bf16_t*, const uint4*, const float*, bf16_t*, int, int, int);
MMA_NF4(3, 1) MMA_NF4(3, 2) MMA_NF4(4, 1) MMA_NF4(4, 2)
#endif
