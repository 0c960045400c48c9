// Prefill GEMM on the tensor cores over 8-bit codes on both sides: the activation-quantized methods (and
// block_wise_fp8) past the decode rows, where gemv_rows would read the weights once per 16 rows.
//   y[m, n] = sum over K tiles b (128 columns) of  sx(m, b) sw(n, b) sum_{k in b} xq[m, k] wq[n, k]
// x comes quantized by gemv_rows_quant_x in quantize_x's layout (gemv_rows_codes.cuh: codes [M][K + 64], then
// scales [M][K / 128]); the weights are read as stored. MODE (gemv_rows_codes.cuh's ROWS_*):
//   ROWS_BLOCK   block_wise_fp8: e4m3 x per token and 128 columns, e4m3 w [N, K], ws [ceil(N / 128), K / 128]
//   ROWS_CHANNEL wfp8afp8: e4m3 x per token (xs[m][0]), e4m3 w [N, K], ws [N]: scaled once, after the K loop
//   ROWS_INT8    w8a8: int8 x per token, int8 w [N, K], ws [N]: exact int32 sums over all of K
//   ROWS_W4A8    w4a8: int8 x per token and group of 128, stored evens-then-odds per 8 columns (quantize_x's W4
//                order: the low nibbles of a packed word are the even k); nibbles [N, K / 2] (low = even k)
//                sign-extended to int8 in registers; ws [N, K / 128]; exact int32 sums per group
//   ROWS_W4AFP8  w4afp8: e4m3 x per token and group, nibbles looked up as e4m3(q) in registers, ws [N, K / 128]
// The NumPy twins: fdlite.quant.{block_wise_fp8, wfp8afp8, w8a8, w4a8, w4afp8}.Method.matmul.
//
// Block: 128 rows of x (blockIdx.x, so that the blocks resident at once share few weight tiles and those stay in
// L2) x 128 output columns (blockIdx.y). 8 warps as 2 (rows) x 4 (columns), each 64 x 32: 4 m16 x 4 n8 tiles, 16
// mma m16n8k32 a k32 step. A K tile of 128 columns (one scale group) is one pipeline stage, copied with cp.async
// STAGES - 1 tiles ahead: x [128][128 B] and 8-bit weights [128][128 B], 16-byte chunks XOR-swizzled by row so that
// ldmatrix's 8 rows hit 8 bank groups; 4-bit weights [128][64 B], chunk c of row r at c ^ ((r >> 1) & 3) (a warp's
// 8 rows then read 8 different 16-byte bank groups); then the tile's scales. A lane's B fragment of a 4-bit step is
// two words of its row: word t / 2 (k 4t.. of the mma) and 2 + t / 2 (k 16 + 4t..), of which it expands the half
// t & 1 (W4A8: the evens or the odds, as x's codes are stored; W4AFP8: nibbles 0-3 or 4-7, natural order).
// Per-group modes (BLOCK, W4A8, W4AFP8) sum a tile into tmp and add tmp * sx * sw into acc at the tile's end.
#include "common.cuh"
// the ROWS_* modes, prmt, the e4m3 byte table of 0..7:
#include "gemv_rows_codes.cuh"

#define Q8_BM 128
#define Q8_BN 128
#define Q8_THREADS 256

// e4m3fn bits of -8..-1 (nibbles 8..15, two's complement), four a word (lowest byte first): the signed W4AFP8
// lookup's upper table (0..7 are gemv_rows_codes.cuh's E4M3_U0, E4M3_U1)
#define E4M3_N0 0xCACCCED0u
#define E4M3_N1 0xB8C0C4C8u

__device__ __forceinline__ void mma8(float* c, const unsigned* a, unsigned b0, unsigned b1) {
  mma_16832_e4m3(c, a, b0, b1);
}
__device__ __forceinline__ void mma8(int* c, const unsigned* a, unsigned b0, unsigned b1) { mma_16832_s8(c, a, b0, b1); }

// A packed word of 8 nibbles (k 0..7, low nibble first) -> the 4 codes lane half h (0 or 1) takes, as 8-bit operands.
// W4A8: h = 0 the even k (low nibbles), 1 the odd k, sign-extended (nibble ^ 8, minus 8 per byte).
__device__ __forceinline__ unsigned w4_s8x4(unsigned w, int h) {
  const unsigned v = (h ? w >> 4 : w) & 0x0f0f0f0fu;
  return __vsub4(v ^ 0x08080808u, 0x08080808u);
}
// W4AFP8: h = 0 nibbles 0..3, 1 nibbles 4..7 -> e4m3(q). The low table gives 0..7 and, for a code with bit 3 set,
// prmt's replicated (clear) sign: 0; the upper table is indexed with bit 3 cleared and kept where bit 3 is set
// (hi: nf4_bf16x8's masks from prmt's sign replication).
__device__ __forceinline__ unsigned w4_e4m3s(unsigned w, int h) {
  const unsigned s = h ? w >> 16 : w;
  const unsigned hi = prmt(s << 4, s, 0xD9C8u);
  return prmt(E4M3_U0, E4M3_U1, s) | (prmt(E4M3_N0, E4M3_N1, s & 0x7777u) & hi);
}

