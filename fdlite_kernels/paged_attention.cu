// Paged attention over every KV format (codecs in kv_codec.cuh), dequantizing in registers, split-K over the
// context (flash-decoding): pass 1 gives each (query row, kv head, split) CTA a chunk of keys and writes an
// unnormalized partial output with its running max and sum; pass 2 merges a row's splits.
//
// Each query row n belongs to sequence row_seq[n] and sits at position row_pos[n]; it sees keys
// j in [max(0, pos - window + 1), pos] (window = 0: all of [0, pos]), read through the sequence's block table.
// Decode rows (one per sequence) and prefill chunks (several rows of one sequence) take the same path; the
// rows of one sequence read the same keys, which then come from L2.
//
//   q: bf16 [N, nh, D]; block_tables: i32 [B, max_blocks]; row_seq, row_pos: i32 [N]
//   kc, vc: the layer's cache; kts, vts: BFP8 token scales; ks, vs, kz, vz: read-side scales (kv_codec.cuh)
//   po: f32 [N, nh, S, D], pm, pl: f32 [N, nh, S] (S splits of `chunk` keys); o: bf16 [N, nh, D]
// GMAX >= nh / nkv query heads share a kv head (GQA): a CTA scores all of them against each key it reads.
// D in {8, 16, 32, 64, 128, 256} (a row is a whole number of 32-bit words; V maps threads to channels).
#include "kv_codec.cuh"

#define THREADS 128

#define PAGED_ATTN_PARAMS                                                                                     \
  const bf16_t* __restrict__ q, int nh, int nkv, int D, const u8* __restrict__ kc, const u8* __restrict__ vc, \
      const float* __restrict__ kts, const float* __restrict__ vts, const float* __restrict__ ks,             \
      const float* __restrict__ vs, const float* __restrict__ kz, const float* __restrict__ vz,               \
      const int* __restrict__ block_tables, int max_blocks, int block_size, const int* __restrict__ row_seq,  \
      const int* __restrict__ row_pos, int window, float scale, int chunk, int S, float* __restrict__ po,     \
      float* __restrict__ pm, float* __restrict__ pl

// Keys per split for a row that sees `visible` keys: the smallest power of two from 32 up to `cmax` (the host's
// chunk for the longest context of the grid) whose S splits cover them. The grid is sized for the longest context
// (a captured graph serves every length up to it), so a short context spreads over a few short splits instead of
// sitting in one long one (at 100 keys with cmax = 256: 4 splits of 32 keys, each key read by 4 threads).
__device__ __forceinline__ int row_chunk(int visible, int S, int cmax) {
  int c = 32;
  while (c < cmax && c * S < visible) c <<= 1;
  return c;
}

