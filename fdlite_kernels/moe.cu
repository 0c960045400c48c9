// Mixture-of-experts on the GPU without a host round trip (twins: fdlite/moe.py route, fdlite/moe_gpu.py).
// A decode step's MoE layer is six launches here plus fused_ops' SwiGLU, whose grids depend only on (tokens N,
// top-k, E), so the CUDA-graph runner can capture it:
//   moe_logits  logits[t, e] = x[t] . router[e]        fp32 router GEMV; grid (E, N / LTOK), 8 warps split H
//   moe_topk    one warp per token: softmax, top-k of p + bias (ties -> lower e), w = p[id] / max(sum, norm_min)
//   moe_align   one block: the N k (token, slot) rows r = t k + j sorted by expert (stable), the used experts
//   moe_gemm_*  grid (N-blocks, used-expert slot s): expert e = experts[s] reads its weights once per MMAX rows
//               of its rows sorted[offsets[s] .. offsets[s + 1]) (L1/L2 after the first), y[r] = x[r / xdiv] W_e^T
//   moe_combine out[t] = sum_j w[t, j] y[t k + j]       fp32 in slot order, one bf16 rounding, no atomics
// Layouts
//   x: bf16 [N, H]; router: f32 [E, H]; bias: f32 [E]; logits: f32 [N, E]; weights: f32 [N, k]; ids: int32 [N, k]
//   plan: int32 [R + 2 S + 1], R = N k, S = min(E, R): sorted [R] | experts [S] | offsets [S + 1]; slots past
//     the used experts are empty (offsets = R there), so their blocks return at once
//   packed experts (moe_gemm_packed): qp = E copies of the mma_wq.cu fragment order stacked, uint8 [E, Np K BITS/8]
//     (Np = N rounded up to 16, K the padded K), scale f32 [E, Np, G] (int8: G = 1; int4: G = K / group)
//   bf16 experts (moe_gemm_bf16): w bf16 [E, N, K] row-major
//   the down projection's x is silu_mul(gate_up output), computed once per row by fused_ops.cu (fusing it here
//     recomputed it in every 16-column block: measured 2x slower on ERNIE-21B at 32 tokens, H100)
#include "common.cuh"

#define MAX_E 1024       // experts (moe_topk keeps MAX_E / 32 probabilities per lane in registers)
#define LTOK 4           // tokens per moe_logits block: each router chunk loaded serves LTOK tokens
#define WARPS 8          // moe_gemm_*: 8 warps per block (packed: they split the K tiles)
#define NT 2             // moe_gemm_packed: n8 tiles per block (16 output columns)
#define ROWS 4           // moe_gemm_bf16: output columns per warp (as gemv_bf16.cu)

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// ---- routing -------------------------------------------------------------------------------------------------
// All 256 threads of a block split H in 8-element chunks (16-byte loads; H % 8 == 0), so even one token spreads
// the 655 KB fp32 router of ERNIE-4.5-21B over E blocks instead of one SM.
__global__ void __launch_bounds__(256) moe_logits(const bf16_t* __restrict__ x, const float* __restrict__ router,
                                                  float* __restrict__ logits, int N, int H, int E) {
  const int e = blockIdx.x, t0 = blockIdx.y * LTOK;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const float* wr = router + (size_t)e * H;
  float acc[LTOK];
#pragma unroll
  for (int j = 0; j < LTOK; ++j) acc[j] = 0.f;
  for (int h = threadIdx.x * 8; h < H; h += 256 * 8) {
    const float4 w0 = __ldg(reinterpret_cast<const float4*>(wr + h));
    const float4 w1 = __ldg(reinterpret_cast<const float4*>(wr + h + 4));
    const float wf[8] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
#pragma unroll
    for (int j = 0; j < LTOK; ++j) {
      if (t0 + j < N) {
        float xf[8];
        bf16x8_to_f32(__ldg(reinterpret_cast<const uint4*>(x + (size_t)(t0 + j) * H + h)), xf);
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[j] = fmaf(xf[i], wf[i], acc[j]);
      }
    }
  }
  __shared__ float red[LTOK][WARPS];
#pragma unroll
  for (int j = 0; j < LTOK; ++j) {
    const float v = warp_sum(acc[j]);
    if (lane == 0) red[j][warp] = v;
  }
  __syncthreads();
  if (threadIdx.x < LTOK && t0 + (int)threadIdx.x < N) {
    float s = 0.f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) s += red[threadIdx.x][w];
    logits[(size_t)(t0 + threadIdx.x) * E + e] = s;
  }
}

