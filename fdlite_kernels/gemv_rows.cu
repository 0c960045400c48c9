// Decode GEMV (M <= 16 rows) on the tensor cores over weights stored ROW-MAJOR, as checkpoints hold them: dense bf16
// w [N, K], block_wise_fp8's and wfp8afp8's e4m3 bits q [N, K]. No repack and no second copy: mma_sk_fp8, mma_bf16
// and cuBLAS read the same bytes for more rows.
//   MODE = ROWS_BF16:  y[m, n] = sum_k x[m, k] w[n, k]                            (mma m16n8k16 bf16; K % 64 == 0)
//   MODE = ROWS_BLOCK: block_wise_fp8, ws [ceil(N / 128), K / 128] inverse scales of 128 x 128 weight blocks,
//                      y[m, n] = sum_b xs[m, b] ws[n / 128, b] sum_{k in b} e4m3(xq[m, k]) e4m3(q[n, k])
//                      (mma m16n8k32 e4m3, sm_89+; K % 128 == 0), xq / xs the per-token, per-128-column dynamic
//                      quantization of x (act_quant_fp8.cu's formula, bit for bit)
//   MODE = ROWS_CHANNEL: wfp8afp8, ws [N] per output channel, x quantized per token over all of K:
//                      y[m, n] = xs[m] ws[n] sum_k e4m3(xq[m, k]) e4m3(q[n, k])         (e4m3 mma; K % 128 == 0)
//   MODE = ROWS_INT8:  w8a8, int8 q [N, K] and ws [N] per output channel, x quantized to int8 per token over all of
//                      K (s = max(amax, 1e-10) / 127, rint, +-127: fdlite.quant._common.act_int8_per_token):
//                      y[m, n] = xs[m] ws[n] sum_k xq[m, k] q[n, k]   (mma m16n8k32 s8, exact int32 sums; sm_80+)
//   MODE = ROWS_W4A8:  w4a8 (groups of 128), q [N, K / 2] two's-complement nibbles (low = even k), ws [N, K / 128]
//                      group scales, x quantized to int8 per token and group (act_int8_per_token(group=128)):
//                      y[m, n] = sum_b xs[m, b] ws[n, b] sum_{k in b} xq[m, k] q[n, k]     (s8 mma; K % 256 == 0)
//                      A nibble enters the mma as u = q + 8 (0..15: one xor and two masks give 8 codes in two
//                      registers, the even k's and the odd k's); sum xq u - 8 sum xq = sum xq q, exactly, with
//                      each group's sum xq taken in the prologue. x is stored with each 8 k's codes as the evens,
//                      then the odds: the same permutation of k as the weights' registers.
//   MODE = ROWS_W4AFP8: w4afp8 (groups of 128), q and ws as ROWS_W4A8, x quantized to e4m3 per token and group
//                      (act_fp8(x, 128): s = max(amax, 1e-10) / 448, the twin's codes):
//                      y[m, n] = sum_b xs[m, b] ws[n, b] sum_{k in b} e4m3(xq[m, k]) q[n, k]   (e4m3 mma; sm_89+)
//                      A nibble enters the mma as e4m3(u), u = q + 8 (exact: 0..15), looked up with two byte
//                      permutes of the word as it is: a prmt's selector nibble picks one of 8 table bytes (bits
//                      0..2) and, with bit 3 set, replicates that byte's sign instead. Both tables (e4m3(0..7),
//                      e4m3(8..15)) have clear sign bits, so the half a table does not hold reads 0 and the two
//                      lookups OR together. sum e4m3(xq) u - 8 sum e4m3(xq) = sum e4m3(xq) q; the prologue takes each
//                      group's sum of x's code values (fp32). x is stored in natural order.
//   MODE = ROWS_NF4:   nf4, weight-only, groups of 64: q [N, K / 2] level indices 0..15 (low = even k) as
//                      fdlite.quant.nf4 packs them but with the two groups of each 64-byte half interleaved 8 bytes
//                      at a time (gemv_rows.py: nf4_interleave; lane t's 16 bytes then hold 8 of each group, so
//                      the 4 lanes of an mma step always sum within one group); ws [N, K / 64] absmax:
//                      y[m, n] = sum_b ws[n, b] sum_{k in b} x[m, k] bf16(NF4_LEVELS[q[n, k]])   (bf16 mma; K % 256)
//                      Each index becomes its level's bf16 bits by four prmt lookups (two 8-byte tables per byte,
//                      merged by a mask of index bit 3 that one more prmt spreads to whole bytes). x is bf16 from L2.
// The byte modes quantize x (quantize_x) in each block's prologue into shared memory at one token: no second launch
// per linear, no xq round trip through global memory. From two tokens on (PRE) gemv_rows_quant_x quantizes it once
// into global memory before the GEMV, which every block then reads: at 8 tokens the per-block prologue cost more than
// the GEMV (BENCHMARKS.md).
// Layout of the work: a row's weights are cut into 128-byte K tiles (64 bf16 or 128 e4m3 columns). Lane l = 4g + t of a
// warp loads the 16-byte chunks at bytes 16t and 64 + 16t of rows g and g + 8 of its row pair (each warp load reads
// 64 contiguous bytes of 8 rows: whole 32-byte sectors) and the same columns of x. An mma sums over k, so any
// permutation of k applied to both operands leaves it unchanged: step j of a tile (4 steps: k16 bf16 or k32 e4m3)
// takes words 2(j & 1) and 2(j & 1) + 1 of chunk j >> 1 as {a0, a2} (row g), {a1, a3} (row g + 8) and {b0, b1}
// (token g), and the mma's logical k 2t.. (4t.. for e4m3) stands for those physical columns in both.
// Why the weights are the A operand: as in gemv_packed, one mma consumes 16 rows x a step of weights and x fills B
// (8 token columns; tokens past M repeat row M - 1, their outputs are never stored). Per 2 KiB of weights a warp
// spends 4 loads, 4 mma and (fp8) 6 fp32 ops of scaling: no dequantization, so it is bound by memory alone.
// Block: R row pairs x W warps that split the K tiles (interleaved) and meet in shared memory; each lane keeps its
// next two K tiles of weights in flight in registers while it computes one (gemv_packed's register ring). A block
// loops over row pairs (pb += gridDim.x): a byte mode's launch with the prologue sizes the grid to the resident
// blocks, so each quantizes x once for many pairs (per pair it cost ~5x the K loop's instructions); bf16, nf4 and PRE
// launch a block per R pairs.
#include "common.cuh"
// the ROWS_* modes, the 4-bit lookups, quantize_x:
#include "gemv_rows_codes.cuh"

