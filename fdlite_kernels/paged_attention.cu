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

template <int FMT, int GMAX>
__global__ void __launch_bounds__(THREADS) paged_attn(PAGED_ATTN_PARAMS) {
  extern __shared__ float smem[];
  const int s = blockIdx.x, hk = blockIdx.y, n = blockIdx.z, tid = threadIdx.x;
  const int g = nh / nkv;
  const int pos = row_pos[n];
  const int lo = window > 0 ? max(0, pos - window + 1) : 0;
  const int start = lo + s * chunk;
  if (start > pos) return;                                   // this split has no keys for this row
  const int ntok = min(pos + 1 - start, chunk);
  const int* table = block_tables + (size_t)row_seq[n] * max_blocks;
  const int rb = kv_row_bytes<FMT>(D);
  float* qs = smem;                       // [g][D] queries, pre-scaled
  float* sc = smem + GMAX * D;            // [g][chunk] scores, then probabilities
  float* red = sc + GMAX * chunk;         // [g][THREADS] V partial sums
  for (int i = tid; i < g * D; i += THREADS)
    qs[i] = bf16_to_f32(q[((size_t)n * nh + hk * g + i / D) * D + i % D]) * scale;
  __syncthreads();

  // pass 1: scores. A thread takes whole keys: it decodes the key's row one 32-bit word at a time and
  // dots it with every query head of the group.
  constexpr int EPW = kv_per_word<FMT>();
  for (int t = tid; t < ntok; t += THREADS) {
    const int j = start + t;
    const size_t row = ((size_t)table[j / block_size] * nkv + hk) * block_size + j % block_size;
    const unsigned* kw = reinterpret_cast<const unsigned*>(kc + row * rb);
    const float tok = FMT == KV_BFP8 ? kts[row] : 0.f;
    float acc[GMAX];
#pragma unroll
    for (int i = 0; i < GMAX; ++i) acc[i] = 0.f;
    for (int w = 0; w < rb / 4; ++w) {
      float kf[EPW];
      kv_decode_word<FMT>(__ldg(kw + w), hk, D, w * EPW, ks, kz, tok, kf);
#pragma unroll
      for (int i = 0; i < GMAX; ++i) {
        if (i < g) {
#pragma unroll
          for (int e = 0; e < EPW; ++e) acc[i] = fmaf(qs[i * D + w * EPW + e], kf[e], acc[i]);
        }
      }
    }
#pragma unroll
    for (int i = 0; i < GMAX; ++i)
      if (i < g) sc[i * chunk + t] = acc[i];
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

  // pass 2: P @ V. Threads map to channels d; with D < THREADS, TG = THREADS / D groups split the keys.
  const int DW = min(D, THREADS), TG = THREADS / DW;
  const int d0 = tid % DW, tg = tid / DW;
  for (int dd = d0; dd < D; dd += THREADS) {
    float acc[GMAX];
#pragma unroll
    for (int i = 0; i < GMAX; ++i) acc[i] = 0.f;
    for (int t = tg; t < ntok; t += TG) {
      const int j = start + t;
      const size_t row = ((size_t)table[j / block_size] * nkv + hk) * block_size + j % block_size;
      const float v = kv_decode_one<FMT>(vc + row * rb, hk, D, dd, vs, vz, FMT == KV_BFP8 ? vts[row] : 0.f);
#pragma unroll
      for (int i = 0; i < GMAX; ++i)
        if (i < g) acc[i] = fmaf(sc[i * chunk + t], v, acc[i]);
    }
    if (TG > 1) {
#pragma unroll
      for (int i = 0; i < GMAX; ++i)
        if (i < g) red[i * THREADS + tid] = acc[i];
      __syncthreads();
      if (tg == 0) {
        for (int i = 0; i < g; ++i) {
          float a = 0.f;
          for (int r = 0; r < TG; ++r) a += red[i * THREADS + r * DW + d0];
          po[(((size_t)n * nh + hk * g + i) * S + s) * D + dd] = a;
        }
      }
    } else {
#pragma unroll
      for (int i = 0; i < GMAX; ++i)
        if (i < g) po[(((size_t)n * nh + hk * g + i) * S + s) * D + dd] = acc[i];
    }
  }
}

// Merge the splits of each (row, head): o = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s.
__global__ void __launch_bounds__(THREADS) paged_attn_merge(const float* __restrict__ po, const float* __restrict__ pm,
                                                             const float* __restrict__ pl, const int* __restrict__ row_pos,
                                                             int nh, int D, int window, int chunk, int S,
                                                             bf16_t* __restrict__ o) {
  const int n = blockIdx.x / nh;
  const size_t base = (size_t)blockIdx.x * S;
  const int pos = row_pos[n];
  const int lo = window > 0 ? max(0, pos - window + 1) : 0;
  const int ns = min(S, (pos - lo) / chunk + 1);              // splits that held keys
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

#define INST(F, G) template __global__ void paged_attn<F, G>(PAGED_ATTN_PARAMS);
#define INST_F(F) INST(F, 1) INST(F, 2) INST(F, 4) INST(F, 8) INST(F, 16)
INST_F(KV_BF16)
INST_F(KV_INT8)
INST_F(KV_FP8)
INST_F(KV_BFP8)
INST_F(KV_INT4ZP)
