// Decode GEMV for WINT2 (FastDeploy's CCQ format, spec §4.7), read in its checkpoint layout ([K, N]):
//   q: uint8 [Kp/4, N], byte r of column n = codeword index b of rows 4r..4r+3;
//   v = floor(b * code_scale[n] + code_zp[n] + 0.5); code_j = (v >> (9 - 3j)) & 63, j = 0..3;
//   ls = 4-bit local scale of 64-row group (4r)/64 (weight_scale [Kp/128, N]: high nibble = even group);
//   W[4r + j, n] = bf16((code_j - 32) * (ls * super_scales[n]))  (the product formed in fp32, then rounded)
//   y[m, n] = sum_k x[m, k] W[k, n]       x: bf16 [M, K], y: f32 [M, N] accumulated with atomicAdd (split K)
// Each thread owns 4 adjacent columns (one 4-byte load per byte row: a warp reads 128 contiguous bytes);
// a block's K chunk of x is staged in shared memory as fp32 (every thread reads the same x: a broadcast).
#include "common.cuh"

#define KCHUNK 256           // rows of K per block (a multiple of 128: whole scale bytes)

__device__ __forceinline__ float bf16_round(float f) { return bf16_to_f32(f32_to_bf16(f)); }

template <int MMAX>
__global__ void __launch_bounds__(64) gemv_wint2(const bf16_t* __restrict__ x, const u8* __restrict__ q,
                                                  const u8* __restrict__ wscale, const bf16_t* __restrict__ ss,
                                                  const float* __restrict__ cs, const float* __restrict__ cz,
                                                  float* __restrict__ y, int M, int N, int K, int Kp) {
  __shared__ float xs[MMAX][KCHUNK];
  const int k0 = blockIdx.y * KCHUNK;
  const int kn = min(KCHUNK, Kp - k0);
  for (int i = threadIdx.x; i < MMAX * KCHUNK; i += blockDim.x) {
    const int m = i / KCHUNK, k = i % KCHUNK;
    xs[m][k] = (m < M && k0 + k < K) ? bf16_to_f32(x[(size_t)m * K + k0 + k]) : 0.f;
  }
  __syncthreads();
  const int n0 = (blockIdx.x * blockDim.x + threadIdx.x) * 4;
  if (n0 >= N) return;
  float c_s[4], c_z[4], sup[4];
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const int n = min(n0 + c, N - 1);
    c_s[c] = cs[n];
    c_z[c] = cz[n];
    sup[c] = bf16_to_f32(ss[n]);
  }
  float acc[MMAX][4];
#pragma unroll
  for (int m = 0; m < MMAX; ++m)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[m][c] = 0.f;
  const bool full = n0 + 3 < N && (N & 3) == 0;
  for (int kg = 0; kg < kn; kg += 64) {                 // one 64-row local-scale group at a time
    const int g = (k0 + kg) >> 6;
    float scl[4];
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int n = min(n0 + c, N - 1);
      const unsigned byte = wscale[(size_t)(g >> 1) * N + n];
      scl[c] = __fmul_rn((float)((g & 1) ? (byte & 0xf) : (byte >> 4)), sup[c]);
    }
#pragma unroll 4
    for (int r = 0; r < 16; ++r) {
      const size_t row = (size_t)((k0 + kg) / 4 + r) * N;
      unsigned bytes;
      if (full) {
        bytes = __ldg(reinterpret_cast<const unsigned*>(q + row + n0));
      } else {
        bytes = 0;
        for (int c = 0; c < 4; ++c) bytes |= (unsigned)q[row + min(n0 + c, N - 1)] << (8 * c);
      }
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        // separately rounded mul/adds (no FMA contraction): the codeword must equal the NumPy twin's exactly
        const int v = (int)floorf(__fadd_rn(__fadd_rn(__fmul_rn((float)((bytes >> (8 * c)) & 0xff), c_s[c]), c_z[c]), 0.5f));
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float w = bf16_round(__fmul_rn((float)(((v >> (9 - 3 * j)) & 63) - 32), scl[c]));
#pragma unroll
          for (int m = 0; m < MMAX; ++m) acc[m][c] = fmaf(xs[m][kg + 4 * r + j], w, acc[m][c]);
        }
      }
    }
  }
#pragma unroll
  for (int m = 0; m < MMAX; ++m)
#pragma unroll
    for (int c = 0; c < 4; ++c)
      if (m < M && n0 + c < N) atomicAdd(y + (size_t)m * N + n0 + c, acc[m][c]);
}

extern "C" __global__ void f32_to_bf16_kernel(const float* __restrict__ a, bf16_t* __restrict__ b, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) b[i] = f32_to_bf16(a[i]);
}

template __global__ void gemv_wint2<1>(const bf16_t*, const u8*, const u8*, const bf16_t*, const float*, const float*,
                                       float*, int, int, int, int);
template __global__ void gemv_wint2<4>(const bf16_t*, const u8*, const u8*, const bf16_t*, const float*, const float*,
                                       float*, int, int, int, int);