// NF4: 128 registers (16 warps an SM); left free, ptxas takes 248 and the kernel ran 20% slower (BENCHMARKS.md)
// PRE (byte modes): x comes quantized, in quantize_x's layout, from gemv_rows_quant_x (passed as x): no prologue,
// no shared memory, and a block per R row pairs. For several tokens, where each block quantizing all of x cost more
// than the GEMV (w4a8 down_proj at 8 rows: 49.8 us against 19.2 at one).
// NB: token fragments of 8 (2: up to 16 tokens, tokens g and g + 8 of a lane; bf16, nf4 and PRE byte modes but the
// int4 ones, whose x registers would not fit): the weights' registers feed NB mma each.
template <int MODE, int R, int W, bool PRE = false, int NB = 1>
__global__ void __launch_bounds__(32 * W, MODE == ROWS_NF4 && R == 1 && NB == 1 ? 16 / W : 0)
    gemv_rows(const bf16_t* __restrict__ x, const uint4* __restrict__ w, const float* __restrict__ ws,
              bf16_t* __restrict__ y, int M, int N, int K) {
  constexpr int RB = 3;                                // tiles per lane in registers: two in flight, one computed
  // BYTES: x quantized by the block (every mode but bf16 and nf4); INT8: integer codes and sums over all of K;
  // NIB: 4-bit weights, 256 columns a tile; W4: and x quantized per 128-column group with code sums (W4F: to e4m3)
  constexpr bool NF4 = MODE == ROWS_NF4, W4F = MODE == ROWS_W4AFP8;
  constexpr bool W4 = MODE == ROWS_W4A8 || W4F, NIB = W4 || NF4;
  constexpr bool BYTES = MODE != ROWS_BF16 && !NF4, BLOCK = MODE == ROWS_BLOCK, INT8 = MODE == ROWS_INT8;
  static_assert(NB == 1 || (NB == 2 && !W4 && (PRE || !BYTES)), "16 tokens: bf16, nf4 or a PRE byte mode");
  constexpr int RA = R * NB;                           // accumulator sets: row pair r, token fragment h at r NB + h
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int rowq = NIB ? K / 32 : BYTES ? K / 16 : K / 8;   // 16-byte chunks per weight row
  const int ktiles = rowq / 8;                         // 128-byte K tiles per row (NIB: 256 columns)
  const int Kb = K / 128;                              // scale groups of 128 columns per row (NF4: 64, Kb / 2)
  const int pairs = (N + 15) / 16;
  const int blocks = (pairs + R - 1) / R;              // blocks of R row pairs; this block takes every gridDim.x-th

  constexpr int SV = W4 ? 4 : NF4 ? 8 : 1;             // scales per pair and tile: rows g / g + 8 x 2 (NF4: 4) groups
  constexpr int XC = W4 ? 4 : NF4 ? 1 : 2;             // 16-byte x chunks per lane and tile (NF4: loaded in compute)
  uint4 wb[RB][R][2][2];
  float sb[RB][R][SV];
  uint4 xb[RB][NB][XC];
  // the loop-invariant addresses of R pairs from p0: rows past N read row N - 1 (outputs never stored)
  const uint4* wrow[R][2];                             // lane's chunk 0 of rows g, g + 8 of pair r, K tile 0
  const float* srow[R][2];                             // BLOCK: the pair's 128-row block of scales; W4: rows' groups
  auto rows_of = [&](int p0) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int pr = min(p0 + r, pairs - 1);
#pragma unroll
      for (int h = 0; h < 2; ++h) wrow[r][h] = w + (size_t)min(16 * pr + g + 8 * h, N - 1) * rowq + t;
#pragma unroll
      for (int h = 0; h < 2; ++h)                      // BLOCK: a pair never straddles a 128-row block
        srow[r][h] = BLOCK ? ws + (size_t)((16 * pr) >> 7) * Kb
                           : NIB ? ws + (size_t)min(16 * pr + g + 8 * h, N - 1) * (NF4 ? 2 * Kb : Kb) : ws;
    }
  };
  auto load_w = [&](int kt, uint4 (&wv)[R][2][2], float (&sv)[R][SV]) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int c = 0; c < 2; ++c) wv[r][h][c] = __ldg(wrow[r][h] + kt * 8 + 4 * c);
      if (BLOCK) sv[r][0] = __ldg(srow[r][0] + kt);
