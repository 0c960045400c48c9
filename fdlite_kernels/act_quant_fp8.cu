// Dynamic fp8 activation quantization per token and group of 128 K columns (block_wise_fp8's A side):
//   xs[m, b] = max(amax_{k in b} |x[m, k]|, 1e-10) / 448,  xq[m, k] = e4m3_rne(x[m, k] / xs[m, b])
//   x: bf16 [M, K]; xq: uint8 [M, Kb * 128] (zero past K); xs: f32 [M, Kb], Kb = ceil(K / 128).
// One block of 64 threads per (group, token): two elements per thread (one cvt converts both: common.cuh
// f32x2_to_e4m3x2, which gemv_rows' fp8 prologue uses too, so this kernel's bit-exact test covers it), amax by warp
// shuffles and 2 partials.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(64) act_quant_fp8(const bf16_t* __restrict__ x, u8* __restrict__ xq,
                                                               float* __restrict__ xs, int M, int K) {
  const int b = blockIdx.x, m = blockIdx.y, t = threadIdx.x;
  const int Kb = gridDim.x;
  const int k = b * 128 + 2 * t;
  const float v0 = k < K ? bf16_to_f32(x[(size_t)m * K + k]) : 0.f;
  const float v1 = k + 1 < K ? bf16_to_f32(x[(size_t)m * K + k + 1]) : 0.f;
  float a = fmaxf(fabsf(v0), fabsf(v1));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
  __shared__ float part[2];
  if ((t & 31) == 0) part[t >> 5] = a;
  __syncthreads();
  const float amax = fmaxf(part[0], part[1]);
  const float s = fmaxf(amax, 1e-10f) / 448.f;
  reinterpret_cast<unsigned short*>(xq + (size_t)m * Kb * 128)[b * 64 + t] =
      (unsigned short)f32x2_to_e4m3x2(v0 / s, v1 / s);
  if (t == 0) xs[(size_t)m * Kb + b] = s;
}
