// Decode GEMV (M <= 16 rows) on the tensor cores over the SAME fragment-ordered int8/int4 layout as mma_wq.cu,
// streaming the weights straight from global memory into registers (no shared-memory staging):
//   y[m, n] = sum_k x[m, k] * q[n, k] * scale[n, k / group]     (int8: one scale per channel, applied last)
// Layout (see mma_wq.cu): tile (nt, kt) of 8 rows x KT columns at ((nt * ktiles + kt) * 512) bytes, lane
// l = 4 g + t holding row 8 nt + g, k = KT kt + 16 j + {2t, 2t+1, 2t+8, 2t+9} for each k16 step j.
// Why the weights are the mma's A operand here (mma_sk puts x there): the lanes' words of two adjacent n8 tiles
// ARE the A fragment of m16n8k16 (a0/a2 from tile 2p: rows g, a1/a3 from tile 2p+1: rows g + 8), so one mma
// consumes 256 weights and x only has to fill B, whose 8 columns are 8 tokens (NB fragments: M <= 8 NB).
// Per 8 int4 weights a lane spends 11 instructions of dequantization (common.cuh: u4x8_to_bf16x2) and half an
// mma, against ~40 for the CUDA-core dot products this replaced (instruction-bound at ~1.5 TB/s on gate_up).
// Block: R row pairs (16 R rows) x W warps that split the K tiles (interleaved) and meet in shared memory;
// MINB: resident blocks per SM asked of the register allocator (occupancy hides the DRAM latency).
// Each lane keeps RB - 1 K tiles of weights (and their scales) in flight in registers while it computes one (D <= 0).
// GS: k16 steps per scale group inside a tile (int4: 8 = one scale per tile when group % 128 == 0; 4, 2, 1
// for groups of 64, 32, or any other multiple of 16, one scale per step). int8: the channel scale comes last.
// GATE: the weight is a fused gate_up projection (N = 2I rows: gate, then up; I % 8 == 0) and y is [M, I] =
// silu(gate) * up. A block's "row pair" is then gate n8 tile p and up n8 tile I / 8 + p instead of tiles 2p, 2p + 1:
// the C fragment's rows g and g + 8 are one output's gate and up, so the epilogue applies SwiGLU with no extra pass
// (each output element's sum is the unfused kernel's, to the bit: its A-fragment partner does not enter it).
#include "common.cuh"