#pragma unroll
      for (int v = 0; v < (W4 ? 4 : 0); ++v) sv[r][v] = __ldg(srow[r][v >> 1] + 2 * kt + (v & 1));   // [h][group]
      if (NF4) {                                       // [h][group]: 4 groups of 64, 16 bytes (K % 256: aligned)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float4 f = __ldg(reinterpret_cast<const float4*>(srow[r][h]) + kt);
          sv[r][4 * h] = f.x, sv[r][4 * h + 1] = f.y, sv[r][4 * h + 2] = f.z, sv[r][4 * h + 3] = f.w;
        }
      }
    }
  };
  auto prefetch = [&]() {                              // this warp's first RB - 1 tiles of the current pairs
#pragma unroll
    for (int u = 0; u < RB - 1; ++u)
      if (warp + u * W < ktiles) load_w(warp + u * W, wb[u], sb[u]);
  };
  // Launched with PDL: the weights depend on no kernel, so the first two tiles are in flight while the kernel that
  // writes x finishes; x only after it has (pdl_wait).
  rows_of(blockIdx.x * R);
  prefetch();
  extern __shared__ uint4 xsm[];
  x += pdl_wait();

  // BYTES: x quantized (quantize_x) by this block into shared memory, once per block, which then loops over row
  // pairs (the launcher sizes the grid to what is resident); PRE: by gemv_rows_quant_x into global memory (x), read
  // with coherent loads (written by the kernel before: PDL)
  const int sx = K + 64;                               // bytes per token row of xq
  const u8* xqb = PRE ? reinterpret_cast<const u8*>(x) : reinterpret_cast<const u8*>(xsm);
  const float* xsc = reinterpret_cast<const float*>(xqb + (size_t)M * sx);
  const int* xsum = reinterpret_cast<const int*>(xsc + (size_t)M * Kb);   // W4: sum of a group's x codes
  const float* xsumf = xsc + (size_t)M * Kb;            // W4F: the same, of the e4m3 code values
  auto ld = [](const auto* p) { return PRE ? __ldca(p) : *p; };
  if (BYTES && !PRE) {
    quantize_x<MODE, W>(x, reinterpret_cast<u8*>(xsm), M, K, 0, M * K / 8);
    __syncthreads();
  }
  // B chunks of tile kt: token g's bytes 16t and 64 + 16t of the tile (bf16 from L2, coherent: written by the kernel
  // before; e4m3 from shared memory), one tile ahead of the mma
  const uint4* xrow[NB];                               // token g + 8h (past M: token M - 1, never stored)
  const float* xs0[NB];                                // fp8: this lane's C columns are tokens 2t + 8h and 2t + 1 + 8h
  const float* xs1[NB];                                // (their scales per tile)