template <int FMT, int GMAX>
__global__ void __launch_bounds__(THREADS) paged_attn(PAGED_ATTN_PARAMS) {
  extern __shared__ float smem[];
  const int s = blockIdx.x, hk = blockIdx.y, n = blockIdx.z, tid = threadIdx.x;
  pdl_launch();
  pdl_wait();                                   // launched with PDL: before the first read (and any return)
  const int g = nh / nkv;
  const int pos = row_pos[n];
  const int lo = window > 0 ? max(0, pos - window + 1) : 0;
  const int ck = row_chunk(pos + 1 - lo, S, chunk);          // this row's keys per split (<= chunk: smem's stride)
  const int start = lo + s * ck;
  if (start > pos) return;                                   // this split has no keys for this row
  const int ntok = min(pos + 1 - start, ck);
  const int* table = block_tables + (size_t)row_seq[n] * max_blocks;
  const int rb = kv_row_bytes<FMT>(D);
  float* qs = smem;                       // [g][D] queries, pre-scaled
  float* sc = smem + GMAX * D;            // [g][chunk] scores, then probabilities
  float* red = sc + GMAX * chunk;         // [g][2][THREADS] V partial sums
#pragma unroll 4
  for (int i = tid; i < g * D; i += THREADS)
    qs[i] = bf16_to_f32(q[((size_t)n * nh + hk * g + i / D) * D + i % D]) * scale;
  __syncthreads();

  // pass 1: scores. tpk adjacent threads share a key (chunk < THREADS leaves threads to spare at decode),
  // each dotting a contiguous span of the key's words with every query head of the group; their loads are
  // issued together (16 bytes each where the span allows) so one memory latency covers the whole row.
  constexpr int EPW = kv_per_word<FMT>();
  const int nw = rb / 4;
  const int tpk = min(max(THREADS / ck, 1), nw);             // powers of two: divides nw and 32
  const int span = nw / tpk, part = tid % tpk, kpi = THREADS / tpk;
  for (int base = 0; base < ntok; base += kpi) {             // uniform over the block: shuffles below are safe
    const int t = base + tid / tpk;
    float acc[GMAX];
#pragma unroll
    for (int i = 0; i < GMAX; ++i) acc[i] = 0.f;
    if (t < ntok) {
      const int j = start + t;
      const size_t row = ((size_t)table[j / block_size] * nkv + hk) * block_size + j % block_size;
      const unsigned* kw = reinterpret_cast<const unsigned*>(kc + row * rb) + part * span;
      const float tok = FMT == KV_BFP8 ? kts[row] : 0.f;
      const float* qp = qs + part * span * EPW;
      if ((span & 3) == 0) {
        const uint4* k4 = reinterpret_cast<const uint4*>(kw);
        for (int v0 = 0; v0 < span / 4; v0 += 8) {
          uint4 buf[8];
#pragma unroll
          for (int u = 0; u < 8; ++u)
            if (v0 + u < span / 4) buf[u] = __ldg(k4 + v0 + u);
#pragma unroll
          for (int u = 0; u < 8; ++u) {
            if (v0 + u < span / 4) {
              const unsigned ws[4] = {buf[u].x, buf[u].y, buf[u].z, buf[u].w};
#pragma unroll
              for (int c = 0; c < 4; ++c) {
                const int w = 4 * (v0 + u) + c;
                float kf[EPW];
                kv_decode_word<FMT>(ws[c], hk, D, (part * span + w) * EPW, ks, kz, tok, kf);
#pragma unroll
                for (int i = 0; i < GMAX; ++i)
                  if (i < g) {
#pragma unroll
                    for (int e = 0; e < EPW; ++e) acc[i] = fmaf(qp[i * D + w * EPW + e], kf[e], acc[i]);
                  }
              }
            }
          }
        }
      } else {
#pragma unroll 4
        for (int w = 0; w < span; ++w) {
          float kf[EPW];
          kv_decode_word<FMT>(__ldg(kw + w), hk, D, (part * span + w) * EPW, ks, kz, tok, kf);
#pragma unroll
          for (int i = 0; i < GMAX; ++i)
            if (i < g) {
#pragma unroll
              for (int e = 0; e < EPW; ++e) acc[i] = fmaf(qp[i * D + w * EPW + e], kf[e], acc[i]);
            }
        }
      }
    }
    for (int o = 1; o < tpk; o <<= 1)
#pragma unroll
      for (int i = 0; i < GMAX; ++i) acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], o);
    if (t < ntok && part == 0) {
#pragma unroll
      for (int i = 0; i < GMAX; ++i)
        if (i < g) sc[i * chunk + t] = acc[i];
    }
  }
  __syncthreads();

  // softmax pieces per head: a warp per head
  const int lane = tid & 31, wid = tid >> 5;
  for (int i = wid; i < g; i += THREADS / 32) {
    float m = neg_inf();
    for (int t = lane; t < ntok; t += 32) m = fmaxf(m, sc[i * chunk + t]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    float l = 0.f;
    for (int t = lane; t < ntok; t += 32) {
      const float p = __expf(sc[i * chunk + t] - m);
      sc[i * chunk + t] = p;
      l += p;
    }
    l = warp_sum(l);
    if (lane == 0) {
      const size_t k = ((size_t)n * nh + hk * g + i) * S + s;
      pm[k] = m;
      pl[k] = l;
    }
  }
  __syncthreads();

  // pass 2: P @ V. A thread owns a channel pair (D / 2 <= THREADS pairs); TG = THREADS / (D / 2) groups split
  // the keys, 16 keys' loads in flight per thread at a time.
  const int UW = D / 2, TG = THREADS / UW;
  const int u0 = tid % UW, tg = tid / UW, d = 2 * u0;
  float acc[GMAX][2];
#pragma unroll
  for (int i = 0; i < GMAX; ++i) acc[i][0] = acc[i][1] = 0.f;
  if (tg < TG) {
    for (int t0 = tg; t0 < ntok; t0 += 16 * TG) {
      float v[16][2];
#pragma unroll
      for (int u = 0; u < 16; ++u) {
        const int t = t0 + u * TG;
        v[u][0] = v[u][1] = 0.f;
        if (t < ntok) {
          const int j = start + t;
          const size_t row = ((size_t)table[j / block_size] * nkv + hk) * block_size + j % block_size;
          kv_decode_pair<FMT>(vc + row * rb, hk, D, d, vs, vz, FMT == KV_BFP8 ? vts[row] : 0.f, v[u]);
        }
      }
#pragma unroll
      for (int u = 0; u < 16; ++u) {
        const int t = t0 + u * TG;
        if (t < ntok) {
#pragma unroll
          for (int i = 0; i < GMAX; ++i)
            if (i < g) {
              const float p = sc[i * chunk + t];
              acc[i][0] = fmaf(p, v[u][0], acc[i][0]);
              acc[i][1] = fmaf(p, v[u][1], acc[i][1]);
            }
        }
      }
    }
  }
  const size_t ob = ((size_t)n * nh + hk * g) * S + s;       // (row n, head hk g + i, split s) = ob + i S
  if (TG > 1) {
#pragma unroll
    for (int i = 0; i < GMAX; ++i)
      if (i < g) {
        red[(2 * i) * THREADS + tid] = acc[i][0];
        red[(2 * i + 1) * THREADS + tid] = acc[i][1];
      }
    __syncthreads();
    if (tg == 0) {
      for (int i = 0; i < g; ++i) {
        float a0 = 0.f, a1 = 0.f;
        for (int r = 0; r < TG; ++r) {
          a0 += red[(2 * i) * THREADS + r * UW + u0];
          a1 += red[(2 * i + 1) * THREADS + r * UW + u0];
        }
        po[(ob + (size_t)i * S) * D + d] = a0;
        po[(ob + (size_t)i * S) * D + d + 1] = a1;
      }
    }
  } else if (tg == 0) {
#pragma unroll
    for (int i = 0; i < GMAX; ++i)
      if (i < g) {
        po[(ob + (size_t)i * S) * D + d] = acc[i][0];
        po[(ob + (size_t)i * S) * D + d + 1] = acc[i][1];
      }
  }
}

