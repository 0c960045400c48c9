// Per-format element codecs of the paged KV cache (fdlite/kv/<format>.py are the NumPy twins).
//
// Storage per layer: K and V as (num_blocks, kv_heads, block_size, head_dim) elements; a token's row of one
// kv head is contiguous. Format codes (template parameter FMT) and what the scale pointers hold:
//   KV_BF16   0  bf16 elements                                   no scales
//   KV_INT8   1  int8, per channel c = h * D + d                 write: 127 / A_c        read: A_c / 127
//   KV_FP8    2  e4m3fn bits, per kv head h                      write: 448 / A_h        read: A_h / 448
//   KV_BFP8   3  e4m3fn bits, per (token, kv head) scale A / 448 in a float32 (num_blocks, kv_heads, block_size)
//                cache beside the elements (written by kv_write, read by attention)
//   KV_INT4ZP 4  nibbles q + 8 (q in [-7, 7]), element 2j low / 2j+1 high nibble of byte j; per channel
//                step s_c and zero point zp_c:  q = clip(rint(x / s + zp), -7, 7), x^ = (q - zp) s
// The write-side constants are precomputed on the host in float32 exactly as the twins compute them, so
// codes match the twins bit for bit (same products, same round-half-even).
#pragma once
#include "common.cuh"

#define KV_BF16 0
#define KV_INT8 1
#define KV_FP8 2
#define KV_BFP8 3
#define KV_INT4ZP 4

// Bytes of one row of D elements.
template <int FMT>
__host__ __device__ __forceinline__ int kv_row_bytes(int D) {
  return FMT == KV_BF16 ? 2 * D : (FMT == KV_INT4ZP ? D / 2 : D);
}

// Elements held by one 32-bit word of a row.
template <int FMT>
__host__ __device__ __forceinline__ constexpr int kv_per_word() {
  return FMT == KV_BF16 ? 2 : (FMT == KV_INT4ZP ? 8 : 4);
}

// Decode the word w holding elements d0 .. d0 + kv_per_word - 1 of a row of kv head h.
// s: per-channel (INT8: A/127, INT4ZP: step) or per-head (FP8: A/448) read scales; z: INT4ZP zero points;
// tok: the token's scale (BFP8).
template <int FMT>
__device__ __forceinline__ void kv_decode_word(unsigned w, int h, int D, int d0, const float* __restrict__ s,
                                               const float* __restrict__ z, float tok, float* out) {
  if (FMT == KV_BF16) {
    out[0] = __uint_as_float(w << 16);
    out[1] = __uint_as_float(w & 0xffff0000u);
  } else if (FMT == KV_INT8) {
#pragma unroll
    for (int i = 0; i < 4; ++i) out[i] = (float)(signed char)((w >> (8 * i)) & 0xffu) * __ldg(s + h * D + d0 + i);
  } else if (FMT == KV_FP8) {
    const float sh = __ldg(s + h);
#pragma unroll
    for (int i = 0; i < 4; ++i) out[i] = e4m3_to_f32((w >> (8 * i)) & 0xffu) * sh;
  } else if (FMT == KV_BFP8) {
#pragma unroll
    for (int i = 0; i < 4; ++i) out[i] = e4m3_to_f32((w >> (8 * i)) & 0xffu) * tok;
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int c = h * D + d0 + i;
      out[i] = ((float)((int)((w >> (4 * i)) & 0xfu) - 8) - __ldg(z + c)) * __ldg(s + c);
    }
  }
}

// Decode one element d of a row (the V side reads one element per thread).
template <int FMT>
__device__ __forceinline__ float kv_decode_one(const u8* __restrict__ row, int h, int D, int d,
                                               const float* __restrict__ s, const float* __restrict__ z, float tok) {
  if (FMT == KV_BF16) return bf16_to_f32(reinterpret_cast<const bf16_t*>(row)[d]);
  if (FMT == KV_INT8) return (float)(signed char)row[d] * __ldg(s + h * D + d);
  if (FMT == KV_FP8) return e4m3_to_f32(row[d]) * __ldg(s + h);
  if (FMT == KV_BFP8) return e4m3_to_f32(row[d]) * tok;
  const int nib = (row[d >> 1] >> ((d & 1) * 4)) & 0xf;
  const int c = h * D + d;
  return ((float)(nib - 8) - __ldg(z + c)) * __ldg(s + c);
}

// Decode channels d, d + 1 (d even) of a row: the V side's unit (bf16: a word, int8/fp8: two bytes, int4: a
// byte), so neighbouring threads read neighbouring bytes and every format fits two accumulators per head.
template <int FMT>
__device__ __forceinline__ void kv_decode_pair(const u8* __restrict__ row, int h, int D, int d,
                                               const float* __restrict__ s, const float* __restrict__ z, float tok,
                                               float* out) {
  if (FMT == KV_BF16) {
    const unsigned w = __ldg(reinterpret_cast<const unsigned*>(row) + (d >> 1));
    out[0] = __uint_as_float(w << 16);
    out[1] = __uint_as_float(w & 0xffff0000u);
  } else if (FMT == KV_INT4ZP) {
    const unsigned b = __ldg(row + (d >> 1));
    const int c = h * D + d;
    out[0] = ((float)((int)(b & 0xfu) - 8) - __ldg(z + c)) * __ldg(s + c);
    out[1] = ((float)((int)(b >> 4) - 8) - __ldg(z + c + 1)) * __ldg(s + c + 1);
  } else {
    const unsigned p = __ldg(reinterpret_cast<const unsigned short*>(row) + (d >> 1));
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const unsigned b = (p >> (8 * i)) & 0xffu;
      if (FMT == KV_INT8) out[i] = (float)(signed char)b * __ldg(s + h * D + d + i);
      else out[i] = e4m3_to_f32(b) * (FMT == KV_FP8 ? __ldg(s + h) : tok);
    }
  }
}

// Quantize one element (bf16-rounded value x) of kv head h, channel d. qs: write scales (INT8: 127/A per
// channel, FP8: 448/A per head, INT4ZP: the step s), z: INT4ZP zero points, inv_tok: BFP8's 448 / A of the
// token (computed by the caller as the twin does: x / A * 448). Returns the stored code (byte or nibble).
template <int FMT>
__device__ __forceinline__ unsigned kv_encode(float x, int h, int D, int d, const float* __restrict__ qs,
                                              const float* __restrict__ z, float amax, int round_to_int) {
  if (FMT == KV_INT8) {
    const float v = fminf(fmaxf(rintf(x * __ldg(qs + h * D + d)), -127.f), 127.f);
    return (unsigned)(unsigned char)(signed char)(int)v;
  } else if (FMT == KV_FP8) {
    float v = x * __ldg(qs + h);
    if (round_to_int) v = rintf(v);
    return f32_to_e4m3(v);
  } else if (FMT == KV_BFP8) {
    float v = x / (amax > 0.f ? amax : 1.f) * 448.f;
    if (round_to_int) v = rintf(v);
    return f32_to_e4m3(v);
  } else {   // KV_INT4ZP
    const int c = h * D + d;
    const float v = fminf(fmaxf(rintf(x / __ldg(qs + c) + __ldg(z + c)), -7.f), 7.f);
    return (unsigned)((int)v + 8);
  }
}