// One warp per token (4 per block); lane l holds p of experts l, l + 32, ... in registers. Selection: k rounds of
// a warp argmax over (score, -e), so equal scores go to the lower expert like the twin's stable argsort.
// Unnormalised p of each pick is parked in weights and divided by max(sum, norm_min) at the end (lane 0 both
// writes and rereads, so no fence is needed); the sum runs in pick order.
__global__ void __launch_bounds__(128) moe_topk(const float* __restrict__ logits, const float* __restrict__ bias,
                                                float* __restrict__ weights, int* __restrict__ ids, int N, int E,
                                                int k, int has_bias, float norm_min) {
  constexpr int EPL = MAX_E / 32;
  const int lane = threadIdx.x & 31;
  const int t = blockIdx.x * 4 + (threadIdx.x >> 5);
  if (t >= N) return;                                    // whole warps only: no block-level sync below
  const float* lg = logits + (size_t)t * E;
  float p[EPL];
  float mx = neg_inf();
#pragma unroll
  for (int i = 0; i < EPL; ++i) {
    const int e = 32 * i + lane;
    p[i] = e < E ? lg[e] : neg_inf();
    mx = fmaxf(mx, p[i]);
  }
  mx = warp_max(mx);
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < EPL; ++i) {
    p[i] = 32 * i + lane < E ? expf(p[i] - mx) : 0.f;
    s += p[i];
  }
  s = warp_sum(s);
#pragma unroll
  for (int i = 0; i < EPL; ++i) p[i] = p[i] / s;
  unsigned taken = 0u;                                   // bit i: expert 32 i + lane already picked
  float total = 0.f;
  for (int j = 0; j < k; ++j) {
    float bv = neg_inf(), bp = 0.f;
    int bi = E;                                          // E = none yet; any real expert beats it at a tie
#pragma unroll
    for (int i = 0; i < EPL; ++i) {
      const int e = 32 * i + lane;
      if (e < E && !((taken >> i) & 1u)) {
        const float v = has_bias ? p[i] + __ldg(bias + e) : p[i];
        if (v > bv || (v == bv && e < bi)) { bv = v; bi = e; bp = p[i]; }
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o), op = __shfl_xor_sync(0xffffffffu, bp, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; bp = op; }
    }
    if (bi < E && (bi & 31) == lane) taken |= 1u << (bi >> 5);
    total += bp;
    if (lane == 0) {
      ids[(size_t)t * k + j] = bi;
      weights[(size_t)t * k + j] = bp;
    }
  }
  if (lane == 0) {
    const float d = fmaxf(total, norm_min);
    for (int j = 0; j < k; ++j) weights[(size_t)t * k + j] = weights[(size_t)t * k + j] / d;
  }
}

// ---- grouping ------------------------------------------------------------------------------------------------
// One block of 1024 threads: a shared-memory histogram (integer atomics: exact in any order), then warp 0 scans
// it (exclusive offsets + the list of used experts, ascending) and places the rows 32 at a time in row order:
// __match_any_sync finds the lanes sharing an expert, so each row's rank among its expert's rows is
// (rows placed before this chunk) + (lower lanes with the same expert): a stable counting sort.
__global__ void __launch_bounds__(1024) moe_align(const int* __restrict__ ids, int* __restrict__ plan, int R, int E,
                                                  int S) {
  __shared__ int cnt[MAX_E];
  __shared__ int start[MAX_E];
  int* sorted = plan;
  int* experts = plan + R;
  int* offsets = plan + R + S;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int e = threadIdx.x; e < E; e += blockDim.x) cnt[e] = 0;
  __syncthreads();
  for (int r = threadIdx.x; r < R; r += blockDim.x) {
    const int e = ids[r];
    if ((unsigned)e < (unsigned)E) atomicAdd(&cnt[e], 1);
  }
  __syncthreads();
  if (warp == 0) {
    int base = 0, used = 0;
    for (int e0 = 0; e0 < E; e0 += 32) {
      const int e = e0 + lane;
      const int c = e < E ? cnt[e] : 0;
      int inc = c;                                       // inclusive scan over the 32 lanes
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int v = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += v;
      }
      const unsigned act = __ballot_sync(0xffffffffu, c > 0);
      if (e < E) start[e] = base + inc - c;
      if (c > 0) {
        const int a = used + __popc(act & ((1u << lane) - 1u));
        experts[a] = e;
        offsets[a] = base + inc - c;
      }
      base += __shfl_sync(0xffffffffu, inc, 31);
      used += __popc(act);
    }
    for (int a = used + lane; a < S; a += 32) {          // unused slots: empty ranges at the end
      experts[a] = 0;
      offsets[a] = base;
    }
    if (lane == 0) offsets[S] = base;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x) cnt[e] = 0;   // now: rows of e placed so far
  __syncthreads();
  if (warp == 0) {
    for (int r0 = 0; r0 < R; r0 += 32) {
      const int r = r0 + lane;
      int e = r < R ? ids[r] : -1;
      if ((unsigned)e >= (unsigned)E) e = -1;
      const unsigned peers = __match_any_sync(0xffffffffu, e);
      const int rank = __popc(peers & ((1u << lane) - 1u));
      const int before = e >= 0 ? cnt[e] : 0;
      __syncwarp();
      if (e >= 0) {
        if (rank == 0) cnt[e] = before + __popc(peers);
        sorted[start[e] + before + rank] = r;
      }
      __syncwarp();
    }
  }
}