// D <= 0: each lane keeps its next RB - 1 K tiles of weights (and scales) in registers (RB = 3 for D = 0, else -D).
// D >= 2: a ring of D tiles per
// warp in shared memory, filled by cp.async D - 1 tiles ahead (copies hold no registers while in flight, so the
// depth costs no occupancy); each lane copies and later reads only its own 16-byte words, so a per-thread
// cp.async.wait_group is the only synchronisation.
template <int BITS, int NB, int GS, int R, int W, int MINB, int D, bool GATE>
__global__ void __launch_bounds__(32 * W, MINB) gemv_packed(const bf16_t* __restrict__ x, const uint4* __restrict__ qp,
                                                      const float* __restrict__ scale, bf16_t* __restrict__ y,
                                                      int M, int N, int K, int group) {
  constexpr int KT = BITS == 8 ? 64 : 128;
  constexpr int STEPS = KT / 16;
  constexpr bool SCALED = BITS == 4;                   // int4: group scales inside the K loop
  constexpr int NS = SCALED ? STEPS / GS : 1;          // scale groups per tile
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int ktiles = K / KT, G = K / group;
  const int pairs = N > 0 ? (N + 15) / 16 : 0;         // row pairs of the padded weight (GATE: outputs / 8)
  const int p0 = blockIdx.x * R;

  float acc[R][NB][4];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int b = 0; b < NB; ++b)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[r][b][c] = 0.f;

  // Loop-invariant parts of every address, computed once: the hot loop only adds the tile's offset. Rows past the
  // padded weight (a block's second row pair at the end of N) read the last pair, tokens past M read row M - 1:
  // their sums land in outputs that are never stored, so no predicate or zeroing costs the loop anything.
  const FastDiv gdiv = fastdiv_of(group);
  const uint4* wrow[R][2];                             // lane's word of n8 tile nt (below), K tile 0
  const float* srow[R][2];                             // its row's scales (int4)
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int pr = min(p0 + r, pairs - 1);
      const int nt = GATE ? pr + h * pairs : 2 * pr + h;   // GATE: gate tile pr, up tile I / 8 + pr
      wrow[r][h] = qp + (size_t)nt * ktiles * 32 + lane;
      srow[r][h] = scale + (size_t)(8 * nt + g) * G;
    }
  // weights and int4 group scales of tile kt (kt < ktiles: the caller's test, uniform over the warp)
  auto load_w = [&](int kt, uint4 (&w)[R][2], float (&sc)[R][2][NS]) {
#pragma unroll
    for (int s = 0; s < NS; ++s) {
      const unsigned gi = SCALED ? fastdiv(kt * KT + 16 * GS * s, gdiv) : 0;
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          if (SCALED) sc[r][h][s] = __ldg(srow[r][h] + gi);
    }
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int h = 0; h < 2; ++h) w[r][h] = __ldg(wrow[r][h] + kt * 32);
  };

  // B fragments of tile kt: token g (+ 8 b) at k = (2t, 2t+1) and (2t+8, 2t+9) of each step. They come from L2
  // (x is small and shared by every block) one tile ahead: waiting for them each tile cost more than the weights'
  // own latency. Columns of tokens past M hold row M - 1 again; nothing reads those outputs.
  const unsigned* xrow[NB];
  auto load_x = [&](int kt, unsigned (&xv)[NB][STEPS][2]) {
#pragma unroll
    for (int b = 0; b < NB; ++b)
#pragma unroll
      for (int j = 0; j < STEPS; ++j) {
        xv[b][j][0] = __ldca(xrow[b] + kt * (KT / 2) + 8 * j);   // coherent, L1-cached (written by the kernel before)
        xv[b][j][1] = __ldca(xrow[b] + kt * (KT / 2) + 8 * j + 4);
      }
  };

  // this tile's mma over its weights w (scales sc) and B fragments xb, into acc
  auto compute = [&](const uint4 (&w)[R][2], const float (&sc)[R][2][NS], const unsigned (&xb)[NB][STEPS][2]) {
#pragma unroll
    for (int s = 0; s < NS; ++s) {
      float part[R][NB][4];                            // this scale group's unscaled sums (int8: the tile's)
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int b = 0; b < NB; ++b)
#pragma unroll
          for (int c = 0; c < 4; ++c) part[r][b][c] = 0.f;
#pragma unroll
      for (int jj = 0; jj < STEPS / NS; ++jj) {
        const int j = s * (STEPS / NS) + jj;
#pragma unroll
        for (int r = 0; r < R; ++r) {
          unsigned lo[2], hi[2];                       // rows g and g + 8: a = {a0, a1, a2, a3}
          codes_of_step<BITS>(w[r][0], j, lo);
          codes_of_step<BITS>(w[r][1], j, hi);
          const unsigned a[4] = {lo[0], hi[0], lo[1], hi[1]};
#pragma unroll
          for (int b = 0; b < NB; ++b) mma_16816(part[r][b], a, xb[b][j][0], xb[b][j][1]);
        }
      }
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int b = 0; b < NB; ++b) {
          // c0, c1: row g (scale of half 0); c2, c3: row g + 8 (half 1)
          const float s0 = SCALED ? sc[r][0][s] : 1.f, s1 = SCALED ? sc[r][1][s] : 1.f;
          acc[r][b][0] = fmaf(part[r][b][0], s0, acc[r][b][0]);
          acc[r][b][1] = fmaf(part[r][b][1], s0, acc[r][b][1]);
          acc[r][b][2] = fmaf(part[r][b][2], s1, acc[r][b][2]);
          acc[r][b][3] = fmaf(part[r][b][3], s1, acc[r][b][3]);
        }
    }
  };

  constexpr int DR = D > 0 ? D : 1;                   // ring slots (D = 0: unused)
  // D > 0: this warp's ring, slot d: weights [R][2][32 lanes] uint4, then scales [R][2][NS][32 lanes] f32
  extern __shared__ uint4 ring[];
  uint4* wring = ring + (size_t)warp * DR * R * 2 * 32;
  float* sring = reinterpret_cast<float*>(ring + (size_t)W * DR * R * 2 * 32) + (size_t)warp * DR * R * 2 * NS * 32;
  auto issue = [&](int kt, int d) {                    // tile kt -> slot d, one commit group (empty past K)
    const bool ok = kt < ktiles;
#pragma unroll
    for (int s = 0; s < (SCALED ? NS : 0); ++s) {
      const unsigned gi = ok ? fastdiv(kt * KT + 16 * GS * s, gdiv) : 0;
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          cp_async4(sring + (((d * R + r) * 2 + h) * NS + s) * 32 + lane, srow[r][h] + gi, ok);
    }
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        cp_async16(wring + ((d * R + r) * 2 + h) * 32 + lane, wrow[r][h] + (ok ? kt * 32 : 0), ok);
    cp_async_commit();
  };

  // D <= 0: tile i of this warp (kt = warp + i W) lives in registers wb[i % RB] (weights, scales) and xb[i % RB]
  // (x), RB = 3 for D = 0, else -D. The loop is unrolled by RB so every index is a constant and the pipeline
  // rotates by renaming, not by copying (the copies were ~50 of the loop's ~300 instructions). The weights run
  // RB - 1 tiles ahead; x one tile ahead, so only two of its RB arrays are ever live.
  constexpr int RB = D < 0 ? -D : 3;
  uint4 wb[RB][R][2];
  float sb[RB][R][2][NS];
  unsigned xb[RB][NB][STEPS][2];
  if (D > 0) {
#pragma unroll
    for (int d = 0; d < D - 1; ++d) issue(warp + d * W, d);
  } else {
#pragma unroll
    for (int u = 0; u < RB - 1; ++u)
      if (warp + u * W < ktiles) load_w(warp + u * W, wb[u], sb[u]);
  }
  // Launched with PDL: the weights above depend on no kernel, so their loads are in flight while the kernel
  // that writes x finishes; x (and y, written at the end) only after it has.
  x += pdl_wait();                                     // x's loads depend on the wait (common.cuh)
