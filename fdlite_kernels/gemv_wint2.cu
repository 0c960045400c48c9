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

// Tensor-core decode GEMV for WINT2 (gemv_wint2_tc, M <= 16; N % 64 == 0, K % 4 == 0, every codeword
// b * code_scale + code_zp + 0.5 in [0, 2^23): fdlite.quant._gpu checks it once per weight), the same checkpoint layout
// read as stored and the same weights to the bit: each W = bf16((code - 32) * (ls * ss)) is formed in fp32 and rounded
// as the twin does, then multiplied on the tensor cores (m16n8k16, fp32 sums), so y equals x @ W.T up to the order
// of the fp32 sums.
// x is the mma's A operand (its 16 rows are tokens: rows past M repeat row M - 1, or when M <= 8 the same registers,
// and are never stored); the weights are B. A warp owns 64 columns c0..c0 + 63 as 8 n8 tiles: per k16 step (byte rows
// r = 4s + t of its 64-row group) lane (g, t) loads the 8 bytes q[r][c0 + 8g .. + 7] (one warp load: 4 byte rows x
// 64 contiguous bytes), and byte i is tile i's B element at column g, i.e. output column c0 + 8g + i. A byte's 4
// weights are rows 4r..4r+3: {b0, b1} of the step in a permuted k order (an mma sums over k, so any permutation
// applied to both operands gives the same product), and lane (g, t)'s A registers hold x at those same 4 k.
// Block: W warps take the 64-row groups of the block's K range in turn (two groups of weights in flight in registers)
// and meet in shared memory; grid (N / 64, S): S splits of K, each writing fp32 sums to ws[by], the last of a column
// block's splits to arrive adding them in split order (deterministic) and writing y.
template <int W, bool BIG, int RB>
__global__ void __launch_bounds__(32 * W) gemv_wint2_tc(const bf16_t* __restrict__ x, const u8* __restrict__ q,
                                                     const u8* __restrict__ wscale, const bf16_t* __restrict__ ss,
                                                     const float* __restrict__ cs, const float* __restrict__ cz,
                                                     bf16_t* __restrict__ y, float* __restrict__ ws,
                                                     int* __restrict__ flags, int M, int N, int K, int gpb) {
  // RB: groups per lane in registers, RB - 1 of them in flight while one is computed (3 holds 167 registers, 12 warps
  // an SM; 2 holds 128, 16 warps, and was faster: the kernel waits on its arithmetic's latency, not on memory)
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int c0 = 64 * blockIdx.x;
  const int G = (K + 63) / 64;                         // 64-row groups holding rows of x (the rest are padding)
  const int g0 = blockIdx.y * gpb, g1 = min(G, g0 + gpb);
  const int KS = gridDim.y;

  // this lane's 8 decode columns c0 + 8g + i: the codeword map and the super scale (loop-invariant)
  float ccs[8], ccz[8], sup[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int n = c0 + 8 * g + i;
    ccs[i] = __ldg(cs + n);
    ccz[i] = __ldg(cz + n);
    sup[i] = bf16_to_f32(__ldg(ss + n));
  }
  const u8* qcol = q + c0 + 8 * g;
  auto load_w = [&](int grp, uint2 (&wv)[4], uint2& lsv) {       // a group's 4 steps of bytes, its local scales
#pragma unroll
    for (int s = 0; s < 4; ++s)
      wv[s] = __ldg(reinterpret_cast<const uint2*>(qcol + (size_t)(16 * grp + 4 * s + t) * N));
    lsv = __ldg(reinterpret_cast<const uint2*>(wscale + (size_t)(grp >> 1) * N + c0 + 8 * g));
  };
  uint2 wb[RB][4], lb[RB];
#pragma unroll
  for (int u = 0; u < RB - 1; ++u)
    if (g0 + warp + u * W < g1) load_w(g0 + warp + u * W, wb[u], lb[u]);
  x += pdl_wait();                                     // the weights above depend on no kernel; x does

  // A fragments of a group: token rows g (and g + 8 when BIG) at k = 64 grp + 16 s + 4t .. + 3; rows past K read 0
  const bf16_t* xr0 = x + (size_t)min(g, M - 1) * K;
  const bf16_t* xr1 = x + (size_t)min(g + 8, M - 1) * K;
  auto load_x = [&](int grp, uint2 (&xv)[4][2]) {
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      const int k = 64 * grp + 16 * s + 4 * t;
      const bool in = k < K;                           // K % 4 == 0: a lane's 4 columns are all in or all out
      xv[s][0] = in ? __ldca(reinterpret_cast<const uint2*>(xr0 + k)) : make_uint2(0, 0);
      xv[s][1] = BIG && in ? __ldca(reinterpret_cast<const uint2*>(xr1 + k)) : xv[s][0];
    }
  };
  uint2 xb[RB][4][2];

  float acc[8][4];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[i][c] = 0.f;

  auto compute = [&](int grp, const uint2 (&wv)[4], uint2 lsv, const uint2 (&xv)[4][2]) {
    float scl[8];                                      // ls * ss in fp32, as the twin
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const unsigned byte = (i < 4 ? lsv.x >> (8 * i) : lsv.y >> (8 * (i - 4))) & 0xffu;
      scl[i] = __fmul_rn((float)((grp & 1) ? (byte & 0xfu) : (byte >> 4)), sup[i]);
    }
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      const unsigned a[4] = {xv[s][0].x, xv[s][1].x, xv[s][0].y, xv[s][1].y};   // rows g, g + 8 at k 4t.. / 4t + 2..
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        // every conversion by exponent tricks, none through I2F / F2I (quarter-rate: five a byte bounded the first
        // build, BENCHMARKS.md): the byte as the float 2^23 + b minus 2^23; the codeword as separately rounded mul /
        // adds (no FMA contraction: it must equal the twin's), floored by adding 2^23 rounding down, which leaves
        // floor(f) in the mantissa for 0 <= f < 2^23 (the launcher's range check); each 6-bit window as 2^23 + code
        // minus 2^23 + 32, exact; W = (code - 32) * scale rounded to bf16 as the twin
        const float bf = __uint_as_float(__byte_perm(i < 4 ? wv[s].x : wv[s].y, 0x4B000000u, 0x7650 + (i & 3))) -
                         8388608.f;
        const unsigned v = __float_as_uint(__fadd_rd(__fadd_rn(__fadd_rn(__fmul_rn(bf, ccs[i]), ccz[i]), 0.5f),
                                                     8388608.f));
        float w4[4];