#pragma unroll
  for (int h = 0; h < NB; ++h) {
    const int tg = min(g + 8 * h, M - 1);
    xrow[h] = BYTES ? reinterpret_cast<const uint4*>(xqb + (size_t)tg * sx) + (W4 ? 0 : t)
                    : reinterpret_cast<const uint4*>(x + (size_t)tg * K) + t;
    xs0[h] = xsc + min(2 * t + 8 * h, M - 1) * Kb;
    xs1[h] = xsc + min(2 * t + 1 + 8 * h, M - 1) * Kb;
  }
  // W4: a tile is 256 columns of x, the lane's 32 bytes of group c at 128 c + 32 t (chunks 2c, 2c + 1)
  auto load_x = [&](int kt, uint4 (&xv)[NB][XC]) {
#pragma unroll
    for (int h = 0; h < NB; ++h)
#pragma unroll
      for (int c = 0; c < (NF4 ? 0 : XC); ++c)         // NF4 loads its x inside compute (8 chunks a tile)
        xv[h][c] = W4 ? ld(xrow[h] + kt * 16 + 8 * (c >> 1) + 2 * t + (c & 1))
                      : BYTES ? ld(xrow[h] + kt * 8 + 4 * c) : __ldca(xrow[h] + kt * 8 + 4 * c);
  };

  float acc[RA][4];
  int iacc[RA][4];                                     // INT8: exact integer sums (|sum| < 127^2 K < 2^31)
  // W4: two groups of 128 columns, four k32 steps each
  auto compute_w4 = [&](int kt, const uint4 (&wv)[R][2][2], const float (&sv)[R][SV], const uint4 (&xw4)[NB][XC]) {
    const uint4 (&xv)[XC] = xw4[0];                  // NB == 1
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      int part[R][4];
      float fpart[R][4];                             // W4F: the e4m3 mma's sums
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int e = 0; e < 4; ++e) part[r][e] = 0, fpart[r][e] = 0.f;
#pragma unroll
      for (int i = 0; i < 4; ++i) {                  // word i of the lane's 16 bytes: its k 32 t + 8 i .. + 7
        const uint4& xw = xv[2 * c + (i >> 1)];
        // W4A8: evens, odds (x stored to match); W4F: k 0..3, 4..7 (natural)
        const unsigned b0 = word_of(xw, 2 * (i & 1)), b1 = word_of(xw, 2 * (i & 1) + 1);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const unsigned wg = word_of(wv[r][0][c], i), wh = word_of(wv[r][1][c], i);
          const unsigned ug = wg ^ 0x88888888u, uh = wh ^ 0x88888888u;
          if (W4F) {
            const unsigned a[4] = {w4_e4m3x4(wg, ug), w4_e4m3x4(wh, uh), w4_e4m3x4(wg >> 16, ug >> 16),
                                   w4_e4m3x4(wh >> 16, uh >> 16)};
            mma_16832_e4m3(fpart[r], a, b0, b1);
          } else {
            const unsigned a[4] = {ug & 0x0F0F0F0Fu, uh & 0x0F0F0F0Fu, (ug >> 4) & 0x0F0F0F0Fu,
                                   (uh >> 4) & 0x0F0F0F0Fu};
            mma_16832_s8(part[r], a, b0, b1);
          }
        }
      }
      const int grp = 2 * kt + c;
      const int m0 = min(2 * t, M - 1) * Kb + grp, m1 = min(2 * t + 1, M - 1) * Kb + grp;
      // sum xq (q + 8) - 8 sum xq (W4A8 exact in int32), then the two scales
      const float d0 = W4F ? 8.f * ld(xsumf + m0) : 0.f, d1 = W4F ? 8.f * ld(xsumf + m1) : 0.f;
      const int q0 = W4F ? 0 : 8 * ld(xsum + m0), q1 = W4F ? 0 : 8 * ld(xsum + m1);
      const float x0 = ld(xs0[0] + grp), x1 = ld(xs1[0] + grp);   // c0, c2: token 2t; c1, c3: token 2t + 1
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float p0 = W4F ? fpart[r][0] - d0 : (float)(part[r][0] - q0);
        const float p1 = W4F ? fpart[r][1] - d1 : (float)(part[r][1] - q1);
        const float p2 = W4F ? fpart[r][2] - d0 : (float)(part[r][2] - q0);
        const float p3 = W4F ? fpart[r][3] - d1 : (float)(part[r][3] - q1);
        acc[r][0] = fmaf(p0, sv[r][c] * x0, acc[r][0]);
        acc[r][1] = fmaf(p1, sv[r][c] * x1, acc[r][1]);
        acc[r][2] = fmaf(p2, sv[r][2 + c] * x0, acc[r][2]);
        acc[r][3] = fmaf(p3, sv[r][2 + c] * x1, acc[r][3]);
      }
    }
  };
  // the byte modes and bf16: four k steps over the tile's two 64-byte chunks
  auto compute_bytes = [&](int kt, const uint4 (&wv)[R][2][2], const float (&sv)[R][SV], const uint4 (&xv)[NB][XC]) {
    float part[RA][4];                                 // BLOCK: this tile's (one scale group's) unscaled sums
#pragma unroll
    for (int r = 0; r < RA; ++r)
#pragma unroll
      for (int c = 0; c < 4; ++c) part[r][c] = 0.f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int c = j >> 1, i = 2 * (j & 1);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const unsigned a[4] = {word_of(wv[r][0][c], i), word_of(wv[r][1][c], i), word_of(wv[r][0][c], i + 1),
                               word_of(wv[r][1][c], i + 1)};
#pragma unroll
        for (int h = 0; h < NB; ++h) {
          const int ra = r * NB + h;
          const unsigned b0 = word_of(xv[h][c], i), b1 = word_of(xv[h][c], i + 1);
          if (BLOCK) mma_16832_e4m3(part[ra], a, b0, b1);
          else if (INT8) mma_16832_s8(iacc[ra], a, b0, b1);
          else if (BYTES) mma_16832_e4m3(acc[ra], a, b0, b1);
          else mma_16816(acc[ra], a, b0, b1);
        }
      }
    }
    if (BLOCK) {
#pragma unroll
      for (int h = 0; h < NB; ++h) {
        const float x0 = ld(xs0[h] + kt), x1 = ld(xs1[h] + kt);   // c0, c2: token 2t + 8h; c1, c3: 2t + 1 + 8h
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const int ra = r * NB + h;
          acc[ra][0] = fmaf(part[ra][0], sv[r][0] * x0, acc[ra][0]);
          acc[ra][1] = fmaf(part[ra][1], sv[r][0] * x1, acc[ra][1]);
          acc[ra][2] = fmaf(part[ra][2], sv[r][0] * x0, acc[ra][2]);
          acc[ra][3] = fmaf(part[ra][3], sv[r][0] * x1, acc[ra][3]);
        }
      }
    }
  };
  // NF4: lane t's 16 bytes of half c hold 8 bytes of group 2c (words 0, 1) and 8 of group 2c + 1 (words 2, 3): word
  // i's codes are k 128 c + 64 s + 16 t + 8 p + 0..7 (s = i >> 1, p = i & 1), x's 16 bytes at that k
  const uint4* xnf[NB];