// ---- expert GEMMs --------------------------------------------------------------------------------------------
// x pairs (k, k+1) and (k+8, k+9) of one row as floats, zero from Kx on (the packed K is padded; Kx is even)
__device__ __forceinline__ void load_x4(const bf16_t* row, int k, int Kx, float* xf) {
  const unsigned lo = k < Kx ? __ldg(reinterpret_cast<const unsigned*>(row + k)) : 0u;
  const unsigned hi = k + 8 < Kx ? __ldg(reinterpret_cast<const unsigned*>(row + k + 8)) : 0u;
  xf[0] = __uint_as_float(lo << 16);
  xf[1] = __uint_as_float(lo & 0xffff0000u);
  xf[2] = __uint_as_float(hi << 16);
  xf[3] = __uint_as_float(hi & 0xffff0000u);
}

// A CUDA-core GEMV (the first gemv_packed.cu design; the dense decode GEMV now runs on the tensor cores) per group
// of up to MMAX rows of one expert: lane l = 4 g + t of warp w reads the 16-byte chunk of tile (n-tile, K tile w, w
// + WARPS, ...), two tiles in flight; the 4 lanes of an output row and the warps are reduced through shared memory;
// int8's channel scale multiplies the sum, int4's group scale each step's (or, for groups covering whole tiles,
// each tile's) partial sum. A row's arithmetic does not depend on which rows share its group (determinism across
// batches). Tried on the H100: warps owning 16 columns over all of K, 128 columns a block (8x fewer blocks): no
// faster at 32 tokens, slower at 1.
template <int BITS, int MMAX>
__global__ void __launch_bounds__(32 * WARPS) moe_gemm_packed(const bf16_t* __restrict__ x,
                                                              const uint4* __restrict__ qp,
                                                              const float* __restrict__ scale,
                                                              const int* __restrict__ plan, bf16_t* __restrict__ y,
                                                              int R, int S, int N, int K, int Kx, int group,
                                                              int xdiv) {
  constexpr int KT = BITS == 8 ? 64 : 128;
  constexpr int STEPS = KT / 16;
  const int s = blockIdx.y;
  const int lo = plan[R + S + s], hi = plan[R + S + s + 1];
  if (lo >= hi) return;                                  // an unused slot (whole block)
  const int e = plan[R + s];
  const int* sorted = plan;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int nt0 = blockIdx.x * NT;
  const int Np = (N + 15) & ~15, ktiles = K / KT, G = K / group;
  const FastDiv gdiv = fastdiv_of(BITS == 4 ? group : 1);   // k / group without an integer division
  const uint4* qe = qp + (size_t)e * (Np / 8) * ktiles * 32;        // 512-byte tiles, 32 lanes x 16 bytes
  const float* se = scale + (size_t)e * Np * G;
  const bool post = BITS == 4 && group % KT == 0;                  // int4 groups cover whole tiles: scale per tile
  __shared__ float red[WARPS][MMAX * NT][8];
  for (int g0 = lo; g0 < hi; g0 += MMAX) {
    const int M = min(MMAX, hi - g0);
    const bf16_t* xr[MMAX];
#pragma unroll
    for (int m = 0; m < MMAX; ++m) xr[m] = x + (size_t)(sorted[g0 + min(m, M - 1)] / xdiv) * Kx;   // x rows: Kx wide
    float acc[MMAX][NT];
#pragma unroll
    for (int m = 0; m < MMAX; ++m)
#pragma unroll
      for (int h = 0; h < NT; ++h) acc[m][h] = 0.f;
    uint4 wn[2][NT];
#pragma unroll
    for (int d = 0; d < 2; ++d)
#pragma unroll
      for (int h = 0; h < NT; ++h)
        wn[d][h] = warp + d * WARPS < ktiles ? __ldg(qe + ((size_t)(nt0 + h) * ktiles + warp + d * WARPS) * 32 + lane)
                                             : make_uint4(0, 0, 0, 0);
    for (int kt = warp; kt < ktiles; kt += WARPS) {
      uint4 w[NT];
#pragma unroll
      for (int h = 0; h < NT; ++h) {
        w[h] = wn[0][h];
        wn[0][h] = wn[1][h];
        if (kt + 2 * WARPS < ktiles) wn[1][h] = __ldg(qe + ((size_t)(nt0 + h) * ktiles + kt + 2 * WARPS) * 32 + lane);
      }
      float tacc[MMAX][NT];                              // post: this tile's unscaled sums
#pragma unroll
      for (int m = 0; m < MMAX; ++m)
#pragma unroll
        for (int h = 0; h < NT; ++h) tacc[m][h] = 0.f;
#pragma unroll
      for (int j = 0; j < STEPS; ++j) {
        const int k = kt * KT + 16 * j + 2 * t;
        float wf[NT][4];                                 // exact codes (common.cuh decoders), scaled below
        float sc[NT];
#pragma unroll
        for (int h = 0; h < NT; ++h) {
          if (BITS == 8) {
            const unsigned v = word_of(w[h], j) ^ 0x80808080u;
#pragma unroll
            for (int i = 0; i < 4; ++i) wf[h][i] = s8_to_f32(v, i);
          } else {
            unsigned r[4];
            u4x8_to_bf16x2(word_of(w[h], j >> 1), r);
            const unsigned p0 = r[2 * (j & 1)], p1 = r[2 * (j & 1) + 1];
            wf[h][0] = __uint_as_float(p0 << 16);
            wf[h][1] = __uint_as_float(p0 & 0xffff0000u);
            wf[h][2] = __uint_as_float(p1 << 16);
            wf[h][3] = __uint_as_float(p1 & 0xffff0000u);
            if (!post) sc[h] = __ldg(se + (size_t)(8 * (nt0 + h) + g) * G + fastdiv(kt * KT + 16 * j, gdiv));
          }
        }
#pragma unroll
        for (int m = 0; m < MMAX; ++m) {
          if (m < M) {
            float xf[4];
            load_x4(xr[m], k, Kx, xf);
#pragma unroll
            for (int h = 0; h < NT; ++h) {
              float d = 0.f;                             // a step lies in one group: one scale per step
#pragma unroll
              for (int i = 0; i < 4; ++i) d = fmaf(xf[i], wf[h][i], d);
              if (BITS == 8 || post) tacc[m][h] += d;
              else acc[m][h] = fmaf(d, sc[h], acc[m][h]);
            }
          }
        }
      }
      if (BITS == 8 || post) {
#pragma unroll
        for (int h = 0; h < NT; ++h) {
          const float st = BITS == 8 ? 1.f : __ldg(se + (size_t)(8 * (nt0 + h) + g) * G + fastdiv(kt * KT, gdiv));
#pragma unroll
          for (int m = 0; m < MMAX; ++m) acc[m][h] = fmaf(tacc[m][h], st, acc[m][h]);
        }
      }
    }
#pragma unroll
    for (int m = 0; m < MMAX; ++m)
#pragma unroll
      for (int h = 0; h < NT; ++h) {
        float v = acc[m][h];
        v += __shfl_xor_sync(0xffffffffu, v, 1);         // the 4 lanes (t) of an output row
        v += __shfl_xor_sync(0xffffffffu, v, 2);
        if (t == 0) red[warp][m * NT + h][g] = v;
      }
    __syncthreads();
    for (int i = threadIdx.x; i < MMAX * NT * 8; i += 32 * WARPS) {
      const int m = i / (NT * 8), h = (i / 8) % NT, r = i % 8;
      float v = 0.f;
#pragma unroll
      for (int o = 0; o < WARPS; ++o) v += red[o][m * NT + h][r];
      const int col = 8 * (nt0 + h) + r;
      if (BITS == 8) v *= __ldg(se + col);
      if (m < M && col < N) y[(size_t)sorted[g0 + m] * N + col] = f32_to_bf16(v);
    }
    __syncthreads();                                     // red is reused by the next group
  }
}

