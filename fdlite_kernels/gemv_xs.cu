// Batched decode GEMV (9-32 rows) over the packed int8 / int4 layout of mma_wq.cu, with x staged in shared memory:
//   y[m, n] = sum_k x[m, k] * q[n, k] * scale[n, k / group]     (int8: one scale per channel, applied last)
// gemv_packed.cu (1-8 rows) reads each lane's B fragments of x from L1 / L2 with 4-byte loads: at 16 rows that is
// four times the bytes of the weights it multiplies, in 32 loads per lane and K tile, and 64 registers of x in
// flight. Here a block stages x in chunks of 64 KiB (NB * 8 rows x C columns, bf16, double-buffered by cp.async) and
// every warp takes its B fragments with ldmatrix: one x4 per k16 step and 16 tokens.
// The weights are the mma's A operand exactly as in gemv_packed (the lanes' 16-byte words of two adjacent n8
// tiles), loaded straight from global memory into registers two K tiles ahead: no shared memory, no barrier.
// Block: P row pairs x S K slices, one warp each (warp = slice * P + pair); the grid is about one block per SM
// (gemv_xs.py: plan), so each SM stages x once per chunk for all its warps. A warp walks the K tiles slice,
// slice + S, ...; the block meets at a barrier once per chunk (x chunk c landed, chunk c - 1's buffer free), with the
// weight loads already in flight across it. The slices meet in shared memory at the end.
// Grid K split (gridDim.y = KS > 1, for a long K over few rows: down_proj): block (bx, by) takes K tiles
// [by tps, (by + 1) tps) of its row pairs, so it stages only that slice of x (a chunk or two: about two barriers
// instead of one per tile, where eight slices shared each 64 KiB chunk); each writes its fp32 sums to ws[by] and
// the last block of bx to arrive (a counter per bx, left at zero) adds ws[0..KS-1] in order and writes y.
// GATE: a fused gate_up weight (N = 2I rows: gate, then up) gives y [M, I] = silu(gate) * up, as gemv_packed.cu's
// GATE: a row pair is gate n8 tile p with up n8 tile I / 8 + p, and the epilogue (or the last split) applies SwiGLU.
// Chunk buffers: [NB * 8 rows][C columns] bf16, 16-byte chunks XOR-swizzled by row (8 rows of an ldmatrix hit 8
// bank groups); rows past M are zeros.
#include "common.cuh"

