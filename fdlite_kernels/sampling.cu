// Token sampling, one CTA per row, with the host sampler's semantics (fdlite/engine/sampler.py):
//   penalties -> bans -> temperature -> top-k -> top-p -> min-p -> inverse-CDF draw in vocabulary order.
//   logits: f32 [R, V], rows named by meta are modified in place (penalties and bans applied).
//   prm:  f64 [S, NPRM]  (temperature (0 = greedy), top_p, min_p, u, repetition, frequency, presence, top_k)
//   meta: i32 [S, NMETA] (logits row, then offsets into ids: repetition | (id, count) pairs | banned | end)
//   ids:  i32 [N] repetition ids unique per row (they are penalized in place: a repeat would apply twice).
//   out:  i64 [S] chosen token per row.
// No sort: thresholds are found by radix select over an order-preserving 32-bit key of each float, three
// passes of 11 / 11 / 10 bits with a shared-memory histogram of weights (counts for top-k, probability mass
// in 2^-62 fixed point for top-p: integer sums are exact and order-independent, so every pass agrees with
// the one before). The draw scans the row in index order, tile by tile, with a block-wide prefix sum.
#include "common.cuh"

#ifndef THREADS
#define THREADS 1024
#endif
#define NBINS 2048                              // 11-bit digits
#define BPT (NBINS / THREADS)                   // histogram bins per thread in the digit search
#define ITEMS 4                                 // consecutive elements per thread per scan tile
#define FX_ONE 4611686018427387904.0            // 2^62: probability 1 in fixed point (sums stay < 2^63)
#define FULL 0xffffffffu
#define NEG_INF __uint_as_float(0xff800000u)   // no <math.h> under NVRTC, so no INFINITY

static_assert(THREADS % 32 == 0 && THREADS <= 1024 && NBINS % THREADS == 0, "THREADS must divide 2048");

typedef unsigned long long u64;

enum { P_TEMP, P_TOP_P, P_MIN_P, P_U, P_REP, P_FREQ, P_PRES, P_TOP_K, NPRM };
enum { M_ROW, M_REP, M_FREQ, M_BAN, M_END, NMETA };

struct Shared {
  u64 hist[NBINS];
  u64 ubuf[32];
  double dbuf[32];
  float fbuf[32];
  int ibuf[32];
  unsigned sel_digit;
  u64 sel_above, sel_at;
  int found, last;
};

// ---- keys ------------------------------------------------------------------------------------------------
// Unsigned key with the float's order (negative floats flip every bit, positive ones the sign bit). -0 is
// taken as +0: NumPy compares them equal, so they must tie here too.
__device__ __forceinline__ unsigned f2key(float f) {
  unsigned u = __float_as_uint(f);
  if ((u << 1) == 0u) u = 0u;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float key2f(unsigned k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// ---- block-wide helpers (every one ends with __syncthreads, so shared memory is free on return) ----------
// Exclusive prefix sum of v over threads in thread order; *total gets the sum over the block.
template <typename T>
__device__ T block_excl_scan(T v, T* buf, T* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  T x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const T y = __shfl_up_sync(FULL, x, o);
    if (lane >= o) x += y;
  }
  T ex = __shfl_up_sync(FULL, x, 1);
  if (lane == 0) ex = T(0);
  if (lane == 31) buf[warp] = x;
  __syncthreads();
  if (warp == 0) {
    T w = lane < nw ? buf[lane] : T(0);
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const T y = __shfl_up_sync(FULL, w, o);
      if (lane >= o) w += y;
    }
    buf[lane] = w;                                         // inclusive over warps
  }
  __syncthreads();
  if (warp > 0) ex = buf[warp - 1] + ex;
  *total = buf[nw - 1];
  __syncthreads();
  return ex;
}

// NaN beats everything (np.argmax returns the first NaN); equal values go to the lower index.
__device__ __forceinline__ bool beats(float av, int ai, float bv, int bi) {
  const bool an = av != av, bn = bv != bv;
  if (an != bn) return an;
  if (!an && av != bv) return av > bv;
  return ai < bi;
}

__device__ void block_argmax(const float* x, int V, Shared& sh, float* vmax, int* imax) {
  float bv = NEG_INF;
  int bi = 0x7fffffff;
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    const float v = x[i];
    if (beats(v, i, bv, bi)) { bv = v; bi = i; }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(FULL, bv, o);
    const int oi = __shfl_xor_sync(FULL, bi, o);
    if (beats(ov, oi, bv, bi)) { bv = ov; bi = oi; }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  if (lane == 0) { sh.fbuf[warp] = bv; sh.ibuf[warp] = bi; }
  __syncthreads();
  if (warp == 0) {
    bv = lane < nw ? sh.fbuf[lane] : NEG_INF;
    bi = lane < nw ? sh.ibuf[lane] : 0x7fffffff;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(FULL, bv, o);
      const int oi = __shfl_xor_sync(FULL, bi, o);
      if (beats(ov, oi, bv, bi)) { bv = ov; bi = oi; }
    }
    if (lane == 0) { sh.fbuf[0] = bv; sh.ibuf[0] = bi; }
  }
  __syncthreads();
  *vmax = sh.fbuf[0];
  *imax = sh.ibuf[0];
  __syncthreads();
}