// bf16 experts: the gemv_bf16.cu body (a warp streams ROWS weight rows with 16-byte loads; K % 8 == 0) per
// group of up to MMAX rows of one expert. Warps past N leave at once (no block-level sync here).
template <int MMAX>
__global__ void __launch_bounds__(32 * WARPS) moe_gemm_bf16(const bf16_t* __restrict__ x,
                                                            const bf16_t* __restrict__ w,
                                                            const int* __restrict__ plan, bf16_t* __restrict__ y,
                                                            int R, int S, int N, int K, int xdiv) {
  const int s = blockIdx.y;
  const int lo = plan[R + S + s], hi = plan[R + S + s + 1];
  const int lane = threadIdx.x & 31;
  const int n0 = (blockIdx.x * WARPS + (threadIdx.x >> 5)) * ROWS;
  if (lo >= hi || n0 >= N) return;
  const int* sorted = plan;
  const bf16_t* we = w + (size_t)plan[R + s] * N * K;
  for (int g0 = lo; g0 < hi; g0 += MMAX) {
    const int M = min(MMAX, hi - g0);
    const bf16_t* xr[MMAX];
#pragma unroll
    for (int m = 0; m < MMAX; ++m) xr[m] = x + (size_t)(sorted[g0 + min(m, M - 1)] / xdiv) * K;
    float acc[MMAX][ROWS];
#pragma unroll
    for (int m = 0; m < MMAX; ++m)
#pragma unroll
      for (int r = 0; r < ROWS; ++r) acc[m][r] = 0.f;
    for (int k = lane * 8; k < K; k += 32 * 8) {
      float wf[ROWS][8];
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        const int n = min(n0 + r, N - 1);               // tail rows re-read the last row; not stored
        bf16x8_to_f32(__ldg(reinterpret_cast<const uint4*>(we + (size_t)n * K + k)), wf[r]);
      }
#pragma unroll
      for (int m = 0; m < MMAX; ++m) {
        if (m < M) {
          float xf[8];
          bf16x8_to_f32(__ldg(reinterpret_cast<const uint4*>(xr[m] + k)), xf);
#pragma unroll
          for (int r = 0; r < ROWS; ++r) {
            float d = 0.f;
#pragma unroll
            for (int i = 0; i < 8; ++i) d = fmaf(xf[i], wf[r][i], d);
            acc[m][r] += d;
          }
        }
      }
    }
#pragma unroll
    for (int m = 0; m < MMAX; ++m) {
      if (m < M) {
        const size_t row = (size_t)sorted[g0 + m] * N;
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
          const float v = warp_sum(acc[m][r]);
          if (lane == 0 && n0 + r < N) y[row + n0 + r] = f32_to_bf16(v);
        }
      }
    }
  }
}

