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
  __shared__ int last;
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
          float v = acc[i][u][e];
          if (FMT == KV_INT8) v *= __ldg(vs + hk * D + d);
          if (FMT == KV_FP8) v *= __ldg(vs + hk);
          if (FMT == KV_INT4ZP) v = (v - __ldg(vz + hk * D + d) * l[i]) * __ldg(vs + hk * D + d);
          atomicAdd(&obuf[i * D + d], v * f);
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
    const size_t h = (size_t)n * nh + hk * g + i;
    if (nsplit == 1) {
      o[h * D + d] = f32_to_bf16(obuf[x] / lsum);
    } else {
      po[(h * S + s) * D + d] = obuf[x];
      if (d == 0) pm[h * S + s] = M, pl[h * S + s] = lsum;
    }
  }
  if (nsplit == 1) return;

  // the last split of (n, hk) to arrive merges: o = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s
  __threadfence();
  __syncthreads();
  if (tid == 0) last = atomicAdd(flags + (size_t)n * nkv + hk, 1) == nsplit - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  for (int x = tid; x < g * D; x += THREADS) {
    const int i = x / D, d = x % D;
    const size_t h = (size_t)n * nh + hk * g + i;
    float M = neg_inf(), lsum = 0.f, a = 0.f;
#pragma unroll 4
    for (int r = 0; r < nsplit; ++r) {           // an online merge: one pass over the splits' loads
      const float mr = __ldcg(pm + h * S + r), lr = __ldcg(pl + h * S + r), orr = __ldcg(po + (h * S + r) * D + d);
      const float mn = fmaxf(M, mr), fa = __expf(M - mn), fb = __expf(mr - mn);
      lsum = lsum * fa + lr * fb;
      a = a * fa + orr * fb;
      M = mn;
    }
    o[h * D + d] = f32_to_bf16(a / lsum);
  }
  if (tid == 0) flags[(size_t)n * nkv + hk] = 0;  // ready for the next launch (and graph replay)
}

#ifndef FDLITE_NVRTC   // nvcc (CI's compile check) needs them; NVRTC instantiates what name_expressions ask
#define INST(F, G, D, W) template __global__ void paged_attn<F, G, D, W>(PAGED_ATTN_PARAMS);
#define INST_F(F) INST(F, 1, 64, 4) INST(F, 2, 16, 8) INST(F, 4, 128, 4) INST(F, 4, 128, 8) INST(F, 8, 256, 4) \
  INST(F, 16, 8, 8)
INST_F(KV_BF16)
INST_F(KV_INT8)
INST_F(KV_FP8)
INST_F(KV_BFP8)
INST_F(KV_INT4ZP)
#endif
