// Paged attention over every KV format (codecs in kv_codec.cuh), split-K over the context (flash-decoding) with
// the merge folded in: each (query row, kv head, split) CTA scores its chunk of keys against all the query
// heads of the group and keeps an online softmax; a row whose context fits one split writes its output at once,
// otherwise each split writes an unnormalized partial (po, pm, pl) and the last split to finish (an arrival
// counter per (row, kv head), left at zero again) merges them. One kernel, no second launch.
//
// Each query row n belongs to sequence row_seq[n] and sits at position row_pos[n]; it sees keys
// j in [max(0, pos - window + 1), pos] (window = 0: all of [0, pos]), read through the sequence's block table.
// Decode rows (one per sequence) and prefill chunks (several rows of one sequence) take the same path; the
// rows of one sequence read the same keys, which then come from L2.
//
//   q: bf16 [N, nh, D]; block_tables: i32 [B, max_blocks]; row_seq, row_pos: i32 [N]
//   kc, vc: the layer's cache; kts, vts: BFP8 token scales; ks, vs, kz, vz: read-side scales (kv_codec.cuh)
//   po: f32 [N, nh, S, D], pm, pl: f32 [N, nh, S] (S splits of at most `chunk` keys); o: bf16 [N, nh, D]
//   flags: i32 [N * nkv] arrival counters, zero before and after the launch; cmin, chunk: see row_chunk
// GMAX >= nh / nkv query heads share a kv head (GQA). D in {8, 16, 32, 64, 128, 256}. Launched with PDL.
//
// Lanes and keys: a key's row is cut into units of VEC bytes (16, 8 or 4: the widest whose elements times GMAX
// stay within 32 registers of queries and 32 of accumulators; 64 took 234 registers for int8 and halved the
// CTAs per SM, which batch 32 felt); L lanes share a key (L units, U more per lane when a row has over 32), so
// a warp step covers 32 / L keys and a row is read with coalesced wide loads.
// A warp issues the K and V loads of NB steps together (V does not wait for the scores: one memory latency
// per batch), then scores them (the L lanes' partial dots meet by shuffles), updates its running max, and
// accumulates V. Scales are folded out of the inner loops: per-channel / per-head K scales into the queries,
// the int4 zero points into a per-lane constant, BFP8's token scales into the score and the probability,
// and the V scales (and int4 zero points, through the probability sum) into the warp's result.
#include "kv_codec.cuh"

#define PAGED_ATTN_PARAMS                                                                                     \
  const bf16_t* __restrict__ q, int nh, int nkv, const u8* __restrict__ kc, const u8* __restrict__ vc,        \
      const float* __restrict__ kts, const float* __restrict__ vts, const float* __restrict__ ks,             \
      const float* __restrict__ vs, const float* __restrict__ kz, const float* __restrict__ vz,               \
      const int* __restrict__ block_tables, int max_blocks, int block_size, const int* __restrict__ row_seq,  \
      const int* __restrict__ row_pos, int window, float scale, int cmin, int chunk, int S,                  \
      float* __restrict__ po, float* __restrict__ pm, float* __restrict__ pl, int* __restrict__ flags,       \
      bf16_t* __restrict__ o

// Keys per split for a row that sees `visible` keys: the smallest power of two from `cmin` up to `cmax` (the
// host's chunk for the longest context of the grid) whose S splits cover them, or cmin where that is larger
// (both <= 256: TABMAX). The grid is sized for the longest context (a captured graph serves every length up to
// it), so a short context spreads over a few short splits instead of sitting in one long one; cmin (host:
// min_chunk) stops splitting where the rows and kv heads alone already fill the GPU (each split costs a CTA's
// fixed work and a share of the merge).
__device__ __forceinline__ int row_chunk(int visible, int S, int cmin, int cmax) {
  int c = cmin;
  while (c < cmax && c * S < visible) c <<= 1;
  return c;
}

#define TABMAX 264          // block-table entries of one split: chunk (<= 256) / block_size + 1

template <int FMT, int GMAX, int D>
struct AttnGeo {
  static constexpr int RB = FMT == KV_BF16 ? 2 * D : (FMT == KV_INT4ZP ? D / 2 : D);   // bytes of a row
  static constexpr int EP2 = FMT == KV_BF16 ? 1 : (FMT == KV_INT4ZP ? 4 : 2);          // elements per 2 bytes
  static constexpr int V0 = 8 * EP2 * GMAX <= 32 ? 16 : (4 * EP2 * GMAX <= 32 ? 8 : 4);
  static constexpr int VEC = V0 < RB ? V0 : RB;                                          // bytes per unit
  static constexpr int NW = VEC / 4;                                                     // words per unit
  static constexpr int E = VEC * EP2 / 2;                                                // elements per unit
  static constexpr int L = RB / VEC < 32 ? RB / VEC : 32;                                // lanes per key
  static constexpr int U = RB / (VEC * L);                                               // units per lane
  static constexpr int KPW = 32 / L;                                                     // keys per warp step
  static constexpr int NB0 = 64 / (U * VEC) > 0 ? 64 / (U * VEC) : 1;
  static constexpr int NB1 = 32 / GMAX;
  static constexpr int NB = NB0 < NB1 ? NB0 : NB1;                                       // steps per batch
};