// ---- combine -------------------------------------------------------------------------------------------------
// out[t, h] = bf16(sum_j w[t, j] y[t k + j, h]): products and sums rounded one by one (__fmul_rn / __fadd_rn keep
// the compiler from fusing them) in slot order, exactly the twin's float32 sum over the slot axis.
__global__ void __launch_bounds__(256) moe_combine(const bf16_t* __restrict__ y, const float* __restrict__ w,
                                                   bf16_t* __restrict__ out, int N, int H, int k) {
  const size_t total = (size_t)N * H;
  for (size_t i = (size_t)blockIdx.x * 256 + threadIdx.x; i < total; i += (size_t)gridDim.x * 256) {
    const size_t t = i / H, h = i % H;
    float acc = 0.f;
    for (int j = 0; j < k; ++j)
      acc = __fadd_rn(acc, __fmul_rn(__ldg(w + t * k + j), bf16_to_f32(y[(t * k + j) * H + h])));
    out[i] = f32_to_bf16(acc);
  }
}

#define PACKED_ARGS const bf16_t*, const uint4*, const float*, const int*, bf16_t*, int, int, int, int, int, int, int
template __global__ void moe_gemm_packed<8, 1>(PACKED_ARGS);
template __global__ void moe_gemm_packed<8, 4>(PACKED_ARGS);
template __global__ void moe_gemm_packed<8, 8>(PACKED_ARGS);
template __global__ void moe_gemm_packed<4, 1>(PACKED_ARGS);
template __global__ void moe_gemm_packed<4, 4>(PACKED_ARGS);
template __global__ void moe_gemm_packed<4, 8>(PACKED_ARGS);
#define BF16_ARGS const bf16_t*, const bf16_t*, const int*, bf16_t*, int, int, int, int, int
template __global__ void moe_gemm_bf16<1>(BF16_ARGS);
template __global__ void moe_gemm_bf16<4>(BF16_ARGS);
template __global__ void moe_gemm_bf16<8>(BF16_ARGS);
