// Split-K, cp.async-pipelined tensor-core GEMM over the packed int8 / int4 weights of mma_wq.cu (same bytes,
// same meaning: y[m, n] = sum_k x[m, k] * q[n, k] * scale[n, k / group]), for the batched decode and prefill
// rows where mma_wq stalls on memory (10-17% occupancy, too few loads in flight: BENCHMARKS.md). BITS = 16 is
// dense bf16 w [N, K] read as stored (KT = 64; B fragments by ldmatrix from the swizzled stage; no scale).
// BITS = SK_FP8 is block_wise_fp8: w e4m3 [N, K] row-major with one scale per 128 x 128 block (ws [Nb, Kb]) and x
// already quantized per token and 128 columns (act_quant_fp8: xq e4m3 [M, Kb 128], xs [M, Kb]); mma m16n8k32 on
// e4m3 (sm_89+), each 128-column stage's fp32 sums scaled by xs[row, kb] * ws[block column, kb]:
//   y[m, n] = sum_kb xs[m, kb] ws[n / 128, kb] sum_{k in kb} e4m3(xq[m, k]) e4m3(w[n, k])   (the NumPy twin's math)
//
// Block: WARPS (4 or 8) warps over BN = 128 output columns (16 n8 tiles, 4 or 2 per warp) and BM = 16 MT rows;
// grid.z = S splits of the K tiles, so that small-M shapes still fill the GPU. Each K tile (KT = 128 int4 / fp8,
// 64 int8 / bf16 columns) is a pipeline stage: the block's x rows [BM x KT], its weights (16 packed tiles of 512 B,
// or 128 dense rows) and their scales are copied to shared memory with cp.async, STAGES - 1 stages ahead of the
// one being multiplied. x is read back as mma A fragments
// with ldmatrix (16-byte chunks XOR-swizzled by row, so the 8 rows of a matrix hit 8 different bank groups);
// each lane reads its own 16-byte B chunk (the packed layout is already fragment order) and decodes it in
// registers exactly as mma_wq does (common.cuh: s8_to_f32, u4x8_to_bf16x2; int4 groups covering whole K tiles
// are scaled per tile in fp32 (POST), others folded into the bf16 weight).
// S > 1: each split writes its fp32 tile to ws[z] and bumps a per-tile counter; the block that arrives last
// sums ws[0..S-1] in z order (so the result does not depend on which split finishes first), applies the int8
// channel scale, writes bf16 y and resets the counter for the next launch (graph replays reuse it).
#include "common.cuh"

#define SK_BN 128                          // columns per block: 16 n8 tiles, 16 / WARPS per warp
#define SK_FP8 28                          // BITS code of block_wise_fp8 (e4m3 weights and activations)
#define SK_STAGES 4

// int4 group scales ride in each stage too (SG per row: 1 when groups cover whole K tiles, else KT / group <= 8):
// loaded with the weights they scale instead of from global memory at the tile's end, where a DRAM-latency wait
// per stage serialised the pipeline (first version: 2 us per stage at one block per SM).
#define SK_SG_MAX 8