// The E raw values of one unit (scales come later): bf16 as is, int8 and int4 as their signed codes, e4m3 decoded.
template <int FMT, int NW>
__device__ __forceinline__ void unit_values(const unsigned (&w)[NW], float* f) {
#pragma unroll
  for (int c = 0; c < NW; ++c) {
    if (FMT == KV_BF16) {
      f[2 * c] = __uint_as_float(w[c] << 16);
      f[2 * c + 1] = __uint_as_float(w[c] & 0xffff0000u);
    } else if (FMT == KV_INT8) {
      const unsigned vx = w[c] ^ 0x80808080u;
#pragma unroll
      for (int i = 0; i < 4; ++i) f[4 * c + i] = s8_to_f32(vx, i);
    } else if (FMT == KV_INT4ZP) {
#pragma unroll
      for (int i = 0; i < 8; ++i) f[8 * c + i] = __uint_as_float(0x4B000000u | ((w[c] >> (4 * i)) & 0xfu)) - 8388616.f;
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) f[4 * c + i] = e4m3_to_f32((w[c] >> (8 * i)) & 0xffu);
    }
  }
}

// coherent loads: the newest token's row was written by the kernel before (PDL)
template <int NW>
__device__ __forceinline__ void load_unit(const u8* p, unsigned (&w)[NW]) {
  if (NW == 4) {
    const uint4 v = __ldcg(reinterpret_cast<const uint4*>(p));
    w[0] = v.x, w[1] = v.y, w[NW > 2 ? 2 : 0] = v.z, w[NW > 3 ? 3 : 0] = v.w;
  } else if (NW == 2) {
    const uint2 v = __ldcg(reinterpret_cast<const uint2*>(p));
    w[0] = v.x, w[NW > 1 ? 1 : 0] = v.y;
  } else {
    w[0] = __ldcg(reinterpret_cast<const unsigned*>(p));
  }
}

// V's dequantization applied to a head's fp32 output sum a over dim d (l: the softmax weights' sum, for int4_zp's
// zero point): the codes entered P V exactly, the scales factor out of the sum. Shared by both kernels' tails.
template <int FMT>
__device__ __forceinline__ float v_dequant(float a, float l, const float* __restrict__ vs, const float* __restrict__ vz,
                                           int hk, int D, int d) {
  if (FMT == KV_INT8) return a * __ldg(vs + hk * D + d);
  if (FMT == KV_FP8) return a * __ldg(vs + hk);
  if (FMT == KV_INT4ZP) return (a - __ldg(vz + hk * D + d) * l) * __ldg(vs + hk * D + d);
  return a;
}

// The last split of (n, hk) to arrive merges the partials (natural-log maxima): shared by both kernels' tails.
__device__ __forceinline__ void merge_splits(int n, int hk, int nh, int nkv, int g, int D, int S, int nsplit,
                                             const float* __restrict__ po, const float* __restrict__ pm,
                                             const float* __restrict__ pl, int* __restrict__ flags,
                                             bf16_t* __restrict__ o, int tid, int threads) {
  if (!last_to_arrive(flags + (size_t)n * nkv + hk, nsplit)) return;
  for (int x = tid; x < g * D; x += threads) {
    const int i = x / D, d = x % D;
    const size_t h = (size_t)n * nh + hk * g + i;
    float M = neg_inf(), lsum = 0.f, a = 0.f;
#pragma unroll 4
    for (int r = 0; r < nsplit; ++r) {
      const float mr = __ldcg(pm + h * S + r), lr = __ldcg(pl + h * S + r), orr = __ldcg(po + (h * S + r) * D + d);
      const float mn = fmaxf(M, mr), fa = __expf(M - mn), fb = __expf(mr - mn);
      lsum = lsum * fa + lr * fb;
      a = a * fa + orr * fb;
      M = mn;
    }
    o[h * D + d] = f32_to_bf16(a / lsum);
  }
}

// A CTA's result for element (h, d) of split s: final when the row has one split, else the unnormalized partial
// (po; pm and pl once per head) that merge_splits reads.
__device__ __forceinline__ void store_split(bf16_t* __restrict__ o, float* __restrict__ po, float* __restrict__ pm,
                                            float* __restrict__ pl, size_t h, int D, int d, int S, int s, int nsplit,
                                            float a, float M, float lsum) {
  if (nsplit == 1) {
    o[h * D + d] = f32_to_bf16(a / lsum);
    return;
  }
  po[(h * S + s) * D + d] = a;
  if (d == 0) pm[h * S + s] = M, pl[h * S + s] = lsum;
}

