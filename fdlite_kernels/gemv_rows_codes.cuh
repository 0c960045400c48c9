// The codes gemv_rows.cu's modes read (included by it): the mode numbers, the 4-bit weights' lookups (nibble ->
// e4m3 for w4afp8, nf4 index -> bf16 level) and x's quantization for the byte modes (quantize_x: the blocks'
// prologue and gemv_rows_quant_x). The NumPy twins: fdlite.quant.* (each mode's method); the lookups are emulated
// step by step from these constants in tests/test_kernels_host.py.
#pragma once
#include "common.cuh"

#define ROWS_BF16 0
#define ROWS_BLOCK 1
#define ROWS_CHANNEL 2
#define ROWS_INT8 3
#define ROWS_W4A8 4
#define ROWS_W4AFP8 5
#define ROWS_NF4 6

// e4m3fn bits of 0..7 and 8..15, four a word (lowest byte first): the W4AFP8 lookup tables (sign bits clear)
#define E4M3_U0 0x44403800u
#define E4M3_U1 0x4e4c4a48u
#define E4M3_U2 0x53525150u
#define E4M3_U3 0x57565554u
// bf16 bits of fdlite.quant.nf4.NF4_LEVELS (round to nearest even), split into byte tables: high bytes of levels
// 0..7 / 8..15 (NF4_H0..H3) and low bytes (NF4_L0..L3). tests/test_kernels_host.py rebuilds them from the levels.
#define NF4_H0 0xBEBFBFBFu
#define NF4_H1 0x00BDBEBEu
#define NF4_H2 0x3E3E3E3Du
#define NF4_H3 0x3F3F3F3Eu
#define NF4_L0 0xCA063280u
#define NF4_L1 0x00BA3D92u
#define NF4_L2 0xAD7C25A3u
#define NF4_L3 0x803910E2u

// 4 nibble codes (selector bits 0..15) -> 4 bytes from a 16-entry byte table t0..t3 (entries 0..7 in t0, t1; 8..15
// in t2, t3). hi: 0xFF in each byte whose code has bit 3 set (nf4_hi_mask). prmt reads 3 index bits; with bit 3 set
// it replicates a sign instead, so the low table is read with the codes as they are (bytes >= 8 are replaced) and
// the high table with bit 3 cleared.
// PTX prmt in its default mode: selector nibble n picks byte (bits 0..2) of {b, a} for result byte n, or with bit 3
// set that byte's sign replicated (0x00 / 0xFF). (__byte_perm documents only the 3 index bits.)
__device__ __forceinline__ unsigned prmt(unsigned a, unsigned b, unsigned sel) {
  unsigned d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
  return d;
}

// W4AFP8: the word's nibbles 0..3 (sel) as e4m3(u), u = nibble ^ 8 = q + 8. u < 8: table 0 at index u, table 1's
// byte replicates a clear sign (0); u >= 8: the other way round, indexed by the raw nibble (u - 8).
__device__ __forceinline__ unsigned w4_e4m3x4(unsigned raw, unsigned u) {
  return prmt(E4M3_U0, E4M3_U1, u) | prmt(E4M3_U2, E4M3_U3, raw);
}

__device__ __forceinline__ unsigned lut16(unsigned sel, unsigned sel7, unsigned hi, unsigned t0, unsigned t1,
                                          unsigned t2, unsigned t3) {
  const unsigned lo = prmt(t0, t1, sel), up = prmt(t2, t3, sel7);
  return (up & hi) | (lo & ~hi);                       // one lop3
}

// NF4: a word's 8 codes (k 0..7 of its 4 bytes, low nibble first) -> the bf16 bits of their levels, in k pairs
// r[0] = {k0, k1} .. r[3] = {k6, k7}. The byte masks of bit 3 come from prmt's sign replication: code n's bit 3 is
// bit 7 of byte n / 2 of (w << 4) (n even) or of w (n odd).
__device__ __forceinline__ void nf4_bf16x8(unsigned w, unsigned (&r)[4]) {
  const unsigned w4 = w << 4, whi = w >> 16;
  const unsigned sel[2] = {w, whi}, sel7[2] = {w & 0x7777u, whi & 0x7777u};
  const unsigned hi[2] = {prmt(w4, w, 0xD9C8u), prmt(w4, w, 0xFBEAu)};
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const unsigned hb = lut16(sel[h], sel7[h], hi[h], NF4_H0, NF4_H1, NF4_H2, NF4_H3);   // high bytes of 4 levels
    const unsigned lb = lut16(sel[h], sel7[h], hi[h], NF4_L0, NF4_L1, NF4_L2, NF4_L3);   // low bytes
    r[2 * h] = prmt(lb, hb, 0x5140u);                  // {lb0, hb0, lb1, hb1}: levels of codes 4h, 4h + 1
    r[2 * h + 1] = prmt(lb, hb, 0x7362u);
  }
}

