// Shared device helpers. bf16 is handled as its 16-bit pattern (unsigned short) so the kernels need no
// CUDA headers under NVRTC: widening is a shift, narrowing rounds to nearest even like ml_dtypes.
#pragma once

typedef unsigned short bf16_t;
typedef unsigned char u8;

__device__ __forceinline__ float bf16_to_f32(bf16_t h) { return __uint_as_float(((unsigned)h) << 16); }

__device__ __forceinline__ bf16_t f32_to_bf16(float f) {
  unsigned u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40);  // NaN stays NaN (quiet)
  u += 0x7fffu + ((u >> 16) & 1u);                                           // round to nearest even
  return (bf16_t)(u >> 16);
}

// 8 bf16 packed in a uint4 -> 8 floats
__device__ __forceinline__ void bf16x8_to_f32(const uint4 v, float* f) {
  const unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }   // NVRTC has no INFINITY

// Integer weight codes -> exact values without I2F (a quarter-rate conversion on sm_80/sm_90 that bounded the
// int8/int4 kernels): place the code in a float's or bf16's mantissa under a fixed exponent, then subtract the
// bias. Both give exactly q.
// int8 (byte i of vx = v ^ 0x80808080, i.e. u = q + 128): bits 0x4B0000uu are 2^23 + u as a float.
__device__ __forceinline__ float s8_to_f32(unsigned vx, int i) {
  return __uint_as_float(__byte_perm(vx, 0x4B000000u, 0x7650 + i)) - 8388736.f;   // 2^23 + 128
}

// bf16x2 a * 1 + c, rounded to nearest (exact here: small integers)
__device__ __forceinline__ unsigned bf16x2_add(unsigned a, unsigned c) {
  unsigned d;
  asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(0x3F803F80u), "r"(c));
  return d;
}

// One 32-bit word of offset-binary int4 codes u = q + 8 -> four bf16x2 words r[p] = (q[2p], q[2p + 1]), p = 0..3.
// mma_wq.repack stores a word's 8 codes with the even elements in the low half-word and the odd ones in the high:
// nibbles 0..7 hold elements 0, 2, 4, 6, 1, 3, 5, 7. So (w >> 4p) & 0x000F000F is the pair (2p, 2p + 1) at bits 0
// and 16 already: one lop3 masks and ORs in bf16's 128 (0x4300: 128 + u is exact), one bf16x2 add subtracts 136.
// 3 shifts + 4 lop3 on the integer pipe per 8 codes: with the codes in element order it took 4 byte permutes + 1
// shift + 4 lop3, and that half-rate pipe is what bounds the int4 kernels (Nsight: math-pipe throttle, BENCHMARKS.md).
// The mask-and-OR is one explicit lop3: written in C, the compiler split it into two LOP3s (a SASS LOP3 takes one
// immediate), 11 integer operations per word instead of 7 (nvdisasm). The asm keeps 0x43004300 in a register.
__device__ __forceinline__ unsigned and_or(unsigned a, unsigned b, unsigned c) {   // (a & b) | c
  unsigned d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}
__device__ __forceinline__ void u4x8_to_bf16x2(unsigned w, unsigned* r) {
#pragma unroll
  for (int p = 0; p < 4; ++p)
    r[p] = bf16x2_add(and_or(w >> (4 * p), 0x000F000Fu, 0x43004300u), 0xC308C308u);   // -136, -136
}

// n / d for 0 <= n < 2^31 and 1 <= d < 2^31 in three instructions, d known only at run time (a group size). The
// compiler's integer division by a runtime d is ~30 instructions with an I2F and a MUFU.RCP: it was a fifth of
// gemv_packed's int4 loop, for the scale index k / group of each K tile (nvdisasm; benchmarks/sass_loops.py).
// Round-up multiplier (Granlund & Montgomery): s = ceil(log2 d), m = floor(2^32 (2^s - d) / d) + 1, and
// n / d = (mulhi(n, m) + n) >> s, whose sum stays below 2^32 for n < 2^31 (checked on the host over every
// d < 5000, powers of two and random d, with n at and around each multiple: tests/test_kernels_host.py).
struct FastDiv {
  unsigned m, s;
};
__device__ __forceinline__ FastDiv fastdiv_of(unsigned d) {
  const unsigned s = 32 - __clz(d - 1);               // d = 1: __clz(0) = 32, s = 0, m = 1
  return {(unsigned)(((((unsigned long long)1 << s) - d) << 32) / d + 1), s};
}
__device__ __forceinline__ unsigned fastdiv(unsigned n, FastDiv f) { return (__umulhi(n, f.m) + n) >> f.s; }