// W warps per CTA (4 or 8): 8 for a batch-1 or -2 decode (<= 16 (row, kv head) pairs leave the GPU idle), so a
// short context fits one split of 8 warps' batches and needs no merge. At batch 8 it lost to 4 warps (one 8-warp
// CTA of 140 registers per SM).
template <int FMT, int GMAX, int D, int W>
__global__ void __launch_bounds__(32 * W) paged_attn(PAGED_ATTN_PARAMS) {
  constexpr int THREADS = 32 * W;
  using G = AttnGeo<FMT, GMAX, D>;
  constexpr int RB = G::RB, VEC = G::VEC, NW = G::NW, E = G::E, L = G::L, U = G::U, KPW = G::KPW, NB = G::NB;
  extern __shared__ float obuf[];                 // [g][D]: the warps' rescaled output sums
  __shared__ int tab[TABMAX];                     // the split's slice of the block table
  __shared__ float wm[W][GMAX], wl[W][GMAX];
  const int s = blockIdx.x, hk = blockIdx.y, n = blockIdx.z, tid = threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5, li = lane % L, slot = lane / L;
  const int z = pdl_wait();                       // launched with PDL: before the first read (and any return)
  q += z, kc += z, vc += z, kts += z, vts += z, block_tables += z, row_seq += z, row_pos += z;
  const int g = nh / nkv;
  const int pos = __ldcg(row_pos + n);            // coherent loads of what earlier kernels wrote (common.cuh)
  const int lo = window > 0 ? max(0, pos - window + 1) : 0;
  const int visible = pos + 1 - lo;
  const int ck = row_chunk(visible, S, cmin, chunk);   // this row's keys per split (<= 256)
  const int nsplit = (visible + ck - 1) / ck;     // splits holding keys: the ones that arrive at the merge
  const int start = lo + s * ck;
  if (start > pos) return;
  const int ntok = min(pos + 1 - start, ck);
  const int b0 = start / block_size;
  const int* table = block_tables + (size_t)__ldcg(row_seq + n) * max_blocks;
  for (int i = tid; i <= (start + ntok - 1) / block_size - b0; i += THREADS) tab[i] = __ldcg(table + b0 + i);
  for (int i = tid; i < g * D; i += THREADS) obuf[i] = 0.f;

  // queries of the group on this lane's elements d = (u L + li) E + e, scaled, with K's scales folded in
  float qf[GMAX][U][E], zq[GMAX];
#pragma unroll
  for (int i = 0; i < GMAX; ++i) {
    zq[i] = 0.f;
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const int d = (u * L + li) * E + e;
        float v = i < g ? bf16_to_f32(__ldcg(q + ((size_t)n * nh + hk * g + i) * D + d)) * scale : 0.f;
        if (FMT == KV_INT8 || FMT == KV_INT4ZP) v *= __ldg(ks + hk * D + d);
        if (FMT == KV_FP8) v *= __ldg(ks + hk);
        if (FMT == KV_INT4ZP) zq[i] = fmaf(v, __ldg(kz + hk * D + d), zq[i]);
        qf[i][u][e] = v;
      }
  }
  __syncthreads();

  float m[GMAX], l[GMAX], acc[GMAX][U][E];        // m: the warp's running max; l, acc: this lane's key slot
#pragma unroll
  for (int i = 0; i < GMAX; ++i) {
    m[i] = neg_inf();
    l[i] = 0.f;
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int e = 0; e < E; ++e) acc[i][u][e] = 0.f;
  }
  constexpr int BK = NB * KPW;                    // keys per warp batch
  for (int kb = warp * BK; kb < ntok; kb += W * BK) {   // the batch's first key is always valid
    unsigned kw[NB][U][NW], vw[NB][U][NW];
    float kt[NB], vt[NB];
#pragma unroll
    for (int b = 0; b < NB; ++b) {
      const int t = kb + b * KPW + slot;
      kt[b] = vt[b] = 0.f;
      if (t < ntok) {
        const int j = start + t;
        const size_t row = ((size_t)tab[j / block_size - b0] * nkv + hk) * block_size + j % block_size;
#pragma unroll
        for (int u = 0; u < U; ++u) {
          load_unit<NW>(kc + row * RB + (u * L + li) * VEC, kw[b][u]);
          load_unit<NW>(vc + row * RB + (u * L + li) * VEC, vw[b][u]);
        }
        if (FMT == KV_BFP8) kt[b] = __ldcg(kts + row), vt[b] = __ldcg(vts + row);
      } else {
#pragma unroll
        for (int u = 0; u < U; ++u)
#pragma unroll
          for (int c = 0; c < NW; ++c) kw[b][u][c] = vw[b][u][c] = 0u;
      }
    }
    float sc[NB][GMAX];
#pragma unroll
    for (int b = 0; b < NB; ++b) {
#pragma unroll
      for (int i = 0; i < GMAX; ++i) sc[b][i] = FMT == KV_INT4ZP ? -zq[i] : 0.f;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        float kf[E];
        unit_values<FMT, NW>(kw[b][u], kf);
#pragma unroll
        for (int i = 0; i < GMAX; ++i)
          if (i < g) {
#pragma unroll
            for (int e = 0; e < E; ++e) sc[b][i] = fmaf(qf[i][u][e], kf[e], sc[b][i]);
          }
      }
#pragma unroll
      for (int i = 0; i < GMAX; ++i) {
#pragma unroll
        for (int o = 1; o < L; o <<= 1) sc[b][i] += __shfl_xor_sync(0xffffffffu, sc[b][i], o);
        if (FMT == KV_BFP8) sc[b][i] *= kt[b];
        if (kb + b * KPW + slot >= ntok) sc[b][i] = neg_inf();
      }
    }
