// mma_q8's 8-bit-weight modes on Hopper's warpgroup tensor cores (sm_90a): the same product and inputs as mma_q8.cu
// (x quantized by gemv_rows_quant_x, weights as stored), for ROWS_BLOCK (block_wise_fp8), ROWS_CHANNEL (wfp8afp8)
// and ROWS_INT8 (w8a8). Why a second kernel: on sm_90 mma.sync has no e4m3 form in hardware (ptxas turns each
// m16n8k32 e4m3 into conversions to f16 and two HMMA, BENCHMARKS.md), and its int8 form runs at a fraction of
// wgmma's rate; wgmma reads both operands from shared memory at the full e4m3 / s8 rate.
//   y[m, n] = sum over K tiles b (128 columns) of  sx(m, b) sw(n, b) sum_{k in b} xq[m, k] wq[n, k]
// Block: 128 rows of x (blockIdx.x) x 128 output columns (blockIdx.y), two warpgroups of 4 warps, each 64 rows x 128
// columns: wgmma m64n128k32, four per 128-column K tile. A stage (cp.async by all 256 threads, STAGES - 1 tiles ahead,
// as mma_q8) holds x [128][128 B] and w [128][128 B] with 16-byte chunk c of row r at c ^ (r & 7): with the tile
// based on 1024 bytes this is the 128-byte swizzle that wgmma's shared-memory descriptors name, so the descriptors
// step along K by adding 32 bytes to the start address (the hardware applies the XOR to the address it forms).
// BLOCK sums each tile into tmp (a fresh wgmma chain) and adds tmp * sx * sw into acc, in the fp32 order of the twin;
// CHANNEL and INT8 chain every tile into acc (INT8: exact int32) and scale once at the end.
// INFLIGHT: one wgmma group stays in flight across tiles (loads STAGES - 2 ahead) instead of waiting for each tile's
// four; the launcher turns it on for CHANNEL and INT8 (H100: 13-15% faster at 4096 rows). For BLOCK ptxas serializes
// the wgmma anyway (it cannot tell that the sums being scaled are not the ones in flight), so it stays off there.
#include "common.cuh"
#include "gemv_rows_codes.cuh"

#define WQ_BM 128
#define WQ_BN 128
#define WQ_THREADS 256

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define WQ_SM90A 1
#endif

// A K-major operand in shared memory, 128-byte swizzled: start address >> 4, leading byte offset (unused by swizzled
// K-major layouts: 1), stride byte offset 1024 >> 4 (from one 8-row group to the next), layout type 1 (128-byte
// swizzle) in bits 62-63.
__device__ __forceinline__ unsigned long long wq_desc(unsigned saddr) {
  return (unsigned long long)((saddr & 0x3FFFF) >> 4) | (1ull << 16) | ((unsigned long long)(1024 >> 4) << 32) |
         (1ull << 62);
}