// Radix select over the elements with key >= lo: the key K with W(key > K) < target <= W(key >= K), where
// W sums weight(v). Returns false when target exceeds the total weight (then nothing is written).
// *above = W(key > K), *at = W(key == K). weight must be a pure function of v (each pass recomputes it).
template <class Weight>
__device__ bool radix_select(const float* x, int V, unsigned lo, u64 target, Weight weight, Shared& sh,
                             unsigned* key, u64* above_out, u64* at_out) {
  unsigned prefix = 0u, mask = 0u;
  u64 above = 0ull, at = 0ull;
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = pass == 0 ? 21 : pass == 1 ? 10 : 0;
    const unsigned dmask = pass == 2 ? 0x3ffu : 0x7ffu;
    for (int b = threadIdx.x; b < NBINS; b += blockDim.x) sh.hist[b] = 0ull;
    __syncthreads();
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
      const float v = x[i];
      const unsigned k = f2key(v);
      if (k >= lo && (k & mask) == prefix) {
        const u64 w = weight(v);
        if (w) atomicAdd(&sh.hist[(k >> shift) & dmask], w);
      }
    }
    __syncthreads();
    // thread t owns digits NBINS-1-BPT*t down to NBINS-BPT*(t+1): thread order = descending digit order
    const int top = NBINS - 1 - BPT * threadIdx.x;
    u64 h[BPT], local = 0ull;
#pragma unroll
    for (int j = 0; j < BPT; ++j) { h[j] = sh.hist[top - j]; local += h[j]; }
    u64 total;
    u64 gt = above + block_excl_scan<u64>(local, sh.ubuf, &total);   // weight of the digits above `top`
    if (pass == 0 && target > total) return false;                    // uniform: total is block-wide
#pragma unroll
    for (int j = 0; j < BPT; ++j) {
      if (gt < target && target <= gt + h[j]) {                      // exactly one digit (h[j] > 0) qualifies
        sh.sel_digit = (unsigned)(top - j);
        sh.sel_above = gt;
        sh.sel_at = h[j];
      }
      gt += h[j];
    }
    __syncthreads();
    prefix |= sh.sel_digit << shift;
    mask |= dmask << shift;
    above = sh.sel_above;
    at = sh.sel_at;
    __syncthreads();
  }
  *key = prefix;
  *above_out = above;
  *at_out = at;
  return true;
}

// Index-order scan of weight(i, v) >= 0 in tiles of THREADS * ITEMS. Returns the total. With search, *hit
// is the first index whose inclusive prefix sum exceeds t (-1 when none does), and the scan stops there.
// The total is accumulated tile by tile in the same order whether or not it searches, so a search for
// u * total runs over the same partial sums that produced total. *last = the last index with weight > 0.
template <class Weight>
__device__ double scan_row(const float* x, int V, Weight weight, bool search, double t, Shared& sh, int* hit,
                           int* last) {
  if (threadIdx.x == 0) { sh.found = 0x7fffffff; sh.last = -1; }
  double running = 0.0;
  for (int base = 0; base < V; base += blockDim.x * ITEMS) {
    const int i0 = base + threadIdx.x * ITEMS;
    double w[ITEMS], local = 0.0;
#pragma unroll
    for (int j = 0; j < ITEMS; ++j) {
      w[j] = i0 + j < V ? weight(i0 + j, x[i0 + j]) : 0.0;
      local += w[j];
    }
    double tile;
    const double ex = block_excl_scan<double>(local, sh.dbuf, &tile);   // its syncs publish sh.found init
    if (search) {
      double c = running + ex;
#pragma unroll
      for (int j = 0; j < ITEMS; ++j) {
        c += w[j];
        if (c > t) { atomicMin(&sh.found, i0 + j); break; }
      }
    } else {
#pragma unroll
      for (int j = ITEMS - 1; j >= 0; --j)
        if (w[j] > 0.0) { atomicMax(&sh.last, i0 + j); break; }
    }
    running += tile;
    __syncthreads();
    if (sh.found != 0x7fffffff) break;                                    // uniform after the sync
  }
  *hit = sh.found == 0x7fffffff ? -1 : sh.found;
  *last = sh.last;
  __syncthreads();
  return running;
}