#pragma unroll
  for (int h = 0; h < NB; ++h) xnf[h] = reinterpret_cast<const uint4*>(x + (size_t)min(g + 8 * h, M - 1) * K) + 2 * t;
  auto compute_nf4 = [&](int kt, const uint4 (&wv)[R][2][2], const float (&sv)[R][SV]) {
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      uint4 xv[NB][4];
#pragma unroll
      for (int h = 0; h < NB; ++h)
#pragma unroll
        for (int i = 0; i < 4; ++i) xv[h][i] = __ldca(xnf[h] + kt * 32 + 16 * c + 8 * (i >> 1) + (i & 1));
#pragma unroll
      for (int sg = 0; sg < 2; ++sg) {
        float part[RA][4];
#pragma unroll
        for (int r = 0; r < RA; ++r)
#pragma unroll
          for (int e = 0; e < 4; ++e) part[r][e] = 0.f;
#pragma unroll
        for (int p = 0; p < 2; ++p) {
          const int i = 2 * sg + p;
#pragma unroll
          for (int r = 0; r < R; ++r) {
            unsigned lg[4], lh[4];
            nf4_bf16x8(word_of(wv[r][0][c], i), lg);
            nf4_bf16x8(word_of(wv[r][1][c], i), lh);
            const unsigned a0[4] = {lg[0], lh[0], lg[1], lh[1]}, a1[4] = {lg[2], lh[2], lg[3], lh[3]};
#pragma unroll
            for (int h = 0; h < NB; ++h) {
              mma_16816(part[r * NB + h], a0, xv[h][i].x, xv[h][i].y);
              mma_16816(part[r * NB + h], a1, xv[h][i].z, xv[h][i].w);
            }
          }
        }
        const int gi = 2 * c + sg;                   // the tile's group (of 4); c0, c1: row g; c2, c3: row g + 8
#pragma unroll
        for (int ra = 0; ra < RA; ++ra) {
          const int r = ra / NB;
          acc[ra][0] = fmaf(part[ra][0], sv[r][gi], acc[ra][0]);
          acc[ra][1] = fmaf(part[ra][1], sv[r][gi], acc[ra][1]);
          acc[ra][2] = fmaf(part[ra][2], sv[r][4 + gi], acc[ra][2]);
          acc[ra][3] = fmaf(part[ra][3], sv[r][4 + gi], acc[ra][3]);
        }
      }
    }
  };
  auto compute = [&](int kt, const uint4 (&wv)[R][2][2], const float (&sv)[R][SV], const uint4 (&xv)[NB][XC]) {
    if constexpr (W4) compute_w4(kt, wv, sv, xv);
    else if constexpr (NF4) compute_nf4(kt, wv, sv);
    else compute_bytes(kt, wv, sv, xv);
  };
  // tile i of this warp (kt = warp + i W) in slot u = i % RB; the loop is unrolled by RB so the ring rotates by
  // renaming (gemv_packed): loads of x one tile on and of the weights RB - 1 tiles on, then this tile's mma
  auto tile = [&](int kt, int u) {
    if (kt + W < ktiles) load_x(kt + W, xb[(u + 1) % RB]);
    if (kt + (RB - 1) * W < ktiles) load_w(kt + (RB - 1) * W, wb[(u + RB - 1) % RB], sb[(u + RB - 1) % RB]);
    compute(kt, wb[u], sb[u], xb[u]);
  };

  constexpr int V = RA * 4;
  __shared__ float red[W][V][32];
  for (int pb = blockIdx.x; pb < blocks; pb += gridDim.x) {   // this block's pairs, their first tiles in flight
    const int p0 = pb * R;
#pragma unroll
    for (int r = 0; r < RA; ++r)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[r][c] = 0.f, iacc[r][c] = 0;
    if (warp < ktiles) load_x(warp, xb[0]);
    int kt = warp;
    for (; kt + (RB - 1) * W < ktiles; kt += RB * W) {
#pragma unroll
      for (int u = 0; u < RB; ++u) tile(kt + u * W, u);
    }
#pragma unroll
    for (int u = 0; u < RB - 1; ++u)
      if (kt + u * W < ktiles) tile(kt + u * W, u);

    if (pb + (int)gridDim.x < blocks) {                // the next pairs' first tiles load during the reduction
      rows_of(p0 + (int)gridDim.x * R);
      prefetch();
    } else {
      pdl_launch();                                    // the block's last pairs: the next kernel may start
    }
    // warps -> shared memory, lane-major (conflict-free); then one thread per (r, c, lane) sums the warps in order
#pragma unroll
    for (int r = 0; r < RA; ++r)
#pragma unroll
      for (int c = 0; c < 4; ++c) red[warp][r * 4 + c][lane] = INT8 ? __int_as_float(iacc[r][c]) : acc[r][c];
    __syncthreads();
    for (int i = threadIdx.x; i < V * 32; i += 32 * W) {
      const int v = i / 32, l = i % 32;
      const int r = v / 4 / NB, c = v % 4;
      const int m = 2 * (l & 3) + (c & 1) + 8 * (v / 4 % NB);      // C columns 2t, 2t + 1 = tokens (+ 8h)
      const int row = 16 * (p0 + r) + (l >> 2) + 8 * (c >> 1);    // C rows g, g + 8
      if (m >= M || row >= N) continue;
      float sum = 0.f;
      if (INT8) {                                                  // the warps' int32 sums, added exactly
        int isum = 0;
#pragma unroll
        for (int o = 0; o < W; ++o) isum += __float_as_int(red[o][v][l]);
        sum = (float)isum;
      } else {
#pragma unroll
        for (int o = 0; o < W; ++o) sum += red[o][v][l];
      }
      if (MODE == ROWS_CHANNEL || INT8) sum *= ld(xsc + m * Kb) * __ldg(ws + row);
      y[(size_t)m * N + row] = f32_to_bf16(sum);
    }
    __syncthreads();                                   // red is rewritten by the next pairs
  }
}