#pragma unroll
  for (int b = 0; b < NB; ++b)
    xrow[b] = reinterpret_cast<const unsigned*>(x + (size_t)min(g + 8 * b, M - 1) * K) + t;
  if (warp < ktiles) load_x(warp, xb[0]);

  if (D > 0) {
    int slot = 0;                                      // the ring slot of tile kt
    for (int kt = warp, i = 0; kt < ktiles; kt += W, ++i) {
      uint4 w[R][2];
      float sc[R][2][NS];
      cp_async_wait<(D > 0 ? D - 2 : 0)>();            // this lane's copies of tile kt have landed
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          w[r][h] = wring[((slot * R + r) * 2 + h) * 32 + lane];
#pragma unroll
          for (int s = 0; s < NS; ++s)
            sc[r][h][s] = SCALED ? sring[(((slot * R + r) * 2 + h) * NS + s) * 32 + lane] : 0.f;
        }
      issue(kt + (D - 1) * W, slot == 0 ? D - 1 : slot - 1);   // into the slot read one tile ago
      slot = slot == D - 1 ? 0 : slot + 1;
      // x: two arrays by parity (the ring needs no rotation of the weights)
      if (i & 1) {
        if (kt + W < ktiles) load_x(kt + W, xb[0]);
        compute(w, sc, xb[1]);
      } else {
        if (kt + W < ktiles) load_x(kt + W, xb[1]);
        compute(w, sc, xb[0]);
      }
    }
  } else {
    // one tile (slot u = i % RB): first the loads of x one tile on and of the weights RB - 1 tiles on (into the slot
    // of tile i - 1, consumed), then its mma; RB - 1 tiles of weights are in flight while it computes
    auto tile = [&](int kt, int u) {
      if (kt + W < ktiles) load_x(kt + W, xb[(u + 1) % RB]);
      if (kt + (RB - 1) * W < ktiles) load_w(kt + (RB - 1) * W, wb[(u + RB - 1) % RB], sb[(u + RB - 1) % RB]);
      compute(wb[u], sb[u], xb[u]);
    };
    int kt = warp;
    for (; kt + (RB - 1) * W < ktiles; kt += RB * W) {
#pragma unroll
      for (int u = 0; u < RB; ++u) tile(kt + u * W, u);
    }
#pragma unroll
    for (int u = 0; u < RB - 1; ++u)
      if (kt + u * W < ktiles) tile(kt + u * W, u);
  }

  if (D > 0) cp_async_wait<0>();                       // the empty groups past K; nothing may be in flight at exit
  pdl_launch();                                        // the next kernel may start; only the reduction is left
  // warps -> shared memory, lane-major (conflict-free); then one thread per (r, b, c, lane) sums the warps
  constexpr int V = R * NB * 4;
  __shared__ float red[W][V][32];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int b = 0; b < NB; ++b)
