// Decode GEMV (M <= 8 rows) on the tensor cores over weights stored ROW-MAJOR, as checkpoints hold them: dense bf16
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
// The byte modes quantize x in each block's prologue into shared memory: no second launch per linear, no xq round trip
// through global memory.
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
// loops over row pairs (pb += gridDim.x): the fp8 launch sizes the grid to the resident blocks, so each quantizes x
// once for many pairs (per pair it cost ~5x the K loop's instructions); bf16 launches a block per R pairs.
#include "common.cuh"

#define ROWS_BF16 0
#define ROWS_BLOCK 1
#define ROWS_CHANNEL 2
#define ROWS_INT8 3
#define ROWS_W4A8 4

template <int MODE, int R, int W>
__global__ void __launch_bounds__(32 * W) gemv_rows(const bf16_t* __restrict__ x, const uint4* __restrict__ w,
                                                   const float* __restrict__ ws, bf16_t* __restrict__ y,
                                                   int M, int N, int K) {
  constexpr int RB = 3;                                // tiles per lane in registers: two in flight, one computed
  // BYTES: x quantized by the block (every mode but bf16); INT8: integer codes and sums over all of K; W4: int4
  // weights (two a byte), int8 x and a scale per 128-column group on both sides
  constexpr bool BYTES = MODE != ROWS_BF16, BLOCK = MODE == ROWS_BLOCK, INT8 = MODE == ROWS_INT8;
  constexpr bool W4 = MODE == ROWS_W4A8, GROUPS = BLOCK || W4;
  constexpr float QMAX = INT8 || W4 ? 127.f : 448.f;   // the code range the activation scale maps amax to
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int rowq = W4 ? K / 32 : BYTES ? K / 16 : K / 8;   // 16-byte chunks per weight row
  const int ktiles = rowq / 8;                         // 128-byte K tiles per row (W4: 256 columns, two groups)
  const int Kb = K / 128;                              // scale groups of 128 columns per row
  const int pairs = (N + 15) / 16;
  const int blocks = (pairs + R - 1) / R;              // blocks of R row pairs; this block takes every gridDim.x-th

  constexpr int SV = W4 ? 4 : 1;                       // scales per pair and tile: W4 rows g / g + 8 x two groups
  constexpr int XC = W4 ? 4 : 2;                       // 16-byte x chunks per lane and tile
  uint4 wb[RB][R][2][2];
  float sb[RB][R][SV];
  uint4 xb[RB][XC];
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
                           : W4 ? ws + (size_t)min(16 * pr + g + 8 * h, N - 1) * Kb : ws;
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
  x += pdl_wait();

  // BYTES: x quantized by this block into shared memory: xq [M][K + 64] (the 64-byte pad puts tokens g and g + 1 of a
  // quarter-warp's 16-byte loads in different banks), then xs [M][Kb]: per token and 128-column group (BLOCK), or
  // per token over all of K in xs[m][0] (CHANNEL, INT8): xs = max(amax, 1e-10) / 448, xq = e4m3_rne(x / xs), as
  // act_quant_fp8 and the twin (fdlite.quant._common.act_fp8); INT8: / 127 and xq = clip(rint(x / xs), +-127)
  // (act_int8_per_token).
  // Done once per block, which then loops over row pairs (the launcher sizes the grid to what is resident).
  extern __shared__ uint4 xsm[];
  const int sx = K + 64;                               // bytes per token row of xq
  const float* xsc = reinterpret_cast<const float*>(reinterpret_cast<const u8*>(xsm) + (size_t)M * sx);
  const int* xsum = reinterpret_cast<const int*>(xsc + (size_t)M * Kb);   // W4: sum of a group's x codes
  if (BYTES) {
    // Every thread converts 8 consecutive values (one 16-byte load) per chunk, a half-warp holds one group's 16
    // chunks (K % 128 == 0: a group never straddles tokens), and QU chunks per thread are loaded before any is
    // converted, so the block waits for about one L2 latency instead of one per group (a warp looping over groups
    // cost 1.6 us at K = 4096 and 5.6 at 14336, most of the fp8 GEMV's gap to the bf16 one: BENCHMARKS.md).
    constexpr int QU = 4;
    u8* xq = reinterpret_cast<u8*>(xsm);
    float* xs = reinterpret_cast<float*>(xq + (size_t)M * sx);
    const int chunks = M * K / 8, rowc = K / 8;        // a multiple of 16: half-warps are wholly in or out
    __shared__ unsigned tok_amax[8];                   // CHANNEL: |x| max per token (float bits: order-preserving)
    // pass(quantize): the block's chunks, QU per thread at a time; f(i, values, half-warp amax) for each in range
    auto pass = [&](auto&& f) {
      for (int base = 32 * warp; base < chunks; base += QU * 32 * W) {
        uint4 v[QU];
#pragma unroll
        for (int u = 0; u < QU; ++u) {
          const int i = base + u * 32 * W + lane;
          v[u] = i < chunks ? __ldca(reinterpret_cast<const uint4*>(x) + i) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < QU; ++u) {
          const int i = base + u * 32 * W + lane;
          float fv[8];
          bf16x8_to_f32(v[u], fv);
          float a = 0.f;
#pragma unroll
          for (int e = 0; e < 8; ++e) a = fmaxf(a, fabsf(fv[e]));
#pragma unroll
          for (int o = 8; o > 0; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));   // the half-warp's
          if (i < chunks) f(i, fv, a);
        }
      }
    };
    auto store = [&](int i, const float (&fv)[8], float s) {
      uint2 codes;
      if (INT8 || W4) {
        int q[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) q[e] = min(max(__float2int_rn(fv[e] / s), -127), 127);
        // W4: the evens, then the odds (the weights' registers hold k = 0, 2, 4, 6 and 1, 3, 5, 7 of each 8)
        constexpr int P[8] = {0, W4 ? 2 : 1, W4 ? 4 : 2, W4 ? 6 : 3, W4 ? 1 : 4, W4 ? 3 : 5, W4 ? 5 : 6, 7};
        codes.x = (q[P[0]] & 0xff) | ((q[P[1]] & 0xff) << 8) | ((q[P[2]] & 0xff) << 16) | ((unsigned)q[P[3]] << 24);
        codes.y = (q[P[4]] & 0xff) | ((q[P[5]] & 0xff) << 8) | ((q[P[6]] & 0xff) << 16) | ((unsigned)q[P[7]] << 24);
        if (W4) {                                      // the group's code sum: this half-warp's 16 chunks
          int qs = q[0] + q[1] + q[2] + q[3] + q[4] + q[5] + q[6] + q[7];
#pragma unroll
          for (int o = 8; o > 0; o >>= 1) qs += __shfl_xor_sync(0xffffu << (lane & 16), qs, o);
          const int m = i / rowc, col = 8 * (i - m * rowc);
          if ((lane & 15) == 0) reinterpret_cast<int*>(xs + (size_t)M * Kb)[m * Kb + col / 128] = qs;
        }
      } else {
        codes.x = f32x2_to_e4m3x2(fv[0] / s, fv[1] / s) | (f32x2_to_e4m3x2(fv[2] / s, fv[3] / s) << 16);
        codes.y = f32x2_to_e4m3x2(fv[4] / s, fv[5] / s) | (f32x2_to_e4m3x2(fv[6] / s, fv[7] / s) << 16);
      }
      const int m = i / rowc, col = 8 * (i - m * rowc);
      *reinterpret_cast<uint2*>(xq + (size_t)m * sx + col) = codes;
      if ((lane & 15) == 0 && (GROUPS || col == 0)) xs[m * Kb + (GROUPS ? col / 128 : 0)] = s;
    };
    if (GROUPS) {
      pass([&](int i, const float (&fv)[8], float a) { store(i, fv, fmaxf(a, 1e-10f) / QMAX); });
    } else {
      if (threadIdx.x < 8) tok_amax[threadIdx.x] = 0u;
      __syncthreads();
      pass([&](int i, const float (&fv)[8], float a) {
        if ((lane & 15) == 0) atomicMax(&tok_amax[i / rowc], __float_as_uint(a));
      });
      __syncthreads();
      pass([&](int i, const float (&fv)[8], float) {
        store(i, fv, fmaxf(__uint_as_float(tok_amax[i / rowc]), 1e-10f) / QMAX);
      });
    }
    __syncthreads();
  }
  // B chunks of tile kt: token g's bytes 16t and 64 + 16t of the tile (bf16 from L2, coherent: written by the kernel
  // before; e4m3 from shared memory), one tile ahead of the mma
  const u8* xq_row = reinterpret_cast<const u8*>(xsm) + (size_t)min(g, M - 1) * sx;
  const uint4* xrow = BYTES ? reinterpret_cast<const uint4*>(xq_row) + (W4 ? 0 : t)
                          : reinterpret_cast<const uint4*>(x + (size_t)min(g, M - 1) * K) + t;
  // W4: a tile is 256 columns of x, the lane's 32 bytes of group c at 128 c + 32 t (chunks 2c, 2c + 1)
  auto load_x = [&](int kt, uint4 (&xv)[XC]) {
#pragma unroll
    for (int c = 0; c < XC; ++c)
      xv[c] = W4 ? xrow[kt * 16 + 8 * (c >> 1) + 2 * t + (c & 1)]
                 : BYTES ? xrow[kt * 8 + 4 * c] : __ldca(xrow + kt * 8 + 4 * c);
  };
  // fp8: this lane's C columns are tokens 2t and 2t + 1 (their scales per tile)
  const float* xs0 = xsc + min(2 * t, M - 1) * Kb;
  const float* xs1 = xsc + min(2 * t + 1, M - 1) * Kb;

  float acc[R][4];
  int iacc[R][4];                                      // INT8: exact integer sums (|sum| < 127^2 K < 2^31)
  // W4: two groups of 128 columns, four k32 steps each
  auto compute_w4 = [&](int kt, const uint4 (&wv)[R][2][2], const float (&sv)[R][SV], const uint4 (&xv)[XC]) {
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      int part[R][4];
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int e = 0; e < 4; ++e) part[r][e] = 0;
#pragma unroll
      for (int i = 0; i < 4; ++i) {                  // word i of the lane's 16 bytes: its k 32 t + 8 i .. + 7
        const uint4& xw = xv[2 * c + (i >> 1)];
        const unsigned b0 = word_of(xw, 2 * (i & 1)), b1 = word_of(xw, 2 * (i & 1) + 1);   // evens, odds
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const unsigned ug = word_of(wv[r][0][c], i) ^ 0x88888888u, uh = word_of(wv[r][1][c], i) ^ 0x88888888u;
          const unsigned a[4] = {ug & 0x0F0F0F0Fu, uh & 0x0F0F0F0Fu, (ug >> 4) & 0x0F0F0F0Fu, (uh >> 4) & 0x0F0F0F0Fu};
          mma_16832_s8(part[r], a, b0, b1);
        }
      }
      const int grp = 2 * kt + c;
      const int q0 = xsum[min(2 * t, M - 1) * Kb + grp], q1 = xsum[min(2 * t + 1, M - 1) * Kb + grp];
      const float x0 = xs0[grp], x1 = xs1[grp];      // c0, c2: token 2t; c1, c3: token 2t + 1