#pragma unroll
    for (int i = 0; i < GMAX; ++i) {
      if (i >= g) continue;
      float mb = sc[0][i];
#pragma unroll
      for (int b = 1; b < NB; ++b) mb = fmaxf(mb, sc[b][i]);
#pragma unroll
      for (int o = L; o < 32; o <<= 1) mb = fmaxf(mb, __shfl_xor_sync(0xffffffffu, mb, o));
      const float mn = fmaxf(m[i], mb), alpha = __expf(m[i] - mn);
      m[i] = mn;
      l[i] *= alpha;
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int e = 0; e < E; ++e) acc[i][u][e] *= alpha;
    }
#pragma unroll
    for (int b = 0; b < NB; ++b) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        float vf[E];
        unit_values<FMT, NW>(vw[b][u], vf);
#pragma unroll
        for (int i = 0; i < GMAX; ++i)
          if (i < g) {
            const float p = __expf(sc[b][i] - m[i]);
            if (u == 0) l[i] += p;
            const float pv = FMT == KV_BFP8 ? p * vt[b] : p;
#pragma unroll
            for (int e = 0; e < E; ++e) acc[i][u][e] = fmaf(pv, vf[e], acc[i][u][e]);
          }
      }
    }
  }
  pdl_launch();                                   // the rest is this CTA's short epilogue

  // the key slots of a warp -> one (m is warp-uniform, so they add)
#pragma unroll
  for (int o = L; o < 32; o <<= 1)
#pragma unroll
    for (int i = 0; i < GMAX; ++i) {
      l[i] += __shfl_xor_sync(0xffffffffu, l[i], o);
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int e = 0; e < E; ++e) acc[i][u][e] += __shfl_xor_sync(0xffffffffu, acc[i][u][e], o);
    }
  if (lane == 0)
#pragma unroll
    for (int i = 0; i < GMAX; ++i) wm[warp][i] = m[i], wl[warp][i] = l[i];
  __syncthreads();
  // warps -> the CTA: rescale to the CTA's max, apply V's scales, add into obuf
  if (slot == 0) {
#pragma unroll
    for (int i = 0; i < GMAX; ++i) {
      if (i >= g) continue;
      float M = wm[0][i];
#pragma unroll
      for (int w = 1; w < W; ++w) M = fmaxf(M, wm[w][i]);
      const float f = m[i] == neg_inf() ? 0.f : __expf(m[i] - M);
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int e = 0; e < E; ++e) {
          const int d = (u * L + li) * E + e;
          atomicAdd(&obuf[i * D + d], v_dequant<FMT>(acc[i][u][e], l[i], vs, vz, hk, D, d) * f);
        }
    }
  }
  __syncthreads();
  for (int x = tid; x < g * D; x += THREADS) {
    const int i = x / D, d = x % D;
    float M = wm[0][i];
#pragma unroll
    for (int w = 1; w < W; ++w) M = fmaxf(M, wm[w][i]);
    float lsum = 0.f;
#pragma unroll
    for (int w = 0; w < W; ++w) lsum += wm[w][i] == neg_inf() ? 0.f : wl[w][i] * __expf(wm[w][i] - M);
    store_split(o, po, pm, pl, (size_t)n * nh + hk * g + i, D, d, S, s, nsplit, obuf[x], M, lsum);
  }
  if (nsplit == 1) return;

  // the last split of (n, hk) to arrive merges: o = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s
  merge_splits(n, hk, nh, nkv, g, D, S, nsplit, po, pm, pl, flags, o, tid, THREADS);
}