// x: bf16 [M, K]; qp: packed [Np / 8 n-tiles][K / KT k-tiles][512 B]; scale: f32 [Np, G]; y: bf16 [M, N].
// P row pairs and S K slices per block (blockDim.x = 32 P S), C columns per x chunk (a multiple of KT).
template <int BITS, int NB, int GS, bool GATE>
__global__ void __launch_bounds__(512, 1) gemv_xs(const bf16_t* __restrict__ x, const uint4* __restrict__ qp,
                                                  const float* __restrict__ scale, bf16_t* __restrict__ y, int M, int N,
                                                  int K, int group, int P, int S, int C, int tps,
                                                  float* __restrict__ ws, int* __restrict__ flags) {
  constexpr int KT = BITS == 8 ? 64 : 128;
  constexpr int STEPS = KT / 16;
  constexpr bool SCALED = BITS == 4;
  constexpr int NS = SCALED ? STEPS / GS : 1;
  constexpr int ROWS = 8 * NB;                         // x rows staged (tokens; zeros past M)
  extern __shared__ uint4 xs[];                        // 2 x [ROWS][C / 8] uint4; the slices' sums at the end
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2;                             // the lane's row in each n8 tile (its scale's row)
  const int pl = warp % P, sl = warp / P;              // this warp's row pair in the block, and its K slice
  const int ktiles = K / KT, G = K / group, CT = C / KT, CV = C / 8;   // CV: uint4 per chunk row
  const int KS = gridDim.y, k0 = blockIdx.y * tps, k1 = min(ktiles, k0 + tps);   // this block's K tiles
  const int nchunks = (k1 - k0 + CT - 1) / CT;
  const int pairs = (N + 15) / 16;                     // GATE: outputs / 8
  const int pair = blockIdx.x * P + pl;

  // Loop-invariant address parts, once: a block's warps past the last row pair read the last pair (their sums
  // are never stored), so the loads need no predicate and no zeros; tiles past K are never loaded.
  const FastDiv gdiv = fastdiv_of(group);
  const int pr = min(pair, pairs - 1);
  const int nt[2] = {GATE ? pr : 2 * pr, GATE ? pr + pairs : 2 * pr + 1};   // the pair's n8 tiles
  const uint4* wrow[2] = {qp + (size_t)nt[0] * ktiles * 32 + lane, qp + (size_t)nt[1] * ktiles * 32 + lane};
  const float* srow[2] = {scale + (size_t)(8 * nt[0] + g) * G, scale + (size_t)(8 * nt[1] + g) * G};
  auto load_w = [&](int kt, uint4 (&w)[2], float (&sc)[2][NS]) {
#pragma unroll
    for (int s = 0; s < NS; ++s) {
      const unsigned gi = SCALED ? fastdiv(kt * KT + 16 * GS * s, gdiv) : 0;
#pragma unroll
      for (int h = 0; h < 2; ++h)
        if (SCALED) sc[h][s] = __ldg(srow[h] + gi);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) w[h] = __ldg(wrow[h] + kt * 32);
  };
  auto stage = [&](int c) {                            // x columns [k0 KT + c C, + C) -> buffer c & 1
    uint4* buf = xs + (size_t)(c & 1) * ROWS * CV;
    const int c0 = k0 * KT + c * C, cols = min(C, k1 * KT - c0);   // a multiple of KT
    for (int i = threadIdx.x; i < ROWS * CV; i += blockDim.x) {
      const int r = i / CV, v = i % CV;
      const bool ok = r < M && 8 * v < cols;
      cp_async16(buf + r * CV + (v ^ (r & 7)), ok ? x + (size_t)r * K + c0 + 8 * v : x, ok);
    }
    cp_async_commit();
  };

  // Tile i of this warp (kt = slice + i S) lives in wb[i % 3] / sb[i % 3]; two tiles of weights are in flight while
  // one is computed. The slot is a run-time counter (a warp's tiles per chunk vary), so each tile dispatches on it
  // to one of three copies of the body, whose indices are constants: the pipeline rotates with no register copies.
  uint4 wb[3][2];
  float sb[3][2][NS];
#pragma unroll
  for (int d = 0; d < 2; ++d)
    if (k0 + sl + d * S < k1) load_w(k0 + sl + d * S, wb[d], sb[d]);
  x += pdl_wait();                                     // weights above are constant; x is the last kernel's
  stage(0);

  float acc[NB][4];
#pragma unroll
  for (int b = 0; b < NB; ++b)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[b][c] = 0.f;

  // This lane's ldmatrix row is token 16 b2 + lr, its 16-byte column in the tile's step j is (v0 + 2 j + lbit) ^ rr
  // (the swizzle). v0 is a multiple of 8 and 2 j + lbit < 16, so that is v0 + ((2 j + lbit) ^ rr), and the column
  // of step j + 4 lies 8 further: four per-lane byte offsets xq[j & 3] serve every step, in 32-bit shared addresses.
  const int lr = 8 * (lane >> 4) + (lane & 7), lbit = (lane >> 3) & 1, rr = lane & 7;
  const unsigned xs_lane = smem_addr(xs) + 16u * lr * CV;
  unsigned xq[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) xq[j] = 16u * ((2 * j + lbit) ^ rr);
  auto compute = [&](int kt, int c, const uint4 (&w)[2], const float (&sc)[2][NS]) {
    const int v0 = (kt - k0 - c * CT) * (KT / 8);      // the tile's first uint4 column in the chunk
    const unsigned tb = xs_lane + 16u * ((c & 1) * ROWS * CV + v0);
#pragma unroll
    for (int s = 0; s < NS; ++s) {
      float part[NB][4];
#pragma unroll
      for (int b = 0; b < NB; ++b)
#pragma unroll
        for (int e = 0; e < 4; ++e) part[b][e] = 0.f;
#pragma unroll
      for (int jj = 0; jj < STEPS / NS; ++jj) {
        const int j = s * (STEPS / NS) + jj;
        unsigned lo[2], hi[2];                         // rows g and g + 8 of the pair (common.cuh)
        codes_of_step<BITS>(w[0], j, lo);
        codes_of_step<BITS>(w[1], j, hi);
        const unsigned a[4] = {lo[0], hi[0], lo[1], hi[1]};
#pragma unroll
        for (int b2 = 0; b2 < NB / 2; ++b2) {         // tokens 16 b2 ...: matrices (rows +0 / +8) x (k +0 / +8)
          unsigned bf[4];
          ldmatrix_x4(bf, tb + 256u * b2 * CV + xq[j & 3] + 128u * (j >> 2));
          mma_16816(part[2 * b2], a, bf[0], bf[1]);
          mma_16816(part[2 * b2 + 1], a, bf[2], bf[3]);
        }
      }
#pragma unroll
      for (int b = 0; b < NB; ++b) {
        const float s0 = SCALED ? sc[0][s] : 1.f, s1 = SCALED ? sc[1][s] : 1.f;
        acc[b][0] = fmaf(part[b][0], s0, acc[b][0]);
        acc[b][1] = fmaf(part[b][1], s0, acc[b][1]);
        acc[b][2] = fmaf(part[b][2], s1, acc[b][2]);
        acc[b][3] = fmaf(part[b][3], s1, acc[b][3]);
      }
    }
  };
  // slot u: load the weights two tiles on (into the slot of the tile before, consumed), then this tile's mma
  auto tile = [&](int kt, int c, int u) {
    if (kt + 2 * S < k1) load_w(kt + 2 * S, wb[(u + 2) % 3], sb[(u + 2) % 3]);
    compute(kt, c, wb[u], sb[u]);
  };

  int kt = k0 + sl, u = 0;
  for (int c = 0; c < nchunks; ++c) {
    cp_async_wait<0>();                                // this thread's copies of chunk c have landed
    __syncthreads();                                   // everyone's have; everyone is done with chunk c - 1
    if (c + 1 < nchunks) stage(c + 1);                 // into chunk c - 1's buffer, behind this chunk's work
    const int kend = min(k1, k0 + (c + 1) * CT);
    for (; kt < kend; kt += S) {
      if (u == 0) tile(kt, c, 0);
      else if (u == 1) tile(kt, c, 1);
      else tile(kt, c, 2);
      u = u == 2 ? 0 : u + 1;
    }
  }

  pdl_launch();
  // the slices of each row pair meet in shared memory (the x buffers, free once every warp is past its last chunk)
  constexpr int V = NB * 4;
  float* red = reinterpret_cast<float*>(xs);           // [P S warps][V][32 lanes]
  __syncthreads();
#pragma unroll
  for (int b = 0; b < NB; ++b)
#pragma unroll
    for (int e = 0; e < 4; ++e) red[(warp * V + b * 4 + e) * 32 + lane] = acc[b][e];
  __syncthreads();
  const int I = N / 2;                                 // GATE: outputs per token
  for (int i = threadIdx.x; i < P * V * 32; i += blockDim.x) {
    const int p = i / (V * 32), v = (i / 32) % V, l = i % 32;
    const int b = v / 4, e = v % 4;
    const int m = 8 * b + 2 * (l & 3) + (e & 1);                           // columns 2t, 2t + 1 = tokens
    const int orow = 8 * (blockIdx.x * P + p) + (l >> 2);                   // GATE: output column = gate row
    // C fragment rows g, g + 8 (GATE: the gate and the up row of output orow)
    const int row = GATE ? orow + (e >> 1) * I : 16 * (blockIdx.x * P + p) + (l >> 2) + 8 * (e >> 1);
    if (m >= M || (GATE ? orow >= I : row >= N)) continue;
    if (GATE && KS == 1 && e >= 2) continue;                               // the gate's thread sums its up too
    float sum = 0.f;
    for (int o = 0; o < S; ++o) sum += red[((o * P + p) * V + v) * 32 + l];
    if (GATE && KS == 1) {
      float up = 0.f;
      for (int o = 0; o < S; ++o) up += red[((o * P + p) * V + v + 2) * 32 + l];
      if (BITS == 8) sum *= __ldg(scale + row), up *= __ldg(scale + I + orow);
      y[(size_t)m * I + orow] = swiglu_bf16(sum, up);
      continue;
    }
    if (KS > 1) {
      ws[((size_t)blockIdx.y * M + m) * N + row] = sum;
      continue;
    }
    if (BITS == 8) sum *= __ldg(scale + row);
    y[(size_t)m * N + row] = f32_to_bf16(sum);
  }
  if (KS == 1) return;
  // the last of the KS blocks of these row pairs to arrive adds their sums, in split order (deterministic)
  if (!last_to_arrive(flags + blockIdx.x, KS)) return;
  if (GATE) {                                           // outputs [8 bx P, + 8 P): gate row o, up row I + o
    const int o0 = 8 * blockIdx.x * P, no = min(I - o0, 8 * P);
    for (int i = threadIdx.x; i < M * no; i += blockDim.x) {
      const int m = i / no, o = o0 + i % no;
      float gs = 0.f, us = 0.f;
      for (int z = 0; z < KS; ++z) {
        gs += __ldcg(ws + ((size_t)z * M + m) * N + o);
        us += __ldcg(ws + ((size_t)z * M + m) * N + I + o);
      }
      if (BITS == 8) gs *= __ldg(scale + o), us *= __ldg(scale + I + o);
      y[(size_t)m * I + o] = swiglu_bf16(gs, us);
    }
    return;
  }
  const int r0 = 16 * blockIdx.x * P, nr = min(N - r0, 16 * P);
  for (int i = threadIdx.x; i < M * nr; i += blockDim.x) {
    const int m = i / nr, row = r0 + i % nr;
    float sum = 0.f;
    for (int z = 0; z < KS; ++z) sum += __ldcg(ws + ((size_t)z * M + m) * N + row);
    if (BITS == 8) sum *= __ldg(scale + row);
    y[(size_t)m * N + row] = f32_to_bf16(sum);
  }
}

#ifndef FDLITE_NVRTC   // nvcc (CI's compile check) needs them; NVRTC instantiates what name_expressions ask
#define GEMV_XS_G(BITS, NB, GS, GATE)                                                                              \
  template __global__ void gemv_xs<BITS, NB, GS, GATE>(const bf16_t*, const uint4*, const float*, bf16_t*, int, int, \
                                                       int, int, int, int, int, int, float*, int*);
#define GEMV_XS(BITS, NB, GS) GEMV_XS_G(BITS, NB, GS, false) GEMV_XS_G(BITS, NB, GS, true)
GEMV_XS(8, 2, 1) GEMV_XS(8, 4, 1)
GEMV_XS(4, 2, 8) GEMV_XS(4, 4, 8) GEMV_XS(4, 2, 4) GEMV_XS(4, 4, 4) GEMV_XS(4, 2, 2) GEMV_XS(4, 4, 2)
GEMV_XS(4, 2, 1) GEMV_XS(4, 4, 1)
#endif