// x: bf16 [M, K]; qp: packed [Np / 8 n-tiles][K / KT k-tiles][512 B]; scale: f32 [Np, G]; y: bf16 [M, N];
// ws: f32 [splits, M, Np] (splits > 1 only); flags: int32, one per (blockIdx.y, blockIdx.x), zero between launches.
// GATHER (MoE experts, fdlite_kernels/moe.py): M = R routed rows; route = moe_align's plan (sorted [R] | experts [S]
// | offsets [S + 1]); blockIdx.y = slot * rowtiles + row tile: the block multiplies expert experts[slot]'s rows
// sorted[offsets[slot] + 16 MT tile ...] (x row = sorted row / xdiv) by that expert's weights (qp + e qp_es,
// scale + e scale_es) and writes y / ws at the sorted row. Empty slots and tiles exit at once.
template <int BITS, int MT, bool POST, int SK_WARPS, bool GATHER>
__global__ void __launch_bounds__(32 * SK_WARPS) mma_sk(const bf16_t* __restrict__ x, const uint4* __restrict__ qp,
                                                       const float* __restrict__ scale, bf16_t* __restrict__ y,
                                                       float* __restrict__ ws, int* __restrict__ flags, int M, int N,
                                                       int Np, int K, int group, int tiles_per_split,
                                                       const int* __restrict__ route, int S, int rowtiles, int xdiv,
                                                       long long qp_es, long long scale_es,
                                                       const float* __restrict__ xscale) {
  constexpr bool FP8 = BITS == SK_FP8;
  constexpr int KT = BITS == 4 || FP8 ? 128 : 64;
  constexpr int EB = FP8 ? 1 : 2;                   // bytes per x (and dense w) element
  constexpr int STEPS = KT / (FP8 ? 32 : 16);       // mma k steps per stage
  constexpr int BM = 16 * MT;
  constexpr int SK_NTW = SK_BN / 8 / SK_WARPS;      // n8 tiles per warp
  constexpr int XCH = KT * EB / 16;                 // 16-byte chunks of an x row (and a dense w row) in one stage
  constexpr int XV = BM * XCH;                      // uint4 of x per stage
  constexpr int WV = BITS == 16 || FP8 ? SK_BN * XCH : SK_BN / 8 * 32;   // uint4 of weights per stage
  constexpr int SV = BITS == 4 ? SK_BN * SK_SG_MAX / 4 : FP8 ? (BM + 4) / 4 : 0;   // uint4 of scales per stage
  constexpr int STV = XV + WV + SV;
  extern __shared__ uint4 smem[];                   // SK_STAGES x [x: XV][w: WV][scales: SV]

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int ntiles = Np / 8, ktiles = K / KT, G = K / group;
  const int nt0 = blockIdx.x * (SK_BN / 8);
  const int k_begin = blockIdx.z * tiles_per_split;
  const int nk = min(ktiles, k_begin + tiles_per_split) - k_begin;
  const int SG = POST ? 1 : KT / group;             // int4 scales per row and stage (the launcher checks <= 8)
  // k / group and i / SG without an integer division (int4 only: the others pass group = K and SG is unused)
  const FastDiv gdiv = fastdiv_of(BITS == 4 ? group : 1), sgdiv = fastdiv_of(BITS == 4 && !POST ? SG : 1);
  __shared__ int xrow_s[BM], yrow_s[BM];            // x row and y row of each of the block's rows
  int rows;                                         // rows past it are zeroed once, never loaded
  if (GATHER) {
    const int slot = blockIdx.y / rowtiles, m0 = (blockIdx.y % rowtiles) * BM;
    const int* offs = route + M + S;
    const int o0 = offs[slot] + m0;
    rows = min(BM, offs[slot + 1] - o0);
    if (rows <= 0) return;                          // the same for every thread and every K split of the tile
    const int e = route[M + slot];
    qp += (size_t)e * qp_es;
    scale += (size_t)e * scale_es;
    for (int r = threadIdx.x; r < rows; r += 32 * SK_WARPS) {
      yrow_s[r] = route[o0 + r];
      xrow_s[r] = yrow_s[r] / xdiv;
    }
  } else {
    const int m0 = blockIdx.y * BM;
    rows = min(BM, M - m0);
    for (int r = threadIdx.x; r < rows; r += 32 * SK_WARPS) xrow_s[r] = yrow_s[r] = m0 + r;
  }
  __syncthreads();

  for (int i = threadIdx.x; i < SK_STAGES * XV; i += 32 * SK_WARPS) {
    const int r = (i % XV) / XCH;
    if (r >= rows) smem[(i / XV) * STV + i % XV] = make_uint4(0, 0, 0, 0);
  }
  auto load_stage = [&](int kt, int slot) {
    uint4* xs = smem + slot * STV;
    uint4* wsm = xs + XV;
#pragma unroll
    for (int i = threadIdx.x; i < XV; i += 32 * SK_WARPS) {
      const int r = i / XCH, c = i % XCH;
      if (r < rows)
        cp_async16(xs + r * XCH + (c ^ (r & 7)),
                   reinterpret_cast<const u8*>(x) + ((size_t)xrow_s[r] * K + kt * KT) * EB + 16 * c, true);
    }
    if (FP8) {                                      // xs of the block's rows, then the weight block's scale
      float* ss = reinterpret_cast<float*>(wsm + WV);
      const int Kb = K / KT;
      for (int r = threadIdx.x; r <= BM; r += 32 * SK_WARPS) {
        if (r < rows) cp_async4(ss + r, xscale + (size_t)xrow_s[r] * Kb + kt, true);
        else if (r == BM) cp_async4(ss + BM, scale + (size_t)blockIdx.x * Kb + kt, true);
      }
    }
    if (BITS == 4) {                                // scale[row][kt KT / group + e], e < SG, of the 128 rows
      float* ss = reinterpret_cast<float*>(wsm + WV);
      const unsigned g0 = fastdiv(kt * KT, gdiv);
      for (int i = threadIdx.x; i < SK_BN * SG; i += 32 * SK_WARPS) {
        const int q = POST ? i : (int)fastdiv(i, sgdiv), row = 8 * nt0 + q;
        const bool ok = row < Np;
        cp_async4(ss + i, scale + (size_t)(ok ? row : 0) * G + g0 + (i - q * SG), ok);
      }
    }
#pragma unroll
    for (int i = threadIdx.x; i < WV; i += 32 * SK_WARPS) {
      if (BITS == 16 || FP8) {                      // row-major w: row r's 16-byte chunks, swizzled as x's
        const int r = i / XCH, c = i % XCH, row = 8 * nt0 + r;
        const bool ok = row < N;
        cp_async16(wsm + r * XCH + (c ^ (r & 7)),
                   reinterpret_cast<const u8*>(qp) + ((size_t)(ok ? row : 0) * K + kt * KT) * EB + 16 * c, ok);
      } else {
        const int nt = nt0 + (i >> 5);
        const bool ok = nt < ntiles;
        cp_async16(wsm + i, qp + ((size_t)(ok ? nt : 0) * ktiles + kt) * 32 + (i & 31), ok);
      }
    }
  };

  float acc[MT][SK_NTW][4];
#pragma unroll
  for (int a = 0; a < MT; ++a)
#pragma unroll
    for (int h = 0; h < SK_NTW; ++h)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[a][h][c] = 0.f;

#pragma unroll
  for (int s = 0; s < SK_STAGES - 1; ++s) {
    if (s < nk) load_stage(k_begin + s, s);
    cp_async_commit();
  }
  const int wnt = nt0 + warp * SK_NTW;              // this warp's first n8 tile
  for (int i = 0; i < nk; ++i) {
    cp_async_wait<SK_STAGES - 2>();
    __syncthreads();                                // stage i landed for every thread; stage i - 1 is free
    if (i + SK_STAGES - 1 < nk) load_stage(k_begin + i + SK_STAGES - 1, (i + SK_STAGES - 1) % SK_STAGES);
    cp_async_commit();

    const uint4* xs = smem + (i % SK_STAGES) * STV;
    const uint4* wsm = xs + XV;
    const float* ss = reinterpret_cast<const float*>(wsm + WV);   // [128 rows][SG]
    uint4 w[SK_NTW];
    float s0[SK_NTW], s1[SK_NTW];                   // POST: this tile's group scales of columns 2t, 2t + 1
#pragma unroll
    for (int h = 0; h < SK_NTW; ++h) {
      if (BITS != 16 && !FP8) w[h] = wsm[(warp * SK_NTW + h) * 32 + lane];
      if (BITS == 4 && POST) {
        s0[h] = ss[8 * (warp * SK_NTW + h) + 2 * t];
        s1[h] = ss[8 * (warp * SK_NTW + h) + 2 * t + 1];
      }
    }
    float tmp[MT][SK_NTW][4];
#pragma unroll
    for (int a = 0; a < MT; ++a)
#pragma unroll
      for (int h = 0; h < SK_NTW; ++h)
#pragma unroll
        for (int c = 0; c < 4; ++c) tmp[a][h][c] = 0.f;
#pragma unroll
    for (int j = 0; j < STEPS; ++j) {
      unsigned b[SK_NTW][2];
#pragma unroll
      for (int h = 0; h < SK_NTW; ++h) {
        if (BITS == 16 || FP8) {                    // ldmatrix: n tiles h, h + 1 x 16-byte halves 0, 1 of step j
          if (h % 2 == 0) {
            const int mat = lane >> 3, r = 8 * (warp * SK_NTW + h + (mat >> 1)) + (lane & 7);
            unsigned q4[4];
            ldmatrix_x4(q4, wsm + r * XCH + ((2 * j + (mat & 1)) ^ (r & 7)));
            b[h][0] = q4[0];
            b[h][1] = q4[1];
            b[h + 1][0] = q4[2];
            b[h + 1][1] = q4[3];
          }
        } else {                                    // k 2t, 2t+1 and 2t+8, 2t+9 of step j (common.cuh)
          codes_of_step<BITS>(w[h], j, b[h]);
          if (BITS == 4 && !POST) {                // group scale folded into the bf16 weight
            const float sc = ss[(8 * (warp * SK_NTW + h) + g) * SG + fastdiv(16 * j, gdiv)];
            b[h][0] = pack_bf16x2(__uint_as_float(b[h][0] << 16) * sc, __uint_as_float(b[h][0] & 0xffff0000u) * sc);
            b[h][1] = pack_bf16x2(__uint_as_float(b[h][1] << 16) * sc, __uint_as_float(b[h][1] & 0xffff0000u) * sc);
          }
        }
      }
#pragma unroll
      for (int a = 0; a < MT; ++a) {
        unsigned af[4];                             // rows 16a + (lane & 15), 16-byte chunk 2j + (lane >> 4)
        const int r = 16 * a + (lane & 15), c = 2 * j + (lane >> 4);
        ldmatrix_x4(af, xs + r * XCH + (c ^ (r & 7)));
#pragma unroll
        for (int h = 0; h < SK_NTW; ++h) {
          if (FP8) mma_16832_e4m3(tmp[a][h], af, b[h][0], b[h][1]);
          else mma_16816(BITS == 4 && POST ? tmp[a][h] : acc[a][h], af, b[h][0], b[h][1]);
        }
      }
    }
    if (BITS == 4 && POST) {
#pragma unroll
      for (int a = 0; a < MT; ++a)
#pragma unroll
        for (int h = 0; h < SK_NTW; ++h)
#pragma unroll
          for (int c = 0; c < 4; ++c) acc[a][h][c] = fmaf(tmp[a][h][c], (c & 1) ? s1[h] : s0[h], acc[a][h][c]);
    }
    if (FP8) {                                      // rows 16a + g (c < 2) and + 8: xs[row] * the block's ws
      const float sw = ss[BM];
#pragma unroll
      for (int a = 0; a < MT; ++a) {
        const float r0 = ss[16 * a + g] * sw, r1 = ss[16 * a + g + 8] * sw;
#pragma unroll
        for (int h = 0; h < SK_NTW; ++h)
#pragma unroll
          for (int c = 0; c < 4; ++c) acc[a][h][c] = fmaf(tmp[a][h][c], c < 2 ? r0 : r1, acc[a][h][c]);
      }
    }
  }
  cp_async_wait<0>();

  // C fragment c of (a, h): block row 16a + g (+8 for c >= 2), i.e. y row yrow_s[...]; column 8 (wnt + h) + 2t + (c & 1)
  if (gridDim.z == 1) {
#pragma unroll
    for (int a = 0; a < MT; ++a)
#pragma unroll
      for (int h = 0; h < SK_NTW; ++h)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int rl = 16 * a + g + (c >= 2 ? 8 : 0), col = 8 * (wnt + h) + 2 * t + (c & 1);
          if (rl < rows && col < N)
            y[(size_t)yrow_s[rl] * N + col] = f32_to_bf16(BITS == 8 ? acc[a][h][c] * __ldg(scale + col) : acc[a][h][c]);
        }
    return;
  }
  float* part = ws + (size_t)blockIdx.z * M * Np;