// ---- penalties and bans, in place, in the host's order -------------------------------------------------
__device__ void apply_penalties(float* x, int V, const double* pr, const int* me, const int* ids) {
  const float rp = (float)pr[P_REP];                  // NumPy divides float32 by the penalty cast to float32
  for (int j = me[M_REP] + threadIdx.x; j < me[M_FREQ]; j += blockDim.x) {
    const int id = ids[j];
    if (id >= 0 && id < V) {
      const float v = x[id];
      x[id] = v > 0.f ? v / rp : v * rp;
    }
  }
  __syncthreads();
  // host: x[ids] -= counts * float32(f) + float32(p), evaluated in float64 and rounded once to float32;
  // the _rn intrinsics keep the compiler from fusing into an fma, which would round differently
  const double fp = pr[P_FREQ], pp = pr[P_PRES];
  for (int j = me[M_FREQ] + 2 * threadIdx.x; j + 1 < me[M_BAN]; j += 2 * blockDim.x) {
    const int id = ids[j];
    if (id >= 0 && id < V)
      x[id] = (float)__dsub_rn((double)x[id], __dadd_rn(__dmul_rn((double)ids[j + 1], fp), pp));
  }
  __syncthreads();
  for (int j = me[M_BAN] + threadIdx.x; j < me[M_END]; j += blockDim.x) {
    const int id = ids[j];
    if (id >= 0 && id < V) x[id] = NEG_INF;
  }
  __syncthreads();
}

extern "C" __global__ void __launch_bounds__(THREADS)
sample_rows(float* logits, int R, int V, const double* __restrict__ prm, const int* __restrict__ meta,
            const int* __restrict__ ids, long long* __restrict__ out) {
  __shared__ Shared sh;
  const double* pr = prm + (size_t)blockIdx.x * NPRM;
  const int* me = meta + (size_t)blockIdx.x * NMETA;
  const int row = me[M_ROW];
  if (row < 0 || row >= R) {                                    // uniform per block; the launcher's packer
    if (threadIdx.x == 0) out[blockIdx.x] = -1;                 // never writes such a row
    return;
  }
  float* x = logits + (size_t)row * V;                          // not __restrict__/const: written, then read
  apply_penalties(x, V, pr, me, ids);

  float vmax;
  int imax;
  block_argmax(x, V, sh, &vmax, &imax);
  const double temp = pr[P_TEMP];
  if (!(temp > 0.0) || vmax == NEG_INF) {
    // greedy: np.argmax. Every token banned: the host's draw turns into NaNs and ends at V - 1.
    if (threadIdx.x == 0) out[blockIdx.x] = temp > 0.0 ? V - 1 : imax;
    return;
  }
  const double smax = (double)vmax / temp;

  // top-k: the k-th largest value; values below it drop, ties with it stay (as x < kth in the host)
  unsigned kkey = 0u;
  const double top_k = pr[P_TOP_K];
  if (top_k > 0.0 && top_k < (double)V) {
    u64 a, b;
    radix_select(x, V, 0u, (u64)top_k, [](float) { return 1ull; }, sh, &kkey, &a, &b);
  }

  // softmax normaliser over the kept tokens, in float64 as the host
  double z = 0.0;
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    const float v = x[i];
    if (f2key(v) >= kkey) z += exp((double)v / temp - smax);
  }
  block_excl_scan<double>(z, sh.dbuf, &z);
  auto prob = [=](float v) { return exp((double)v / temp - smax) / z; };

  // top-p: the smallest set of the most probable tokens with mass >= top_p. Its least probable value P
  // may be tied; the host's stable sort keeps the lowest indices of a tie, so keep ties up to index tie_last.
  unsigned pkey = kkey;
  int tie_last = V;
  const double top_p = pr[P_TOP_P];
  if (top_p < 1.0) {
    const u64 target = (u64)ceil(top_p * FX_ONE);
    auto fx = [=](float v) { return (u64)(prob(v) * FX_ONE); };
    unsigned key;
    u64 above, at;
    if (target > 0ull && radix_select(x, V, kkey, target, fx, sh, &key, &above, &at)) {
      pkey = key;
      const u64 unit = fx(key2f(key));                         // the same weight for every tied token
      const u64 n_eq = unit ? at / unit : 0ull, need = unit ? (target - above + unit - 1) / unit : 0ull;
      if (need < n_eq) {                                       // index of the need-th tie
        int hit, last;
        auto tie = [=](int, float v) { return f2key(v) == key ? 1.0 : 0.0; };
        scan_row(x, V, tie, true, (double)need - 0.5, sh, &hit, &last);
        if (hit >= 0) tie_last = hit;
      }
    }
  }

  // min-p against the largest probability (1 / z: the max token has exp(0) = 1), then the draw
  const double min_p = pr[P_MIN_P];
  const double thr = min_p > 0.0 ? min_p * (1.0 / z) : 0.0;
  auto kept = [=](int i, float v) {
    const unsigned k = f2key(v);
    if (k < pkey || (k == pkey && i > tie_last)) return 0.0;
    const double p = prob(v);
    return p < thr ? 0.0 : p;
  };
  int hit, last, unused;
  const double total = scan_row(x, V, kept, false, 0.0, sh, &hit, &last);
  int tok = V - 1;                                              // total 0 or NaN: where the host ends too
  if (total > 0.0) {
    scan_row(x, V, kept, true, pr[P_U] * total, sh, &hit, &unused);
    tok = hit >= 0 ? hit : last;                                // rounding left u * total past the last sum
  }
  if (threadIdx.x == 0) out[blockIdx.x] = tok;
}