// Merge the splits of each (row, head): o = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s.
__global__ void __launch_bounds__(THREADS) paged_attn_merge(const float* __restrict__ po, const float* __restrict__ pm,
                                                             const float* __restrict__ pl, const int* __restrict__ row_pos,
                                                             int nh, int D, int window, int chunk, int S,
                                                             bf16_t* __restrict__ o) {
  pdl_launch();
  pdl_wait();
  const int n = blockIdx.x / nh;
  const size_t base = (size_t)blockIdx.x * S;
  const int pos = row_pos[n];
  const int lo = window > 0 ? max(0, pos - window + 1) : 0;
  const int ns = min(S, (pos - lo) / row_chunk(pos + 1 - lo, S, chunk) + 1);   // splits that held keys
  float M = neg_inf();
  for (int s = 0; s < ns; ++s) M = fmaxf(M, pm[base + s]);
  float L = 0.f;
  for (int s = 0; s < ns; ++s) L += __expf(pm[base + s] - M) * pl[base + s];
  const float inv = L > 0.f ? 1.f / L : 0.f;
  for (int d = threadIdx.x; d < D; d += THREADS) {
    float a = 0.f;
    for (int s = 0; s < ns; ++s) a += __expf(pm[base + s] - M) * po[(base + s) * D + d];
    o[(size_t)blockIdx.x * D + d] = f32_to_bf16(a * inv);
  }
}

#ifndef FDLITE_NVRTC   // nvcc (CI's compile check) needs them; NVRTC instantiates what name_expressions ask
#define INST(F, G) template __global__ void paged_attn<F, G>(PAGED_ATTN_PARAMS);
#define INST_F(F) INST(F, 1) INST(F, 2) INST(F, 4) INST(F, 8) INST(F, 16)
INST_F(KV_BF16)
INST_F(KV_INT8)
INST_F(KV_FP8)
INST_F(KV_BFP8)
INST_F(KV_INT4ZP)
#endif