// ---------------------------------------------------------------------------------------------------------------
// paged_attn_tc: the same contract on tensor cores, for head_dim 64 and 128 (paged_attn above serves every D).
// paged_attn spends ~110 instructions per two keys of a warp (lane-split dot products joined by shuffles, a
// branch per query head) and at batch 1 and 32 it ran at 4-15x the time its bytes need, issue-latency bound
// (Nsight: one instruction per 11.5 cycles, BENCHMARKS.md). Here a warp takes 16 keys at a time through
// mma.m16n8k16 (fp32 accumulation), ~120 instructions per 16 keys:
//   scores  S[16 heads x 8 keys] += Q[16 heads x 16 dims] K^T[16 dims x 8 keys]    (GMAX <= 16 heads on M)
//   output  O[16 heads x 8 dims] += P[16 heads x 16 keys] V[16 keys x 8 dims]
// Lane (r = lane / 4, j = lane % 4). The k index of an mma may be any permutation of the dims as long as Q uses
// the same one, so lane (r, j) reads a contiguous chunk of key row r: dims [j D/4, (j + 1) D/4), coalesced (4
// lanes cover a row), and Q's fragment is built from the dims that chunk's registers hold. On the V side the n
// index is the output dim: lane (r, j) reads chunk r (D/8 dims) of keys 2j, 2j+1, 2j+8, 2j+9 and pairs the two
// keys' values of one dim with a byte permute; n-tile t of the output holds dim n D/8 + dim_in_chunk(t).
// Codes enter the mma exactly: bf16 as bf16; int8, e4m3 and int4 codes as fp16 (all exact), with the K scales
// folded into the queries (fp16) or the scores and the V scales applied to the result, as paged_attn does. P is
// rounded to the mma's type (bf16 or fp16) before P V, as flash attention does. Scores are kept in log2 units.
// The splits, row_chunk, the arrival counter and the partials (natural-log max) are paged_attn's, except that
// a CTA loops over splits blockIdx.x, + gridDim.x, ... of its row (the host sizes gridDim.x to the GPU, not to the
// longest context).
template <int FMT>
struct TcGeo {
  static constexpr int EPW = FMT == KV_BF16 ? 2 : (FMT == KV_INT4ZP ? 8 : 4);   // elements per 32-bit word
  static constexpr bool BF = FMT == KV_BF16;                                      // mma on bf16, else fp16
};

template <int NW>
__device__ __forceinline__ void load_words(const u8* p, unsigned* w) {   // coherent: see load_unit
  if (NW % 4 == 0) {
#pragma unroll
    for (int i = 0; i < NW / 4; ++i) {
      const uint4 v = __ldcg(reinterpret_cast<const uint4*>(p) + i);
      w[4 * i] = v.x, w[4 * i + 1] = v.y, w[4 * i + 2] = v.z, w[4 * i + 3] = v.w;
    }
  } else if (NW == 2) {
    const uint2 v = __ldcg(reinterpret_cast<const uint2*>(p));
    w[0] = v.x, w[1] = v.y;
  } else {
    w[0] = __ldcg(reinterpret_cast<const unsigned*>(p));
  }
}

__device__ __forceinline__ unsigned hsub2(unsigned a, unsigned b) {
  unsigned d;
  asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
}

__device__ __forceinline__ float half_to_f32(unsigned v) {   // the low half of v, an fp16
  float f;
  const unsigned short h = (unsigned short)v;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}

__device__ __forceinline__ unsigned pack_half2(float lo, float hi, bool bf) {   // round to nearest even
  unsigned d;
  if (bf) asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
  else asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
  return d;
}

__device__ __forceinline__ unsigned e4m3x2_to_f16x2(unsigned v) {   // bytes 0, 1 of v -> low, high half
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  unsigned d;
  const unsigned short h = (unsigned short)v;
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(d) : "h"(h));
  return d;
#else
  return pack_half2(e4m3_to_f32(v & 0xffu), e4m3_to_f32((v >> 8) & 0xffu), false);
#endif
}

// NW words of one row chunk -> its pairs (NW EPW / 2 registers of two bf16 / fp16 values each). Pair i holds dims
// (pair_lo(i), pair_lo(i) + pair_step) of the chunk: neighbours, except int4's (e, e + 4) of each word.
template <int FMT>
__host__ __device__ __forceinline__ constexpr int pair_lo(int i) {
  return FMT == KV_INT4ZP ? 8 * (i / 4) + i % 4 : 2 * i;
}
template <int FMT>
__host__ __device__ __forceinline__ constexpr int pair_step() { return FMT == KV_INT4ZP ? 4 : 1; }

template <int FMT, int NW>
__device__ __forceinline__ void chunk_pairs(const unsigned* w, unsigned* p) {
#pragma unroll
  for (int c = 0; c < NW; ++c) {
    if (FMT == KV_BF16) {
      p[c] = w[c];
    } else if (FMT == KV_INT8) {     // 1024 + (q + 128) as fp16, minus 1152
      const unsigned v = w[c] ^ 0x80808080u;
      p[2 * c] = hsub2(__byte_perm(v, 0x64646464u, 0x4140), 0x64806480u);
      p[2 * c + 1] = hsub2(__byte_perm(v, 0x64646464u, 0x4342), 0x64806480u);
    } else if (FMT == KV_INT4ZP) {   // 1024 + (q + 8) as fp16, minus 1032
#pragma unroll
      for (int e = 0; e < 4; ++e) p[4 * c + e] = hsub2(and_or(w[c] >> (4 * e), 0x000F000Fu, 0x64006400u), 0x64086408u);
    } else {
      p[2 * c] = e4m3x2_to_f16x2(w[c]);
      p[2 * c + 1] = e4m3x2_to_f16x2(w[c] >> 16);
    }
  }
}