__device__ __forceinline__ void wq_fence() {
#ifdef WQ_SM90A
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wq_commit() {
#ifdef WQ_SM90A
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
// every committed wgmma group of this warpgroup but the newest N has finished
template <int N = 0>
__device__ __forceinline__ void wq_wait() {
#ifdef WQ_SM90A
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Pins an accumulator array's registers at this point: the compiler must not move its reads or writes across (a
// wgmma in flight writes them behind the compiler's back until its wait).
__device__ __forceinline__ void wq_pin(float (&d)[64]) {
#pragma unroll
  for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
__device__ __forceinline__ void wq_pin(int (&d)[64]) {
#pragma unroll
  for (int i = 0; i < 64; ++i) asm volatile("" : "+r"(d[i])::"memory");
}
// cp.async's writes (the generic proxy) made visible to wgmma's reads (the async proxy)
__device__ __forceinline__ void wq_fence_proxy() {
#ifdef WQ_SM90A
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

#define WQ_R8(p, i) p(i), p(i + 1), p(i + 2), p(i + 3), p(i + 4), p(i + 5), p(i + 6), p(i + 7)
#define WQ_R64(p) WQ_R8(p, 0), WQ_R8(p, 8), WQ_R8(p, 16), WQ_R8(p, 24), WQ_R8(p, 32), WQ_R8(p, 40), WQ_R8(p, 48), \
                  WQ_R8(p, 56)
#define WQ_ARGS                                                                                                    \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, " \
  "%24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, "   \
  "%46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p"

// d (+)= A (64 x 32 e4m3, desc a) . B (128 x 32 e4m3, desc b)^T; accumulate: keep d (else d = the product)
__device__ __forceinline__ void wq_mma(float (&d)[64], unsigned long long a, unsigned long long b, int accumulate) {
#ifdef WQ_SM90A
#define WQ_F(i) "+f"(d[i])
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 " WQ_ARGS ", 1, 1;\n}\n"
               : WQ_R64(WQ_F)
               : "l"(a), "l"(b), "r"(accumulate));
#undef WQ_F
#else
  __trap();
#endif
}
__device__ __forceinline__ void wq_mma(int (&d)[64], unsigned long long a, unsigned long long b, int accumulate) {
#ifdef WQ_SM90A
#define WQ_I(i) "+r"(d[i])
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 " WQ_ARGS ";\n}\n"
               : WQ_R64(WQ_I)
               : "l"(a), "l"(b), "r"(accumulate));
#undef WQ_I
#else
  __trap();
#endif
}

template <int MODE, int STAGES, bool INFLIGHT>
__global__ void __launch_bounds__(WQ_THREADS, 1) wgmma_q8(const u8* __restrict__ xq, const uint4* __restrict__ w,
                                                          const float* __restrict__ ws, bf16_t* __restrict__ y, int M,
                                                          int N, int K) {
  static_assert(MODE == ROWS_BLOCK || MODE == ROWS_CHANNEL || MODE == ROWS_INT8, "8-bit weights only");
  constexpr bool INT = MODE == ROWS_INT8, TILED = MODE == ROWS_BLOCK;
  using Acc = typename AccOf<INT>::T;
  constexpr int AB = WQ_BM * 128, BB = WQ_BN * 128;                 // bytes of x and of weights per stage
  constexpr int STB = AB + BB + 1024;                               // + the tile's x scales and weight scale
  extern __shared__ uint4 smem_raw[];
  // the tiles on 1024-byte boundaries (the swizzle repeats every 8 rows of 128 bytes); the launcher adds 1 KiB
  const unsigned raw = smem_addr(smem_raw);
  u8* smem = reinterpret_cast<u8*>(smem_raw) + (((raw + 1023) & ~1023u) - raw);

  pdl_launch();
  xq += pdl_wait();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wg = warp >> 2;
  const int g = lane >> 2, t = lane & 3;
  const int m0 = blockIdx.x * WQ_BM, n0 = blockIdx.y * WQ_BN;
  const int sx = K + 64, Kb = K / 128, nk = Kb;
  const float* xs = reinterpret_cast<const float*>(xq + (size_t)M * sx);   // [M][Kb]

  auto load_stage = [&](int kt, int slot) {
    u8* as = smem + slot * STB;
    u8* bs = as + AB;
#pragma unroll
    for (int i = threadIdx.x; i < WQ_BM * 8; i += WQ_THREADS) {
      const int r = i >> 3, c = i & 7;
      const bool ok = m0 + r < M;
      cp_async16(as + r * 128 + 16 * (c ^ (r & 7)), xq + (size_t)(ok ? m0 + r : 0) * sx + kt * 128 + 16 * c, ok);
    }
#pragma unroll
    for (int i = threadIdx.x; i < WQ_BN * 8; i += WQ_THREADS) {
      const int r = i >> 3, c = i & 7;
      const bool ok = n0 + r < N;
      cp_async16(bs + r * 128 + 16 * (c ^ (r & 7)), w + (size_t)(ok ? n0 + r : 0) * (K / 16) + kt * 8 + c, ok);
    }
    if (TILED) {
      float* ss = reinterpret_cast<float*>(bs + BB);
      const int i = threadIdx.x;
      if (i < WQ_BM) {
        const bool ok = m0 + i < M;
        cp_async4(ss + i, xs + (size_t)(ok ? m0 + i : 0) * Kb + kt, ok);
      } else if (i == WQ_BM) {
        cp_async4(ss + i, ws + (size_t)blockIdx.y * Kb + kt, true);
      }
    }
  };

  Acc acc[64], tmp[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = tmp[i] = 0;

  if constexpr (INFLIGHT) {
    // One wgmma group stays in flight across tiles: loads run STAGES - 2 tiles ahead, so the slot a load overwrites
    // held the tile two back, whose group the previous iteration's wait<1> retired (in both warpgroups: the barrier).
    // BLOCK alternates two tmp sets: tile i sums into one while tile i - 1's is scaled into acc.
    Acc tmp1[64];
    auto promote = [&](const Acc (&tp)[64], int tile) {
      const float* ss = reinterpret_cast<const float*>(smem + (tile % STAGES) * STB + AB + BB);
      const int r0 = 64 * wg + 16 * (warp & 3) + g;
      const float sw = ss[WQ_BM], x0 = ss[r0] * sw, x1 = ss[r0 + 8] * sw;
#pragma unroll
      for (int j = 0; j < 64; ++j) acc[j] = fmaf((float)tp[j], (j & 2) ? x1 : x0, (float)acc[j]);
    };
#pragma unroll
    for (int s = 0; s < STAGES - 2; ++s) {
      if (s < nk) load_stage(s, s);
      cp_async_commit();
    }
    // tile i: wait for its copies, issue the next load, then its four wgmma into d (chain: accumulate from the first)
    auto issue = [&](int i, Acc (&d)[64], bool chain) {
      cp_async_wait<STAGES - 3>();
      wq_fence_proxy();
      __syncthreads();
      if (i + STAGES - 2 < nk) load_stage(i + STAGES - 2, (i + STAGES - 2) % STAGES);
      cp_async_commit();
      const u8* as = smem + (i % STAGES) * STB;
      const unsigned a0 = smem_addr(as + wg * 64 * 128), b0 = smem_addr(as + AB);
      wq_fence();
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) wq_mma(d, wq_desc(a0 + 32 * kk), wq_desc(b0 + 32 * kk), chain || kk > 0);
      wq_commit();
      wq_pin(d);
    };
    if constexpr (TILED) {                   // tiles in pairs, so each sum set is named without a branch
      for (int i = 0; i < nk; i += 2) {
        issue(i, tmp, false);
        wq_wait<1>();                          // tile i - 1 (in tmp1) is done
        if (i > 0) {
          wq_pin(tmp1);
          promote(tmp1, i - 1);
        }
        if (i + 1 < nk) {
          issue(i + 1, tmp1, false);
          wq_wait<1>();                        // tile i (in tmp) is done
          wq_pin(tmp);
          promote(tmp, i);
        }
      }
      wq_wait();
      wq_pin(tmp);
      wq_pin(tmp1);
      if (nk > 0) {
        if ((nk - 1) & 1) promote(tmp1, nk - 1);
        else promote(tmp, nk - 1);
      }
    } else {
      for (int i = 0; i < nk; ++i) {
        issue(i, acc, true);
        wq_wait<1>();
      }
      wq_wait();
      wq_pin(acc);
    }
  } else {
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < nk) load_stage(s, s);
    cp_async_commit();
  }
  for (int i = 0; i < nk; ++i) {
    cp_async_wait<STAGES - 2>();
    wq_fence_proxy();
    __syncthreads();                         // tile i landed for every thread; the slot of tile i - 1 is free
    if (i + STAGES - 1 < nk) load_stage(i + STAGES - 1, (i + STAGES - 1) % STAGES);
    cp_async_commit();

    const u8* as = smem + (i % STAGES) * STB;
    const u8* bs = as + AB;
    const unsigned a0 = smem_addr(as + wg * 64 * 128), b0 = smem_addr(bs);
    wq_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      if constexpr (TILED) wq_mma(tmp, wq_desc(a0 + 32 * kk), wq_desc(b0 + 32 * kk), kk > 0);
      else wq_mma(acc, wq_desc(a0 + 32 * kk), wq_desc(b0 + 32 * kk), 1);
    }
    wq_commit();
    wq_wait();
    if (TILED) {                             // acc += tmp * sx[row] * sw: rows 16 (warp % 4) + g (+ 8)
      const float* ss = reinterpret_cast<const float*>(bs + BB);
      const int r0 = 64 * wg + 16 * (warp & 3) + g;
      const float sw = ss[WQ_BM], x0 = ss[r0] * sw, x1 = ss[r0 + 8] * sw;
#pragma unroll
      for (int j = 0; j < 64; ++j) acc[j] = fmaf((float)tmp[j], (j & 2) ? x1 : x0, (float)acc[j]);
    }
  }
  }
  cp_async_wait<0>();

  // accumulator j: n8 tile j / 4, row 16 (warp % 4) + g (+ 8 for j % 4 >= 2), column 8 (j / 4) + 2t + (j & 1)
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    const int row = m0 + 64 * wg + 16 * (warp & 3) + g + 8 * e;
    if (row >= M) continue;
    const float sxr = TILED ? 1.f : __ldcg(xs + (size_t)row * Kb);