#pragma unroll
      for (int c = 0; c < 4; ++c) red[warp][(r * NB + b) * 4 + c][lane] = acc[r][b][c];
  __syncthreads();
  for (int i = threadIdx.x; i < V * 32; i += 32 * W) {
    const int v = i / 32, l = i % 32;
    const int r = v / (NB * 4), b = (v / 4) % NB, c = v % 4;
    const int m = 8 * b + 2 * (l & 3) + (c & 1);                 // columns 2t, 2t + 1 = tokens
    if (GATE) {                                                   // c0, c1: gate; c2, c3: up of the same outputs
      const int I = N / 2, row = 8 * (p0 + r) + (l >> 2);        // the output column, its gate's weight row
      if (c >= 2 || m >= M || row >= I) continue;
      float gs = 0.f, us = 0.f;
#pragma unroll
      for (int o = 0; o < W; ++o) gs += red[o][v][l], us += red[o][v + 2][l];
      if (BITS == 8) gs *= __ldg(scale + row), us *= __ldg(scale + I + row);
      y[(size_t)m * I + row] = swiglu_bf16(gs, us);
      continue;
    }
    const int row = 16 * (p0 + r) + (l >> 2) + 8 * (c >> 1);      // C fragment: rows g, g + 8
    if (m >= M || row >= N) continue;
    float sum = 0.f;
#pragma unroll
    for (int o = 0; o < W; ++o) sum += red[o][v][l];
    if (BITS == 8) sum *= __ldg(scale + row);
    y[(size_t)m * N + row] = f32_to_bf16(sum);
  }
}

#ifndef FDLITE_NVRTC   // nvcc (CI's compile check) needs them; NVRTC instantiates what name_expressions ask
#define GEMV_PACKED_G(BITS, NB, GS, R, W, MINB, D, GATE)                                                    \
  template __global__ void gemv_packed<BITS, NB, GS, R, W, MINB, D, GATE>(const bf16_t*, const uint4*, const float*, \
                                                                          bf16_t*, int, int, int, int);
#define GEMV_PACKED(BITS, NB, GS, R, W, MINB, D) GEMV_PACKED_G(BITS, NB, GS, R, W, MINB, D, false)
#define GEMV_PACKED_D(BITS, NB, GS, R, W, MINB) \
  GEMV_PACKED(BITS, NB, GS, R, W, MINB, 0) GEMV_PACKED(BITS, NB, GS, R, W, MINB, 3)
GEMV_PACKED_D(8, 1, 1, 1, 8, 1)     // the plan's shapes (gemv_packed.py: plan), one and two B fragments
GEMV_PACKED_D(8, 1, 1, 1, 4, 1)
GEMV_PACKED_D(8, 1, 1, 1, 16, 1)
GEMV_PACKED_D(8, 2, 1, 1, 16, 1)
GEMV_PACKED_D(8, 2, 1, 1, 8, 1)
GEMV_PACKED_D(4, 1, 8, 1, 8, 1)
GEMV_PACKED_D(4, 1, 8, 1, 4, 1)
GEMV_PACKED_D(4, 2, 8, 1, 8, 1)
GEMV_PACKED_D(4, 1, 4, 1, 8, 1)     // groups of 64, 32, any other multiple of 16
GEMV_PACKED_D(4, 1, 2, 1, 8, 1)
GEMV_PACKED_D(4, 1, 1, 1, 8, 1)
GEMV_PACKED_D(4, 2, 1, 2, 8, 3)
GEMV_PACKED(4, 1, 8, 1, 4, 1, -4)   // four tiles in registers (the sweeps of gpu_gemv.py)
GEMV_PACKED(8, 1, 1, 1, 8, 1, -4)
GEMV_PACKED_G(8, 1, 1, 1, 4, 1, 0, true)   // gate_up with SwiGLU: the plan's shape for its N
GEMV_PACKED_G(8, 2, 1, 1, 4, 1, 0, true)
GEMV_PACKED_G(4, 1, 8, 1, 4, 1, 0, true)
GEMV_PACKED_G(4, 2, 8, 1, 4, 1, 0, true)
#endif
