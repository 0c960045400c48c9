// block_wise_fp8 to bf16, the stop-gap behind its GEMM above the decode GEMV's 16 rows (no fp8 tensor-core
// kernel yet): the weight and the fp8-quantized activation are expanded to bf16 and multiplied on the tensor
// cores by mma_bf16, which a CUDA graph can capture (the dequantize + cuBLAS reference path cannot be).
//   dequant_w: w[n, k] = bf16(e4m3(q[n, k]) * ws[n / 128, k / 128])      q: uint8 [N, K]; ws: f32 [Nb, Kb]
//   dequant_x: x[m, k] = bf16(e4m3(xq[m, k]) * xs[m, k / 128])           xq: uint8 [M, Kb * 128]; xs: [M, Kb]
// Twins: fdlite.quant.block_wise_fp8.Method.dequantize and _common.act_fp8 (float32 there; here each element
// is rounded once to bf16, a relative error <= 2^-9 per element).
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256) dequant_w(const u8* __restrict__ q, const float* __restrict__ ws,
                                                            bf16_t* __restrict__ w, int N, int K, int Kb) {
  const size_t total = (size_t)N * K;
  for (size_t i = (size_t)blockIdx.x * 256 + threadIdx.x; i < total; i += (size_t)gridDim.x * 256) {
    const int n = (int)(i / K), k = (int)(i % K);
    w[i] = f32_to_bf16(e4m3_to_f32(q[i]) * __ldg(ws + (size_t)(n / 128) * Kb + k / 128));
  }
}

extern "C" __global__ void __launch_bounds__(256) dequant_x(const u8* __restrict__ xq, const float* __restrict__ xs,
                                                            bf16_t* __restrict__ x, int M, int K, int Kb) {
  const size_t total = (size_t)M * K;
  for (size_t i = (size_t)blockIdx.x * 256 + threadIdx.x; i < total; i += (size_t)gridDim.x * 256) {
    const int m = (int)(i / K), k = (int)(i % K);
    x[i] = f32_to_bf16(e4m3_to_f32(xq[(size_t)m * Kb * 128 + k]) * __ldg(xs + (size_t)m * Kb + k / 128));
  }
}