// Word i of a 16-byte load (a lane's share of a packed weight tile).
__device__ __forceinline__ unsigned word_of(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// A lane's 16-byte chunk of a packed int8 / int4 tile (mma_wq.repack) -> its two registers of k16 step j: exact
// codes as bf16x2 pairs at k = (2t, 2t+1) and (2t+8, 2t+9). They are {a0, a2} of an A fragment (gemv_packed,
// gemv_xs: rows g of one n8 tile) or {b0, b1} of a B fragment (mma_sk: column g).
template <int BITS>
__device__ __forceinline__ void codes_of_step(const uint4& w, int j, unsigned* a) {
  if (BITS == 8) {
    const unsigned v = word_of(w, j) ^ 0x80808080u;   // offset binary: s8_to_f32 places u = q + 128 exactly
    a[0] = __byte_perm(__float_as_uint(s8_to_f32(v, 0)), __float_as_uint(s8_to_f32(v, 1)), 0x7632);
    a[1] = __byte_perm(__float_as_uint(s8_to_f32(v, 2)), __float_as_uint(s8_to_f32(v, 3)), 0x7632);
  } else {
    unsigned r[4];                                     // word j/2 holds steps j & ~1 and j | 1
    u4x8_to_bf16x2(word_of(w, j >> 1), r);
    a[0] = r[2 * (j & 1)];
    a[1] = r[2 * (j & 1) + 1];
  }
}

// c += A (16 x 16, bf16, row) @ B (16 x 8, bf16, col), fp32 accumulation: a[4], b0, b1 and c[4] in the
// fragment layout of mma.m16n8k16 (every tensor-core kernel here: mma_wq, mma_sk, gemv_packed).
__device__ __forceinline__ void mma_16816(float* c, const unsigned* a, unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// c += A (16 x 32, e4m3, row) @ B (32 x 8, e4m3, col), fp32 accumulation (mma_sk_fp8, gemv_rows): a0 / a2 hold row g's
// k = 4t..4t+3 / 16+4t.., a1 / a3 row g + 8's, b0 / b1 token g's at those k. sm_89+; the sm_80 build of CI's
// compile check traps, the launchers never pick it there.
__device__ __forceinline__ void mma_16832_e4m3(float* c, const unsigned* a, unsigned b0, unsigned b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();
#endif
}

// c += A (16 x 32, s8, row) @ B (32 x 8, s8, col), exact int32 accumulation: the same fragment layout as the e4m3
// mma above (gemv_rows' w8a8 mode). sm_80+.
__device__ __forceinline__ void mma_16832_s8(int* c, const unsigned* a, unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// cp.async (sm_80+): global -> shared copies that hold no registers while in flight.
__device__ __forceinline__ unsigned smem_addr(const void* p) {
  unsigned a;
  asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
  return a;
}

// 16 bytes, bypassing L1; ok = false writes zeros (rows past M, tiles past N) and reads nothing
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool ok) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(ok ? 16 : 0));
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool ok) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(ok ? 4 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Every group but the newest N of this thread has landed (other threads' copies need a barrier as well). The
// "memory" clobber keeps the compiler from moving shared-memory loads above the wait, or below it the loads of a
// slot that the next copy overwrites: gemv_packed's per-warp ring has no barrier that would (mma_sk's
// __syncthreads after its wait already is one).
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

// four 8x8 b16 matrices from shared memory, lanes 8i..8i+7 giving matrix i's row addresses (a 32-bit shared-window
// address: computed in 32 bits from smem_addr of the buffer, the 64-bit generic pointer arithmetic and its
// conversion cost gemv_xs ~5 instructions per ldmatrix)
__device__ __forceinline__ void ldmatrix_x4(unsigned* r, unsigned saddr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(saddr));
}
__device__ __forceinline__ void ldmatrix_x4(unsigned* r, const void* p) { ldmatrix_x4(r, smem_addr(p)); }

__host__ __device__ __forceinline__ int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Columns col, col + 1 of one row of a bf16 [., N] output from fp32 (the prefill GEMMs' epilogue: mma_q8, wgmma_q8,
// mma_nf4): one 4-byte store where N is even (the pair stays aligned), else two, the second only inside N.
__device__ __forceinline__ void store_bf16_pair(bf16_t* dst, int col, int N, float v0, float v1) {
  if ((N & 1) == 0) {
    *reinterpret_cast<unsigned*>(dst) = (unsigned)f32_to_bf16(v0) | ((unsigned)f32_to_bf16(v1) << 16);
  } else {
    dst[0] = f32_to_bf16(v0);
    if (col + 1 < N) dst[1] = f32_to_bf16(v1);
  }
}

// The accumulator type of an 8-bit mma: int32 for s8 x s8 (exact sums), else fp32.
template <bool INT>
struct AccOf {
  using T = float;
};
template <>
struct AccOf<true> {
  using T = int;
};

// e4m3fn bits -> float, exact for every finite code (NaN codes are never produced by the quantizers).
// Normal codes: the 7 exponent+mantissa bits at float bits 20..26 give 2^(e-127)(1 + m/8); multiplying by
// 2^120 rebases the exponent bias from 127 to 7, exactly. Subnormal codes (e = 0, value m/8 * 2^-6) are
// computed as m * 2^-9 instead: the shifted bits would be a float subnormal, which a flush-to-zero multiply
// turns into 0 (seen on the H100: the decoded weights differed from ml_dtypes' for those codes).
__device__ __forceinline__ float e4m3_to_f32(unsigned b) {
  const float mag = (b & 0x78u) ? __uint_as_float((b & 0x7fu) << 20) * 1.329227995784916e36f   // 2^120
                                : (float)(b & 7u) * 0.001953125f;                                // 2^-9
  return (b & 0x80u) ? -mag : mag;
}

// float -> e4m3fn bits, round to nearest even, saturating at +-448 (as the NumPy twins, which clip first).
__device__ __forceinline__ unsigned f32_to_e4m3(float v) {
  const unsigned sign = signbit(v) ? 0x80u : 0u;   // -0 keeps its sign, as ml_dtypes
  float a = fminf(fabsf(v), 448.f);
  unsigned code;
  if (a < 0.015625f) {                       // below 2^-6: subnormal steps of 2^-9 (q = 8 is the first normal)
    code = (unsigned)rintf(a * 512.f);
  } else {
    int e;
    const float fr = frexpf(a, &e);          // a = fr * 2^e, fr in [0.5, 1)
    unsigned qm = (unsigned)rintf((fr * 2.f - 1.f) * 8.f);
    int ex = e - 1 + 7;
    if (qm == 8u) { qm = 0u; ++ex; }
    code = ((unsigned)ex << 3) | qm;
    if (code > 0x7eu) code = 0x7eu;
  }
  return sign | code;
}

// Two floats -> bf16x2 (lo in bits 0..15), each rounded to nearest even as f32_to_bf16 (finite inputs): one cvt
// (mma_wq / mma_sk fold int4 group scales into the weights with it, gemv_wint2_tc forms each WINT2 weight).
__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
  unsigned d;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
  return d;
}

// Two floats -> two e4m3fn codes (lo in bits 0..7, hi in 8..15), the same bits as f32_to_e4m3 (round to nearest
// even, saturating at +-448, -0 kept): one cvt.rn.satfinite on sm_89+ (its first operand goes to the upper byte),
// where f32_to_e4m3's frexpf path costs ~60 instructions a value. act_quant_fp8's bit-exact test covers both paths.
__device__ __forceinline__ unsigned f32x2_to_e4m3x2(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  unsigned short d;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(d) : "f"(hi), "f"(lo));
  return d;
#else
  return f32_to_e4m3(lo) | (f32_to_e4m3(hi) << 8);
#endif
}