template <bool BF>
__device__ __forceinline__ void mma_tc(float* c, const unsigned* a, unsigned b0, unsigned b1) {
  if (BF) {
    mma_16816(c, a, b0, b1);
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

#define TC_KEYS 256          // keys of one split (chunk <= 256)

// W warps per CTA; dynamic shared memory: W * GMAX * D floats (the warps' outputs).
template <int FMT, int GMAX, int D, int W>
__global__ void __launch_bounds__(32 * W) paged_attn_tc(PAGED_ATTN_PARAMS) {
  static_assert(D == 64 || D == 128, "paged_attn_tc: head_dim 64 or 128");
  static_assert(GMAX >= 1 && GMAX <= 16, "paged_attn_tc: at most 16 query heads per kv head");
  constexpr int THREADS = 32 * W;
  constexpr bool BF = TcGeo<FMT>::BF;
  constexpr int EPW = TcGeo<FMT>::EPW;
  constexpr int RB = FMT == KV_BF16 ? 2 * D : (FMT == KV_INT4ZP ? D / 2 : D);   // bytes of a row
  constexpr int KE = D / 4, VE = D / 8;             // dims of a lane's K chunk / V chunk
  constexpr int NWK = KE / EPW, NWV = VE / EPW;     // their 32-bit words
  constexpr int KB = NWK * 4, VB = NWV * 4;         // their bytes
  constexpr int NPK = KE / 2, NPV = VE / 2;         // their pairs
  constexpr int KT = D / 16;                        // k16 steps of Q K^T (= NPK / 2)
  constexpr bool HI = GMAX > 8;                     // rows r + 8 hold heads too
  static_assert(NWV >= 1, "a V chunk holds at least one word");
  extern __shared__ float obuf[];                   // [W][GMAX][D]
  __shared__ int ridx[TC_KEYS];                     // cache row (block * nkv + hk) * block_size + offset per key
  __shared__ float wm[W][GMAX], wl[W][GMAX];
  const int hk = blockIdx.y, n = blockIdx.z, tid = threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5, r = lane >> 2, j = lane & 3;
  const int z = pdl_wait();
  q += z, kc += z, vc += z, kts += z, vts += z, block_tables += z, row_seq += z, row_pos += z;
  const int g = nh / nkv;
  const int pos = __ldcg(row_pos + n);
  const int lo = window > 0 ? max(0, pos - window + 1) : 0;
  const int visible = pos + 1 - lo;
  const int ck = row_chunk(visible, S, cmin, chunk);
  const int nsplit = (visible + ck - 1) / ck;
  // queries: A fragments of the KT k16 steps, rows r (and r + 8), k columns = the dims of the K chunk's pairs;
  // K's scales folded in (int8 / int4 per channel), int4's zero-point term zq = sum_d q'_d zp_d (per head).
  unsigned qa[KT][2][2];                            // [step][row half][a0/a2 | a1/a3]
  float zq[2] = {0.f, 0.f};
#pragma unroll
  for (int hh = 0; hh < (HI ? 2 : 1); ++hh) {
    const int hq = r + 8 * hh;
    const bool live = hq < g;
    unsigned qw[KE / 2];                            // the chunk's dims of head hq, bf16 pairs
    load_words<KE / 2>(reinterpret_cast<const u8*>(q + ((size_t)n * nh + hk * g + (live ? hq : 0)) * D + j * KE), qw);
#pragma unroll
    for (int p = 0; p < NPK; ++p) {
      const int d0 = pair_lo<FMT>(p), d1 = d0 + pair_step<FMT>();
      float v0 = live ? __uint_as_float((qw[d0 >> 1] << (d0 & 1 ? 0 : 16)) & 0xffff0000u) : 0.f;
      float v1 = live ? __uint_as_float((qw[d1 >> 1] << (d1 & 1 ? 0 : 16)) & 0xffff0000u) : 0.f;
      if (FMT == KV_INT8 || FMT == KV_INT4ZP) {
        v0 *= __ldg(ks + hk * D + j * KE + d0);
        v1 *= __ldg(ks + hk * D + j * KE + d1);
      }
      const unsigned pr = pack_half2(v0, v1, BF);
      if (FMT == KV_INT4ZP) {   // the rounded queries, as the mma sees them
        const float r0 = half_to_f32(pr), r1 = half_to_f32(pr >> 16);
        zq[hh] = fmaf(r0, __ldg(kz + hk * D + j * KE + d0), fmaf(r1, __ldg(kz + hk * D + j * KE + d1), zq[hh]));
      }
      qa[p >> 1][hh][p & 1] = pr;
    }
  }
  if (FMT == KV_INT4ZP)
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) zq[hh] += __shfl_xor_sync(0xffffffffu, zq[hh], 1),
                                   zq[hh] += __shfl_xor_sync(0xffffffffu, zq[hh], 2);
  // softmax scale in log2 units, with fp8's per-head K scale
  const float sscale = scale * 1.4426950408889634f * (FMT == KV_FP8 ? __ldg(ks + hk) : 1.f);

  // A CTA takes splits blockIdx.x, + gridDim.x, ... of its row: the host's grid holds fewer CTAs than the longest
  // context's splits where the (row, kv head) pairs already fill the GPU, so a short context launches no CTA that
  // would only exit. The queries above serve every split.
  for (int s = blockIdx.x; s < nsplit; s += gridDim.x) {
    if (s != (int)blockIdx.x) __syncthreads();      // the split before is done with the shared buffers
    const int start = lo + s * ck;
    const int ntok = min(pos + 1 - start, ck);
    // the split's cache rows, one per key (keys past ntok repeat the last one: valid loads, masked scores)
    {
      const int* table = block_tables + (size_t)__ldcg(row_seq + n) * max_blocks;
      const FastDiv bdiv = fastdiv_of(block_size);
      const int nk = (ntok + 15) & ~15;
      for (int t = tid; t < nk; t += THREADS) {
        const int jj = start + min(t, ntok - 1);
        const int b = fastdiv(jj, bdiv);
        ridx[t] = (__ldcg(table + b) * nkv + hk) * block_size + (jj - b * block_size);
      }
    }
    __syncthreads();

    float acc[2 * NPV][4];                            // O fragments of the D/8 n-tiles
  #pragma unroll
    for (int t = 0; t < 2 * NPV; ++t) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.f;
    float m[2] = {neg_inf(), neg_inf()}, l[2] = {0.f, 0.f};
    const unsigned zero = 0u;

    for (int t0 = warp * 16; t0 < ntok; t0 += W * 16) {
      unsigned kw[2][NWK], vw[4][NWV];
      float kt[2][2], vt[2][2];
  #pragma unroll
      for (int nt = 0; nt < 2; ++nt)
        load_words<NWK>(kc + (size_t)ridx[t0 + nt * 8 + r] * RB + j * KB, kw[nt]);
  #pragma unroll
      for (int c = 0; c < 4; ++c)
        load_words<NWV>(vc + (size_t)ridx[t0 + (c >> 1) * 8 + 2 * j + (c & 1)] * RB + r * VB, vw[c]);
      if (FMT == KV_BFP8)
  #pragma unroll
        for (int nt = 0; nt < 2; ++nt)
  #pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int row = ridx[t0 + nt * 8 + 2 * j + e];
            kt[nt][e] = __ldcg(kts + row), vt[nt][e] = __ldcg(vts + row);
          }

      // scores of keys t0 + nt 8 + 2j + e for heads r (c[e]) and r + 8 (c[2 + e])
      float sc[2][4];
  #pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        unsigned kp[NPK];
        chunk_pairs<FMT, NWK>(kw[nt], kp);
        sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.f;
  #pragma unroll
        for (int k = 0; k < KT; ++k) {
          const unsigned a[4] = {qa[k][0][0], HI ? qa[k][1][0] : zero, qa[k][0][1], HI ? qa[k][1][1] : zero};
          mma_tc<BF>(sc[nt], a, kp[2 * k], kp[2 * k + 1]);
        }
      }
      float mx[2];
  #pragma unroll
      for (int hh = 0; hh < (HI ? 2 : 1); ++hh) {
        mx[hh] = neg_inf();
  #pragma unroll
        for (int nt = 0; nt < 2; ++nt)
  #pragma unroll
          for (int e = 0; e < 2; ++e) {
            float v = FMT == KV_INT4ZP ? sc[nt][2 * hh + e] - zq[hh] : sc[nt][2 * hh + e];
            v *= FMT == KV_BFP8 ? sscale * kt[nt][e] : sscale;
            if (t0 + nt * 8 + 2 * j + e >= ntok) v = neg_inf();
            sc[nt][2 * hh + e] = v;
            mx[hh] = fmaxf(mx[hh], v);
          }
        mx[hh] = fmaxf(mx[hh], __shfl_xor_sync(0xffffffffu, mx[hh], 1));
        mx[hh] = fmaxf(mx[hh], __shfl_xor_sync(0xffffffffu, mx[hh], 2));
      }
      unsigned pa[4];                                   // P as the A fragment of P V (keys on k)
  #pragma unroll
      for (int hh = 0; hh < (HI ? 2 : 1); ++hh) {
        const float mn = fmaxf(m[hh], mx[hh]), alpha = exp2f(m[hh] - mn);
        m[hh] = mn;
        float ps = 0.f;
  #pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
          const float p0 = exp2f(sc[nt][2 * hh] - mn), p1 = exp2f(sc[nt][2 * hh + 1] - mn);
          ps += p0 + p1;
          pa[2 * nt + hh] = FMT == KV_BFP8 ? pack_half2(p0 * vt[nt][0], p1 * vt[nt][1], BF) : pack_half2(p0, p1, BF);
        }
        l[hh] = l[hh] * alpha + ps;
  #pragma unroll
        for (int t = 0; t < 2 * NPV; ++t) acc[t][2 * hh] *= alpha, acc[t][2 * hh + 1] *= alpha;
      }
      if (!HI) pa[1] = pa[3] = 0u;

      unsigned vp[4][NPV];
  #pragma unroll
      for (int c = 0; c < 4; ++c) chunk_pairs<FMT, NWV>(vw[c], vp[c]);
  #pragma unroll
      for (int i = 0; i < NPV; ++i) {
        mma_tc<BF>(acc[2 * i], pa, __byte_perm(vp[0][i], vp[1][i], 0x5410), __byte_perm(vp[2][i], vp[3][i], 0x5410));
        mma_tc<BF>(acc[2 * i + 1], pa, __byte_perm(vp[0][i], vp[1][i], 0x7632), __byte_perm(vp[2][i], vp[3][i], 0x7632));
      }
    }
    pdl_launch();

    // the warp -> shared memory (natural-log max): heads r (and r + 8), dims n D/8 + dim_in_chunk(t), n = 2j, 2j+1
  #pragma unroll
    for (int hh = 0; hh < (HI ? 2 : 1); ++hh) {
      const int hq = r + 8 * hh;
      l[hh] += __shfl_xor_sync(0xffffffffu, l[hh], 1);
      l[hh] += __shfl_xor_sync(0xffffffffu, l[hh], 2);
      if (hq < g) {
        if (j == 0) wm[warp][hq] = m[hh] * 0.6931471805599453f, wl[warp][hq] = l[hh];
        float* ob = obuf + (warp * GMAX + hq) * D;
  #pragma unroll
        for (int t = 0; t < 2 * NPV; ++t) {
          const int d = (t & 1 ? pair_lo<FMT>(t >> 1) + pair_step<FMT>() : pair_lo<FMT>(t >> 1));
          ob[(2 * j) * VE + d] = acc[t][2 * hh];
          ob[(2 * j + 1) * VE + d] = acc[t][2 * hh + 1];
        }
      }
    }
    __syncthreads();
    // warps -> the CTA's output: rescale to the CTA's max, sum, apply V's scales
    for (int x = tid; x < g * D; x += THREADS) {
      const int i = x / D, d = x % D;
      float M = wm[0][i];
  #pragma unroll
      for (int w = 1; w < W; ++w) M = fmaxf(M, wm[w][i]);
      float lsum = 0.f, a = 0.f;
  #pragma unroll
      for (int w = 0; w < W; ++w) {
        const float f = wm[w][i] == neg_inf() ? 0.f : __expf(wm[w][i] - M);
        lsum = fmaf(wl[w][i], f, lsum);
        a = fmaf(obuf[(w * GMAX + i) * D + d], f, a);
      }
      store_split(o, po, pm, pl, (size_t)n * nh + hk * g + i, D, d, S, s, nsplit,
                  v_dequant<FMT>(a, lsum, vs, vz, hk, D, d), M, lsum);
    }
    if (nsplit == 1) return;
    merge_splits(n, hk, nh, nkv, g, D, S, nsplit, po, pm, pl, flags, o, tid, THREADS);
  }
}

#ifndef FDLITE_NVRTC   // nvcc (CI's compile check) needs them; NVRTC instantiates what name_expressions ask
#define INST(F, G, D, W) template __global__ void paged_attn<F, G, D, W>(PAGED_ATTN_PARAMS);
#define INST_TC(F, G, D, W) template __global__ void paged_attn_tc<F, G, D, W>(PAGED_ATTN_PARAMS);
#define INST_F(F) INST_TC(F, 1, 64, 4) INST_TC(F, 4, 128, 4) INST_TC(F, 8, 128, 4) INST_TC(F, 16, 128, 4) \
  INST_TC(F, 2, 64, 8) INST(F, 1, 64, 4) INST(F, 2, 16, 8) INST(F, 4, 128, 4) INST(F, 4, 128, 8) INST(F, 8, 256, 4) \
  INST(F, 16, 8, 8)
INST_F(KV_BF16)
INST_F(KV_INT8)
INST_F(KV_FP8)
INST_F(KV_BFP8)
INST_F(KV_INT4ZP)
#endif