// x quantized once for a PRE launch of gemv_rows: block b takes token b (grid M; a CHANNEL / INT8 scale needs the
// token's amax over all of K, one block's barrier), writing quantize_x's layout to xq. Launched with PDL: the
// GEMV after it starts its weight loads at once.
// use_static (INT8 / W4A8 only): quantize with the static activation scale *static_s (quantize_x); 0: dynamic, and
// static_s is the launchers' stand-in pointer, never read.
template <int MODE, int W>
__global__ void __launch_bounds__(32 * W) gemv_rows_quant_x(const bf16_t* __restrict__ x, u8* __restrict__ xq, int M,
                                                           int K, const float* __restrict__ static_s, int use_static) {
  pdl_launch();
  x += pdl_wait();
  constexpr bool INT = MODE == ROWS_INT8 || MODE == ROWS_W4A8;
  quantize_x<MODE, W>(x, xq, M, K, blockIdx.x * (K / 8), (blockIdx.x + 1) * (K / 8),
                      INT && use_static ? static_s : nullptr);
}

#ifndef FDLITE_NVRTC   // nvcc (CI's compile check) needs them; NVRTC instantiates what name_expressions ask
#define GEMV_ROWS(MODE, R, W) \
  template __global__ void gemv_rows<MODE, R, W>(const bf16_t*, const uint4*, const float*, bf16_t*, int, int, int); \
  template __global__ void gemv_rows<MODE, R, W, true>(const bf16_t*, const uint4*, const float*, bf16_t*, int, int, \
                                                       int);