#pragma unroll
      for (int r = 0; r < R; ++r) {                  // sum xq (q + 8) - 8 sum xq, then the two scales
        acc[r][0] = fmaf((float)(part[r][0] - 8 * q0), sv[r][c] * x0, acc[r][0]);
        acc[r][1] = fmaf((float)(part[r][1] - 8 * q1), sv[r][c] * x1, acc[r][1]);
        acc[r][2] = fmaf((float)(part[r][2] - 8 * q0), sv[r][2 + c] * x0, acc[r][2]);
        acc[r][3] = fmaf((float)(part[r][3] - 8 * q1), sv[r][2 + c] * x1, acc[r][3]);
      }
    }
  };
  // the byte modes and bf16: four k steps over the tile's two 64-byte chunks
  auto compute_bytes = [&](int kt, const uint4 (&wv)[R][2][2], const float (&sv)[R][SV], const uint4 (&xv)[XC]) {
    float part[R][4];                                  // BLOCK: this tile's (one scale group's) unscaled sums
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int c = 0; c < 4; ++c) part[r][c] = 0.f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int c = j >> 1, i = 2 * (j & 1);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const unsigned a[4] = {word_of(wv[r][0][c], i), word_of(wv[r][1][c], i), word_of(wv[r][0][c], i + 1),
                               word_of(wv[r][1][c], i + 1)};
        if (BLOCK) mma_16832_e4m3(part[r], a, word_of(xv[c], i), word_of(xv[c], i + 1));
        else if (INT8) mma_16832_s8(iacc[r], a, word_of(xv[c], i), word_of(xv[c], i + 1));
        else if (BYTES) mma_16832_e4m3(acc[r], a, word_of(xv[c], i), word_of(xv[c], i + 1));
        else mma_16816(acc[r], a, word_of(xv[c], i), word_of(xv[c], i + 1));
      }
    }
    if (BLOCK) {
      const float x0 = xs0[kt], x1 = xs1[kt];          // c0, c2: token 2t; c1, c3: token 2t + 1
#pragma unroll
      for (int r = 0; r < R; ++r) {
        acc[r][0] = fmaf(part[r][0], sv[r][0] * x0, acc[r][0]);
        acc[r][1] = fmaf(part[r][1], sv[r][0] * x1, acc[r][1]);
        acc[r][2] = fmaf(part[r][2], sv[r][0] * x0, acc[r][2]);
        acc[r][3] = fmaf(part[r][3], sv[r][0] * x1, acc[r][3]);
      }
    }
  };
  auto compute = [&](int kt, const uint4 (&wv)[R][2][2], const float (&sv)[R][SV], const uint4 (&xv)[XC]) {
    if constexpr (W4) compute_w4(kt, wv, sv, xv);
    else compute_bytes(kt, wv, sv, xv);
  };
  // tile i of this warp (kt = warp + i W) in slot u = i % RB; the loop is unrolled by RB so the ring rotates by
  // renaming (gemv_packed): loads of x one tile on and of the weights RB - 1 tiles on, then this tile's mma
  auto tile = [&](int kt, int u) {
    if (kt + W < ktiles) load_x(kt + W, xb[(u + 1) % RB]);
    if (kt + (RB - 1) * W < ktiles) load_w(kt + (RB - 1) * W, wb[(u + RB - 1) % RB], sb[(u + RB - 1) % RB]);
    compute(kt, wb[u], sb[u], xb[u]);
  };

  constexpr int V = R * 4;
  __shared__ float red[W][V][32];
  for (int pb = blockIdx.x; pb < blocks; pb += gridDim.x) {   // this block's pairs, their first tiles in flight
    const int p0 = pb * R;
#pragma unroll
    for (int r = 0; r < R; ++r)
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
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int c = 0; c < 4; ++c) red[warp][r * 4 + c][lane] = INT8 ? __int_as_float(iacc[r][c]) : acc[r][c];
    __syncthreads();
    for (int i = threadIdx.x; i < V * 32; i += 32 * W) {
      const int v = i / 32, l = i % 32;
      const int r = v / 4, c = v % 4;
      const int m = 2 * (l & 3) + (c & 1);                         // C columns 2t, 2t + 1 = tokens
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
      if (MODE == ROWS_CHANNEL || INT8) sum *= xsc[m * Kb] * __ldg(ws + row);
      y[(size_t)m * N + row] = f32_to_bf16(sum);
    }
    __syncthreads();                                   // red is rewritten by the next pairs
  }
}

#ifndef FDLITE_NVRTC   // nvcc (CI's compile check) needs them; NVRTC instantiates what name_expressions ask
#define GEMV_ROWS(MODE, R, W) \
  template __global__ void gemv_rows<MODE, R, W>(const bf16_t*, const uint4*, const float*, bf16_t*, int, int, int);
#define GEMV_ROWS_W(MODE) GEMV_ROWS(MODE, 1, 4) GEMV_ROWS(MODE, 1, 8) GEMV_ROWS(MODE, 1, 16) GEMV_ROWS(MODE, 2, 4) \
  GEMV_ROWS(MODE, 2, 8)
GEMV_ROWS_W(ROWS_BF16)      // gemv_rows.py: SHAPES
GEMV_ROWS_W(ROWS_BLOCK)
GEMV_ROWS_W(ROWS_CHANNEL)
GEMV_ROWS_W(ROWS_INT8)
GEMV_ROWS_W(ROWS_W4A8)
#endif
