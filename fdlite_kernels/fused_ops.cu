// Small fused ops of the forward, bf16 in and out, float32 inside (twins: fdlite/ops.py).
//   rms_norm:      y = x / sqrt(mean(x^2) + eps) * w                       x, y: [M, H]; w: [H]
//   add_rms_norm:  x <- bf16(x + d); y = rms_norm(x)  (the residual add fused with the next norm; x in place)
//   silu_mul:      y = silu(gu[:, :I]) * gu[:, I:]                          gu: [M, 2I]; y: [M, I]
// One CTA per row for the norms (a row is read once into registers-sized chunks, reduced, then written).
// Every kernel here is launched with PDL (pdl_wait before its first read).
#include "common.cuh"

#define THREADS 256

__device__ __forceinline__ float block_sum(float v, float* red) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  if (lane == 0) red[wid] = v;
  __syncthreads();
  float t = 0.f;
  for (int i = 0; i < (int)(blockDim.x >> 5); ++i) t += red[i];
  __syncthreads();
  return t;
}

template <bool ADD>
__global__ void __launch_bounds__(THREADS) rms_norm(bf16_t* __restrict__ x, const bf16_t* __restrict__ d,
                                                     const bf16_t* __restrict__ w, bf16_t* __restrict__ y, int H,
                                                     float eps) {
  __shared__ float red[THREADS / 32];
  pdl_launch();
  const int z = pdl_wait();
  x += z, d += z;
  bf16_t* xr = x + (size_t)blockIdx.x * H;
  float ss = 0.f;
  for (int i = threadIdx.x; i < H; i += THREADS) {
    float v = bf16_to_f32(xr[i]);
    if (ADD) {
      const bf16_t r = f32_to_bf16(v + bf16_to_f32(__ldcg(d + (size_t)blockIdx.x * H + i)));
      xr[i] = r;                                   // each element is read and written by the same thread
      v = bf16_to_f32(r);
    }
    ss += v * v;
  }
  const float r = sqrtf(block_sum(ss, red) / (float)H + eps);
  for (int i = threadIdx.x; i < H; i += THREADS)
    y[(size_t)blockIdx.x * H + i] = f32_to_bf16(bf16_to_f32(xr[i]) / r * bf16_to_f32(w[i]));
}

// The same for rows of whole 16-byte vectors (H % 8 == 0, H <= 8 * THREADS * VPT): each thread keeps its
// vectors in registers between the reduction and the output, so a row costs one read of x (and d, w) and
// all of a thread's loads are in flight together (a decode row is one CTA: latency, not bandwidth, bounds it).
#define VPT 4
template <bool ADD>
__global__ void __launch_bounds__(THREADS) rms_norm_v(bf16_t* __restrict__ x, const bf16_t* __restrict__ d,
                                                       const bf16_t* __restrict__ w, bf16_t* __restrict__ y, int H,
                                                       float eps) {
  __shared__ float red[THREADS / 32];
  pdl_launch();
  const int nv = H / 8;
  const uint4* wr = reinterpret_cast<const uint4*>(w);
  uint4 wv[VPT];                                 // the norm's weights depend on no kernel: loaded before the wait
#pragma unroll
  for (int u = 0; u < VPT; ++u) {
    const int i = threadIdx.x + u * THREADS;
    if (i < nv) wv[u] = __ldg(wr + i);
  }
  const int z = pdl_wait();
  x += z, d += z;
  uint4* xr = reinterpret_cast<uint4*>(x + (size_t)blockIdx.x * H);
  const uint4* dr = reinterpret_cast<const uint4*>(d + (size_t)blockIdx.x * H);
  uint4 xv[VPT], dv[VPT];
#pragma unroll
  for (int u = 0; u < VPT; ++u) {
    const int i = threadIdx.x + u * THREADS;
    if (i < nv) {
      xv[u] = xr[i];
      if (ADD) dv[u] = __ldcg(dr + i);          // coherent loads of what earlier kernels wrote (PDL)
    }
  }
  float ss = 0.f;
#pragma unroll
  for (int u = 0; u < VPT; ++u) {
    const int i = threadIdx.x + u * THREADS;
    if (i < nv) {
      unsigned* a = reinterpret_cast<unsigned*>(&xv[u]);
      const unsigned* b = reinterpret_cast<const unsigned*>(&dv[u]);
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        float lo = __uint_as_float(a[c] << 16), hi = __uint_as_float(a[c] & 0xffff0000u);
        if (ADD) {
          lo = bf16_to_f32(f32_to_bf16(lo + __uint_as_float(b[c] << 16)));
          hi = bf16_to_f32(f32_to_bf16(hi + __uint_as_float(b[c] & 0xffff0000u)));
          a[c] = (__float_as_uint(lo) >> 16) | (__float_as_uint(hi) & 0xffff0000u);
        }
        ss += lo * lo + hi * hi;
      }
      if (ADD) xr[i] = xv[u];
    }
  }
  const float r = sqrtf(block_sum(ss, red) / (float)H + eps);
  uint4* yr = reinterpret_cast<uint4*>(y + (size_t)blockIdx.x * H);
#pragma unroll
  for (int u = 0; u < VPT; ++u) {
    const int i = threadIdx.x + u * THREADS;
    if (i < nv) {
      const unsigned* a = reinterpret_cast<const unsigned*>(&xv[u]);
      const unsigned* b = reinterpret_cast<const unsigned*>(&wv[u]);
      uint4 o;
      unsigned* oo = reinterpret_cast<unsigned*>(&o);
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const float lo = __uint_as_float(a[c] << 16) / r * __uint_as_float(b[c] << 16);
        const float hi = __uint_as_float(a[c] & 0xffff0000u) / r * __uint_as_float(b[c] & 0xffff0000u);
        oo[c] = (unsigned)f32_to_bf16(lo) | ((unsigned)f32_to_bf16(hi) << 16);
      }
      yr[i] = o;
    }
  }
}

__global__ void __launch_bounds__(THREADS) silu_mul(const bf16_t* __restrict__ gu, bf16_t* __restrict__ y, int M,
                                                     int I) {
  pdl_launch();
  gu += pdl_wait();
  const size_t total = (size_t)M * I;
  for (size_t e = (size_t)blockIdx.x * THREADS + threadIdx.x; e < total; e += (size_t)gridDim.x * THREADS) {
    const size_t m = e / I, i = e % I;
    y[e] = swiglu_bf16(bf16_to_f32(__ldcg(gu + m * 2 * I + i)), bf16_to_f32(__ldcg(gu + m * 2 * I + I + i)));
  }
}

template __global__ void rms_norm<false>(bf16_t*, const bf16_t*, const bf16_t*, bf16_t*, int, float);
template __global__ void rms_norm<true>(bf16_t*, const bf16_t*, const bf16_t*, bf16_t*, int, float);
template __global__ void rms_norm_v<false>(bf16_t*, const bf16_t*, const bf16_t*, bf16_t*, int, float);
template __global__ void rms_norm_v<true>(bf16_t*, const bf16_t*, const bf16_t*, bf16_t*, int, float);