template <int MODE, int STAGES, bool UNROLL>
__global__ void __launch_bounds__(Q8_THREADS, 1) mma_q8(const u8* __restrict__ xq, const uint4* __restrict__ w,
                                                        const float* __restrict__ ws, bf16_t* __restrict__ y, int M,
                                                        int N, int K) {
  constexpr bool W4 = MODE == ROWS_W4A8 || MODE == ROWS_W4AFP8;
  constexpr bool INT = MODE == ROWS_INT8 || MODE == ROWS_W4A8;       // s8 mma, int32 sums
  constexpr bool TILED = MODE == ROWS_BLOCK || W4;                   // scales per 128-column tile
  using Tmp = typename AccOf<INT>::T;                                // a tile's sums (TILED) or all of K's
  using Acc = typename AccOf<INT && !TILED>::T;
  constexpr int AV = Q8_BM * 8;                                      // uint4 of x per stage (8 chunks a row)
  constexpr int WV = Q8_BN * (W4 ? 4 : 8);                           // uint4 of weights per stage
  constexpr int SV = TILED ? 2 * Q8_BM / 4 : 0;                      // uint4 of scales: x rows', then weights'
  constexpr int STV = AV + WV + SV;
  extern __shared__ uint4 smem[];                                    // STAGES x [x: AV][w: WV][scales: SV]

  pdl_launch();
  xq += pdl_wait();                          // x was quantized by the kernel before (gemv_rows_quant_x)
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int wm = warp & 1, wn = warp >> 1;                           // the warp's 64 rows and 32 columns
  const int m0 = blockIdx.x * Q8_BM, n0 = blockIdx.y * Q8_BN;
  const int sx = K + 64, Kb = K / 128, nk = Kb;
  const float* xs = reinterpret_cast<const float*>(xq + (size_t)M * sx);   // [M][Kb]
  const int wrow = W4 ? K / 32 : K / 16;                             // 16-byte chunks per weight row

  auto load_stage = [&](int kt, int slot) {
    uint4* as = smem + slot * STV;
    uint4* bs = as + AV;
#pragma unroll
    for (int i = threadIdx.x; i < AV; i += Q8_THREADS) {
      const int r = i >> 3, c = i & 7;
      const bool ok = m0 + r < M;
      cp_async16(as + r * 8 + (c ^ (r & 7)), xq + (size_t)(ok ? m0 + r : 0) * sx + kt * 128 + 16 * c, ok);
    }
#pragma unroll
    for (int i = threadIdx.x; i < WV; i += Q8_THREADS) {
      const int r = W4 ? i >> 2 : i >> 3, c = W4 ? i & 3 : i & 7;
      const bool ok = n0 + r < N;
      const uint4* src = w + (size_t)(ok ? n0 + r : 0) * wrow + kt * (W4 ? 4 : 8) + c;
      cp_async16(bs + (W4 ? r * 4 + (c ^ ((r >> 1) & 3)) : r * 8 + (c ^ (r & 7))), src, ok);
    }
    if (TILED) {
      float* ss = reinterpret_cast<float*>(bs + WV);
      const int i = threadIdx.x;                                     // 256 threads: 128 x rows, 128 weight rows
      if (i < Q8_BM) {
        const bool ok = m0 + i < M;
        cp_async4(ss + i, xs + (size_t)(ok ? m0 + i : 0) * Kb + kt, ok);
      } else if (W4) {
        const bool ok = n0 + i - Q8_BM < N;
        cp_async4(ss + i, ws + (size_t)(ok ? n0 + i - Q8_BM : 0) * Kb + kt, ok);
      } else if (i == Q8_BM) {                                       // BLOCK: the block's one 128 x 128 weight scale
        cp_async4(ss + i, ws + (size_t)blockIdx.y * Kb + kt, true);
      }
    }
  };

  Acc acc[4][4][4];
  Tmp tmp[4][4][4];
#pragma unroll
  for (int a = 0; a < 4; ++a)
#pragma unroll
    for (int h = 0; h < 4; ++h)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[a][h][c] = tmp[a][h][c] = 0;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < nk) load_stage(s, s);
    cp_async_commit();
  }
  // this lane's ldmatrix rows: x rows of the warp (a = 0; + 16 a), and for 8-bit weights its pair of n8 tiles
  const int arow = 64 * wm + (lane & 15);
  const int bmat = lane >> 3, brow = 32 * wn + 8 * (bmat >> 1) + (lane & 7);
  const int half = t & 1;
  for (int i = 0; i < nk; ++i) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();                         // tile i landed for every thread; the slot of tile i - 1 is free
    if (i + STAGES - 1 < nk) load_stage(i + STAGES - 1, (i + STAGES - 1) % STAGES);
    cp_async_commit();

    const uint4* as = smem + (i % STAGES) * STV;
    const uint4* bs = as + AV;
    auto step = [&](int j) {                 // k32 step j: 16-byte chunks 2j, 2j + 1 of x
      unsigned b[4][2];
      if (W4) {
#pragma unroll
        for (int h = 0; h < 4; ++h) {
          const int r = 32 * wn + 8 * h + g;
          const unsigned* cw = reinterpret_cast<const unsigned*>(bs + r * 4 + (j ^ ((r >> 1) & 3)));
          const unsigned w0 = cw[t >> 1], w1 = cw[2 + (t >> 1)];
          if (MODE == ROWS_W4A8) {
            b[h][0] = w4_s8x4(w0, half);
            b[h][1] = w4_s8x4(w1, half);
          } else {
            b[h][0] = w4_e4m3s(w0, half);
            b[h][1] = w4_e4m3s(w1, half);
          }
        }
      } else {
#pragma unroll
        for (int h = 0; h < 4; h += 2) {                             // n8 tiles h, h + 1 x chunks 2j, 2j + 1
          const int r = brow + 8 * h;
          unsigned q4[4];
          ldmatrix_x4(q4, bs + r * 8 + ((2 * j + (bmat & 1)) ^ (r & 7)));
          b[h][0] = q4[0];
          b[h][1] = q4[1];
          b[h + 1][0] = q4[2];
          b[h + 1][1] = q4[3];
        }
      }
#pragma unroll
      for (int a = 0; a < 4; ++a) {
        unsigned af[4];
        const int r = arow + 16 * a, c = 2 * j + (lane >> 4);
        ldmatrix_x4(af, as + r * 8 + (c ^ (r & 7)));
#pragma unroll
        for (int h = 0; h < 4; ++h) {
          if constexpr (TILED) mma8(tmp[a][h], af, b[h][0], b[h][1]);
          else mma8(acc[a][h], af, b[h][0], b[h][1]);
        }
      }
    };
    if constexpr (UNROLL) {
#pragma unroll
      for (int j = 0; j < 4; ++j) step(j);
    } else {
#pragma unroll 1
      for (int j = 0; j < 4; ++j) step(j);
    }
    if (TILED) {                             // acc += tmp * sx[row] * sw (BLOCK: the block's; W4: the column's)
      const float* ss = reinterpret_cast<const float*>(bs + WV);
#pragma unroll
      for (int a = 0; a < 4; ++a) {
        const float x0 = ss[64 * wm + 16 * a + g], x1 = ss[64 * wm + 16 * a + g + 8];
#pragma unroll
        for (int h = 0; h < 4; ++h) {
          const int col = 32 * wn + 8 * h + 2 * t;
          const float s0 = W4 ? ss[Q8_BM + col] : ss[Q8_BM], s1 = W4 ? ss[Q8_BM + col + 1] : s0;
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            acc[a][h][c] = fmaf((float)tmp[a][h][c] * (c < 2 ? x0 : x1), (c & 1) ? s1 : s0, (float)acc[a][h][c]);
            tmp[a][h][c] = 0;
          }
        }
      }
    }
  }
  cp_async_wait<0>();

  // C fragment c of (a, h): row 64 wm + 16 a + g (+ 8 for c >= 2), column 32 wn + 8 h + 2 t + (c & 1)