// SwiGLU of a gate_up GEMV's two fp32 sums, rounded as the unfused path rounds them: each projection's output to
// bf16 (the GEMV's y), then silu(gate) * up in fp32 and one bf16 rounding (fused_ops.cu: silu_mul, which calls this
// on values already in bf16: rounding them again changes nothing). The GEMVs fuse it into their epilogue (GATE).
__device__ __forceinline__ bf16_t swiglu_bf16(float gate, float up) {
  const float g = bf16_to_f32(f32_to_bf16(gate)), u = bf16_to_f32(f32_to_bf16(up));
  return f32_to_bf16(g / (1.f + expf(-g)) * u);
}

// Split-K arrival (mma_sk, gemv_xs, paged attention's merge). Each block of an output tile writes its partials, then
// counts itself in *flag (zero between launches). Returns true, in the whole block, for the block that arrives
// last: every other split's partials are visible to it then (read them with coherent loads), and the flag is
// already back at zero for the next launch or graph replay. Every thread of the block calls it.
__device__ __forceinline__ bool last_to_arrive(int* flag, int arrivals) {
  __shared__ int last;
  __threadfence();                                  // this block's partials are visible before the counter says so
  __syncthreads();
  if (threadIdx.x == 0) {
    last = atomicAdd(flag, 1) == arrivals - 1;
    if (last) *flag = 0;                            // every split has arrived
  }
  __syncthreads();
  const bool mine = last;
  if (mine) __threadfence();
  return mine;
}

// Programmatic dependent launch (_launch.py: launch(..., pdl=True)). pdl_wait: block until the kernel before
// this one on the stream has finished and its writes are visible; a kernel launched with PDL calls it before
// it touches anything an earlier kernel writes or reads (only constant weights may be read before it).
// It returns 0 from the asm, and kernels add it to the pointers they read after the wait, so those loads
// depend on it in the program too (a graph replay once read an input before the kernel writing it was done).
// Data an earlier kernel wrote is read with coherent loads (__ldca where L1 reuse matters, as a GEMV's x; else
// __ldcg), never the read-only path (__ldg, or what the compiler makes of const __restrict__ pointers): read-only
// loads assume the data cannot change while the kernel runs, which is false under PDL. With __ldg the GEMV's x
// was read before the norm writing it had finished (a graph replay, test_pdl_chain_in_a_graph_...); plain
// coherent loads after griddepcontrol.wait are what the CUDA guide prescribes. __ldcg there cost the GEMV a third.
// pdl_launch: let the next kernel's blocks be scheduled now (they run up to their own pdl_wait). Both are
// no-ops for a plain launch and before sm_90.
__device__ __forceinline__ int pdl_wait() {
  int z = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n\tmov.b32 %0, 0;" : "=r"(z) : : "memory");
#endif
  return z;
}

__device__ __forceinline__ void pdl_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}
