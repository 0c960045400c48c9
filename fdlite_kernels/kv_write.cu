// Fused attention prologue of one layer: per token, take its q/k/v heads from the QKV GEMM's output, apply
// the optional per-head RMSNorm (Qwen3's q_norm / k_norm) and RoPE to q and k, write q out, and quantize k
// and v into the paged cache (quantize-on-write; codecs in kv_codec.cuh).
//
//   qkv:   bf16 [N, (nh + 2 nkv) D] row-major: q heads, then k heads, then v heads
//   cos_t, sin_t: f32 [T, D/2] rope tables (attention scaling folded in); rope_idx: i32 [N] row of each token
//   slots: i32 [N] flat cache slot (block * block_size + offset)
//   qn, kn: bf16 [D] norm weights or null (has_norm = 0); eps: the norm's epsilon
//   interleaved: 0 = pairs (i, i + D/2) (HF / Llama), 1 = pairs (2i, 2i + 1) (GPT-J / ERNIE)
//   q_out: bf16 [N, nh, D]; kc, vc: the layer's cache (format FMT); kts, vts: BFP8 token scales or null
//   kqs, vqs, kz, vz: write-side scales (see kv_codec.cuh)
// One warp per (token, head); a lane owns the rotary pairs p = lane, lane + 32, ... (D <= 256, D even).
// Each value is rounded to bf16 after the norm and after the rotation, as the twins (which compute those
// steps on bf16 arrays) do; the quantizer sees the bf16 value.
#include "kv_codec.cuh"

#define WARPS 4
#define MAX_PAIRS 4   // D <= 256

#define ROPE_KV_WRITE_PARAMS                                                                                \
  const bf16_t* __restrict__ qkv, int N, int nh, int nkv, int D, const float* __restrict__ cos_t,             \
      const float* __restrict__ sin_t, const int* __restrict__ rope_idx, const int* __restrict__ slots,       \
      const bf16_t* __restrict__ qn, const bf16_t* __restrict__ kn, int has_norm, float eps, int interleaved, \
      bf16_t* __restrict__ q_out, u8* __restrict__ kc, u8* __restrict__ vc, float* __restrict__ kts,          \
      float* __restrict__ vts, const float* __restrict__ kqs, const float* __restrict__ vqs,                  \
      const float* __restrict__ kz, const float* __restrict__ vz, int round_to_int, int block_size