#pragma unroll
  for (int a = 0; a < 4; ++a)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int row = m0 + 64 * wm + 16 * a + g + 8 * e;
      if (row >= M) continue;
      const float sxr = TILED ? 1.f : __ldcg(xs + (size_t)row * Kb);
#pragma unroll
      for (int h = 0; h < 4; ++h) {
        const int col = n0 + 32 * wn + 8 * h + 2 * t;
        if (col >= N) continue;
        float v0 = (float)acc[a][h][2 * e], v1 = (float)acc[a][h][2 * e + 1];
        if (!TILED) {
          v0 *= sxr * __ldg(ws + col);
          v1 *= col + 1 < N ? sxr * __ldg(ws + col + 1) : 0.f;
        }
        store_bf16_pair(y + (size_t)row * N + col, col, N, v0, v1);
      }
    }
}

#ifndef FDLITE_NVRTC   // nvcc (CI's compile check) needs them; NVRTC instantiates what name_expressions ask
#define MMA_Q8_INST(MODE, S, U) \
  template __global__ void mma_q8<MODE, S, U>(const u8*, const uint4*, const float*, bf16_t*, int, int, int);
#define MMA_Q8(MODE)                                                                                             \
  MMA_Q8_INST(MODE, 3, false) MMA_Q8_INST(MODE, 3, true) MMA_Q8_INST(MODE, 4, false) MMA_Q8_INST(MODE, 4, true)
MMA_Q8(ROWS_BLOCK)
MMA_Q8(ROWS_CHANNEL)
MMA_Q8(ROWS_INT8)
MMA_Q8(ROWS_W4A8)
MMA_Q8(ROWS_W4AFP8)
#endif