#pragma unroll
  for (int a = 0; a < MT; ++a)
#pragma unroll
    for (int h = 0; h < SK_NTW; ++h)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int rl = 16 * a + g + (c >= 2 ? 8 : 0), col = 8 * (wnt + h) + 2 * t + (c & 1);
        if (rl < rows && col < Np) part[(size_t)yrow_s[rl] * Np + col] = acc[a][h][c];
      }
  if (!last_to_arrive(flags + blockIdx.y * gridDim.x + blockIdx.x, gridDim.z)) return;
#pragma unroll
  for (int a = 0; a < MT; ++a)
#pragma unroll
    for (int h = 0; h < SK_NTW; ++h)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int rl = 16 * a + g + (c >= 2 ? 8 : 0), col = 8 * (wnt + h) + 2 * t + (c & 1);
        if (rl >= rows || col >= N) continue;
        const int row = yrow_s[rl];
        float v = 0.f;
        for (int z = 0; z < (int)gridDim.z; ++z) v += __ldcg(ws + ((size_t)z * M + row) * Np + col);
        y[(size_t)row * N + col] = f32_to_bf16(BITS == 8 ? v * __ldg(scale + col) : v);
      }
}

#ifndef FDLITE_NVRTC   // nvcc (CI's compile check) needs them; NVRTC instantiates what name_expressions ask
#define MMA_SK_INST(B, MT, P, W, GA) \
  template __global__ void mma_sk<B, MT, P, W, GA>(const bf16_t*, const uint4*, const float*, bf16_t*, float*, int*, \
                                                   int, int, int, int, int, int, const int*, int, int, int, long long, \
                                                   long long, const float*);
#define MMA_SK_MT(B, P, W) MMA_SK_INST(B, 1, P, W, false) MMA_SK_INST(B, 2, P, W, false) MMA_SK_INST(B, 4, P, W, false)
MMA_SK_MT(8, false, 4) MMA_SK_MT(4, false, 4) MMA_SK_MT(4, true, 4)
MMA_SK_MT(8, false, 8) MMA_SK_MT(4, false, 8) MMA_SK_MT(4, true, 8)
MMA_SK_MT(16, false, 4) MMA_SK_MT(16, false, 8)
MMA_SK_MT(28, false, 4) MMA_SK_MT(28, false, 8)
// MoE experts (GATHER): 16-row tiles, 8 warps
MMA_SK_INST(8, 1, false, 8, true) MMA_SK_INST(4, 1, false, 8, true) MMA_SK_INST(4, 1, true, 8, true)
MMA_SK_INST(16, 1, false, 8, true)
#endif