#pragma unroll
    for (int h = 0; h < 16; ++h) {
      const int col = n0 + 8 * h + 2 * t;
      if (col >= N) continue;
      float v0 = (float)acc[4 * h + 2 * e], v1 = (float)acc[4 * h + 2 * e + 1];
      if (!TILED) {
        v0 *= sxr * __ldg(ws + col);
        v1 *= col + 1 < N ? sxr * __ldg(ws + col + 1) : 0.f;
      }
      store_bf16_pair(y + (size_t)row * N + col, col, N, v0, v1);
    }
  }
}

#ifndef FDLITE_NVRTC   // nvcc (CI's compile check) needs them; NVRTC instantiates what name_expressions ask
#define WGMMA_Q8_INST(MODE, S, F) \
  template __global__ void wgmma_q8<MODE, S, F>(const u8*, const uint4*, const float*, bf16_t*, int, int, int);
#define WGMMA_Q8(MODE) WGMMA_Q8_INST(MODE, 3, false) WGMMA_Q8_INST(MODE, 4, false) WGMMA_Q8_INST(MODE, 3, true) \
  WGMMA_Q8_INST(MODE, 4, true)
WGMMA_Q8(ROWS_BLOCK)
WGMMA_Q8(ROWS_CHANNEL)
WGMMA_Q8(ROWS_INT8)
#endif