#define GEMV_ROWS16(MODE, PRE) \
  template __global__ void gemv_rows<MODE, 1, 8, PRE, 2>(const bf16_t*, const uint4*, const float*, bf16_t*, int, \
                                                         int, int);
#define GEMV_ROWS_W(MODE) GEMV_ROWS(MODE, 1, 4) GEMV_ROWS(MODE, 1, 8) GEMV_ROWS(MODE, 1, 16) GEMV_ROWS(MODE, 2, 4) \
  GEMV_ROWS(MODE, 2, 8)
GEMV_ROWS_W(ROWS_BF16)      // gemv_rows.py: SHAPES
GEMV_ROWS_W(ROWS_BLOCK)
GEMV_ROWS_W(ROWS_CHANNEL)
GEMV_ROWS_W(ROWS_INT8)
GEMV_ROWS_W(ROWS_W4A8)
GEMV_ROWS_W(ROWS_W4AFP8)
GEMV_ROWS_W(ROWS_NF4)
GEMV_ROWS16(ROWS_BF16, false)      // 9-16 tokens (gemv_rows.py: SHAPES16)
GEMV_ROWS16(ROWS_NF4, false)
GEMV_ROWS16(ROWS_BLOCK, true)
GEMV_ROWS16(ROWS_CHANNEL, true)
GEMV_ROWS16(ROWS_INT8, true)
template __global__ void gemv_rows_quant_x<ROWS_BLOCK, 16>(const bf16_t*, u8*, int, int, const float*, int);
template __global__ void gemv_rows_quant_x<ROWS_CHANNEL, 16>(const bf16_t*, u8*, int, int, const float*, int);
template __global__ void gemv_rows_quant_x<ROWS_INT8, 16>(const bf16_t*, u8*, int, int, const float*, int);
template __global__ void gemv_rows_quant_x<ROWS_W4A8, 16>(const bf16_t*, u8*, int, int, const float*, int);
template __global__ void gemv_rows_quant_x<ROWS_W4AFP8, 16>(const bf16_t*, u8*, int, int, const float*, int);
#endif