#pragma unroll
        for (int j = 0; j < 4; ++j)
          w4[j] = __fmul_rn(__uint_as_float(and_or(v >> (9 - 3 * j), 63u, 0x4B000000u)) - 8388640.f, scl[i]);
        mma_16816(acc[i], a, pack_bf16x2(w4[0], w4[1]), pack_bf16x2(w4[2], w4[3]));
      }
    }
  };
  auto group = [&](int grp, int u) {
    if (grp + W < g1) load_x(grp + W, xb[(u + 1) % RB]);
    if (grp + (RB - 1) * W < g1) load_w(grp + (RB - 1) * W, wb[(u + RB - 1) % RB], lb[(u + RB - 1) % RB]);
    compute(grp, wb[u], lb[u], xb[u]);
  };
  if (g0 + warp < g1) load_x(g0 + warp, xb[0]);
  int grp = g0 + warp;
  for (; grp + (RB - 1) * W < g1; grp += RB * W) {
#pragma unroll
    for (int u = 0; u < RB; ++u) group(grp + u * W, u);
  }
#pragma unroll
  for (int u = 0; u < RB - 1; ++u)
    if (grp + u * W < g1) group(grp + u * W, u);

  pdl_launch();
  // warps -> shared memory (lane-major), then one thread per (tile, c, lane) sums them in warp order
  __shared__ float red[W][32][32];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int c = 0; c < 4; ++c) red[warp][i * 4 + c][lane] = acc[i][c];
  __syncthreads();
  for (int e = threadIdx.x; e < 32 * 32; e += 32 * W) {
    const int v = e / 32, l = e % 32, i = v / 4, c = v % 4;
    const int m = (l >> 2) + 8 * (c >> 1);                        // C rows: tokens g', g' + 8
    const int col = c0 + 8 * (2 * (l & 3) + (c & 1)) + i;         // C column 2t' (+1) of tile i
    if (m >= M) continue;
    float sum = 0.f;
#pragma unroll
    for (int o = 0; o < W; ++o) sum += red[o][v][l];
    if (KS == 1) y[(size_t)m * N + col] = f32_to_bf16(sum);
    else ws[((size_t)blockIdx.y * M + m) * N + col] = sum;
  }
  if (KS == 1 || !last_to_arrive(flags + blockIdx.x, KS)) return;
  for (int e = threadIdx.x; e < M * 64; e += 32 * W) {            // the last split: the sums in split order
    const int m = e / 64, col = c0 + e % 64;
    float sum = 0.f;
    for (int z = 0; z < KS; ++z) sum += __ldcg(ws + ((size_t)z * M + m) * N + col);
    y[(size_t)m * N + col] = f32_to_bf16(sum);
  }
}

extern "C" __global__ void f32_to_bf16_kernel(const float* __restrict__ a, bf16_t* __restrict__ b, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) b[i] = f32_to_bf16(a[i]);
}

template __global__ void gemv_wint2<1>(const bf16_t*, const u8*, const u8*, const bf16_t*, const float*, const float*,
                                       float*, int, int, int, int);
template __global__ void gemv_wint2<4>(const bf16_t*, const u8*, const u8*, const bf16_t*, const float*, const float*,
                                       float*, int, int, int, int);
#ifndef FDLITE_NVRTC   // nvcc (CI's compile check); NVRTC instantiates what the launcher names
#define GEMV_WINT2_TC(W, BIG, RB)                                                                                  \
  template __global__ void gemv_wint2_tc<W, BIG, RB>(const bf16_t*, const u8*, const u8*, const bf16_t*, const float*, \
                                                     const float*, bf16_t*, float*, int*, int, int, int, int);
GEMV_WINT2_TC(4, false, 3) GEMV_WINT2_TC(4, true, 3) GEMV_WINT2_TC(8, false, 3) GEMV_WINT2_TC(8, true, 3)
GEMV_WINT2_TC(4, false, 2) GEMV_WINT2_TC(4, true, 2) GEMV_WINT2_TC(8, false, 2) GEMV_WINT2_TC(8, true, 2)
#endif