// x quantized for the byte modes (gemv_rows' prologue, or gemv_rows_quant_x before a PRE launch): chunks c0..c1 of
// 8 values of x [M, K] (whole tokens) -> xq [M][K + 64] codes (the 64-byte pad puts tokens g and g + 1 of a
// quarter-warp's 16-byte loads in different banks), then xs [M][K / 128] scales per token and 128-column group
// (GROUPS) or per token over all of K in xs[m][0] (CHANNEL, INT8), then (W4) [M][K / 128] code sums: the layout
// gemv_rows reads. xs = max(amax, 1e-10) / 448, xq = e4m3_rne(x / xs), as act_quant_fp8 and the twin
// (fdlite.quant._common.act_fp8); INT8 / W4A8: / 127 and xq = clip(rint(x / xs), +-127) (act_int8_per_token).
// static_s (INT8 / W4A8, a checkpoint's static per-tensor activation scale): every token and group takes the scale
// *static_s = float32(A / 127) instead of its amax, the codes clip(rint(x / s), +-127) as act_int8_per_token's static
// branch. Every thread of the block takes part (barriers).
template <int MODE, int W>
__device__ __forceinline__ void quantize_x(const bf16_t* __restrict__ x, u8* xq, int M, int K, int c0, int c1,
                                           const float* __restrict__ static_s = nullptr) {
  constexpr bool W4F = MODE == ROWS_W4AFP8, W4 = MODE == ROWS_W4A8 || W4F;
  constexpr bool BLOCK = MODE == ROWS_BLOCK, INT8 = MODE == ROWS_INT8, GROUPS = BLOCK || W4;
  constexpr float QMAX = INT8 || MODE == ROWS_W4A8 ? 127.f : 448.f;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  // Every thread converts 8 consecutive values (one 16-byte load) per chunk, a half-warp holds one group's 16
  // chunks (K % 128 == 0: a group never straddles tokens), and QU chunks per thread are loaded before any is
  // converted, so the block waits for about one L2 latency instead of one per group (a warp looping over groups
  // cost 1.6 us at K = 4096 and 5.6 at 14336, most of the fp8 GEMV's gap to the bf16 one: BENCHMARKS.md).
  constexpr int QU = 4;
  const int sx = K + 64, Kb = K / 128, rowc = K / 8;   // rowc: a multiple of 16, half-warps wholly in or out
  float* xs = reinterpret_cast<float*>(xq + (size_t)M * sx);
  __shared__ unsigned tok_amax[8];   // CHANNEL / INT8: |x| max of the block's tokens from c0 (float bits: ordered)
  // pass(quantize): the block's chunks, QU per thread at a time; f(i, values, half-warp amax) for each in range
  auto pass = [&](auto&& f) {
    for (int base = c0 + 32 * warp; base < c1; base += QU * 32 * W) {
      uint4 v[QU];
#pragma unroll
      for (int u = 0; u < QU; ++u) {
        const int i = base + u * 32 * W + lane;
        v[u] = i < c1 ? __ldca(reinterpret_cast<const uint4*>(x) + i) : make_uint4(0, 0, 0, 0);
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
        if (i < c1) f(i, fv, a);
      }
    }
  };
  auto store = [&](int i, const float (&fv)[8], float s) {
    uint2 codes;
    if (INT8 || MODE == ROWS_W4A8) {
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
      if (W4F) {                                     // the group's sum of code values (fp32, a fixed order)
        float vs = 0.f;
#pragma unroll
        for (int e = 0; e < 4; ++e)
          vs += e4m3_to_f32((codes.x >> 8 * e) & 0xffu) + e4m3_to_f32((codes.y >> 8 * e) & 0xffu);
#pragma unroll
        for (int o = 8; o > 0; o >>= 1) vs += __shfl_xor_sync(0xffffu << (lane & 16), vs, o);
        const int m = i / rowc, col = 8 * (i - m * rowc);
        if ((lane & 15) == 0) (xs + (size_t)M * Kb)[m * Kb + col / 128] = vs;
      }
    }
    const int m = i / rowc, col = 8 * (i - m * rowc);
    *reinterpret_cast<uint2*>(xq + (size_t)m * sx + col) = codes;
    if ((lane & 15) == 0 && (GROUPS || col == 0)) xs[m * Kb + (GROUPS ? col / 128 : 0)] = s;
  };
  if ((INT8 || MODE == ROWS_W4A8) && static_s != nullptr) {
    const float st = __ldg(static_s);
    pass([&](int i, const float (&fv)[8], float) { store(i, fv, st); });
  } else if (GROUPS) {
    pass([&](int i, const float (&fv)[8], float a) { store(i, fv, fmaxf(a, 1e-10f) / QMAX); });
  } else {
    if (threadIdx.x < 8) tok_amax[threadIdx.x] = 0u;
    __syncthreads();
    pass([&](int i, const float (&fv)[8], float a) {
      if ((lane & 15) == 0) atomicMax(&tok_amax[i / rowc - c0 / rowc], __float_as_uint(a));
    });
    __syncthreads();
    pass([&](int i, const float (&fv)[8], float) {
      store(i, fv, fmaxf(__uint_as_float(tok_amax[i / rowc - c0 / rowc]), 1e-10f) / QMAX);
    });
  }
}