template <int FMT>
__global__ void __launch_bounds__(32 * WARPS) rope_kv_write(ROPE_KV_WRITE_PARAMS) {
  __shared__ u8 nib[WARPS][256];              // int4: a warp's codes, packed two per byte after a sync
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  pdl_launch();
  const int pz = pdl_wait();                  // launched with PDL: nothing is read before the QKV GEMV is done
  qkv += pz, rope_idx += pz, slots += pz;
  const int heads = nh + 2 * nkv;
  const long item = (long)blockIdx.x * WARPS + wid;
  if (item >= (long)N * heads) return;        // whole warps exit together: the syncs below are warp-level
  const int n = (int)(item / heads), h = (int)(item % heads);
  const int P = D / 2;
  const bf16_t* src = qkv + (size_t)n * heads * D + (size_t)h * D;
  const int kind = h < nh ? 0 : (h < nh + nkv ? 1 : 2);   // q, k, v

  float a[MAX_PAIRS], b[MAX_PAIRS];
  int ia[MAX_PAIRS], ib[MAX_PAIRS];
#pragma unroll
  for (int j = 0; j < MAX_PAIRS; ++j) {
    const int p = lane + 32 * j;
    ia[j] = interleaved ? 2 * p : p;
    ib[j] = interleaved ? 2 * p + 1 : p + P;
    a[j] = p < P ? bf16_to_f32(__ldcg(src + ia[j])) : 0.f;      // coherent: the QKV GEMV's output (PDL)
    b[j] = p < P ? bf16_to_f32(__ldcg(src + ib[j])) : 0.f;
  }
  if (kind < 2) {
    if (has_norm) {
      float ss = 0.f;
#pragma unroll
      for (int j = 0; j < MAX_PAIRS; ++j) ss += a[j] * a[j] + b[j] * b[j];
      ss = warp_sum(ss);
      const float r = sqrtf(ss / (float)D + eps);
      const bf16_t* w = kind == 0 ? qn : kn;
#pragma unroll
      for (int j = 0; j < MAX_PAIRS; ++j) {
        if (lane + 32 * j < P) {
          a[j] = bf16_to_f32(f32_to_bf16(a[j] / r * bf16_to_f32(w[ia[j]])));
          b[j] = bf16_to_f32(f32_to_bf16(b[j] / r * bf16_to_f32(w[ib[j]])));
        }
      }
    }
    const float* ct = cos_t + (size_t)__ldcg(rope_idx + n) * P;
    const float* st = sin_t + (size_t)__ldcg(rope_idx + n) * P;
#pragma unroll
    for (int j = 0; j < MAX_PAIRS; ++j) {
      const int p = lane + 32 * j;
      if (p < P) {
        const float c = ct[p], s = st[p];
        const float x1 = a[j], x2 = b[j];
        a[j] = bf16_to_f32(f32_to_bf16(x1 * c - x2 * s));
        b[j] = bf16_to_f32(f32_to_bf16(x2 * c + x1 * s));
      }
    }
  }
  if (kind == 0) {
    bf16_t* dst = q_out + ((size_t)n * nh + h) * D;
#pragma unroll
    for (int j = 0; j < MAX_PAIRS; ++j) {
      if (lane + 32 * j < P) {
        dst[ia[j]] = f32_to_bf16(a[j]);
        dst[ib[j]] = f32_to_bf16(b[j]);
      }
    }
    return;
  }
  // k or v: into the cache at the token's slot
  const int hk = kind == 1 ? h - nh : h - nh - nkv;
  const int slot = __ldcg(slots + n);
  const size_t row = ((size_t)(slot / block_size) * nkv + hk) * block_size + slot % block_size;
  u8* cache = kind == 1 ? kc : vc;
  const float* qs = kind == 1 ? kqs : vqs;
  const float* z = kind == 1 ? kz : vz;
  float amax = 0.f;
  if (FMT == KV_BFP8) {
#pragma unroll
    for (int j = 0; j < MAX_PAIRS; ++j) amax = fmaxf(amax, fmaxf(fabsf(a[j]), fabsf(b[j])));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    if (lane == 0) (kind == 1 ? kts : vts)[row] = amax / 448.f;
  }
#pragma unroll
  for (int j = 0; j < MAX_PAIRS; ++j) {
    if (lane + 32 * j >= P) continue;
    const int e[2] = {ia[j], ib[j]};
    const float x[2] = {a[j], b[j]};
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      if (FMT == KV_BF16) {
        reinterpret_cast<bf16_t*>(cache)[row * D + e[t]] = f32_to_bf16(x[t]);
      } else if (FMT == KV_INT4ZP) {
        nib[wid][e[t]] = (u8)kv_encode<FMT>(x[t], hk, D, e[t], qs, z, amax, round_to_int);
      } else {
        cache[row * D + e[t]] = (u8)kv_encode<FMT>(x[t], hk, D, e[t], qs, z, amax, round_to_int);
      }
    }
  }
  if (FMT == KV_INT4ZP) {
    __syncwarp();
    for (int j = lane; j < P; j += 32) cache[row * P + j] = (u8)(nib[wid][2 * j] | (nib[wid][2 * j + 1] << 4));
  }
}

#ifndef FDLITE_NVRTC   // nvcc (CI's compile check) needs them; NVRTC instantiates what name_expressions ask
template __global__ void rope_kv_write<KV_BF16>(ROPE_KV_WRITE_PARAMS);
template __global__ void rope_kv_write<KV_INT8>(ROPE_KV_WRITE_PARAMS);
template __global__ void rope_kv_write<KV_FP8>(ROPE_KV_WRITE_PARAMS);
template __global__ void rope_kv_write<KV_BFP8>(ROPE_KV_WRITE_PARAMS);
template __global__ void rope_kv_write<KV_INT4ZP>(ROPE_KV_WRITE_PARAMS);
#endif
