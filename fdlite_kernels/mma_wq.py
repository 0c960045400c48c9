"""Launcher for mma_wq.cu — tensor-core (mma.sync m16n8k16, bf16) GEMM for int8 / int4 weights.

repack(q, bits) -> qp (where q lives): q int codes [N, K] (int8: [-127, 127]; int4: [-8, 7]), N padded to a
    multiple of 16 and K to a multiple of KT (64 for int8, 128 for int4) with zero codes, then laid out so
    each warp's 16-byte-per-lane load of an (8 x KT) tile holds every lane's mma B fragments (see the .cu).
mma_wq(x, qp, scale, N, bits, group):
    x: bf16 [M, K] with K = the padded K (pad x with zero columns to match);
    scale: float32 [Np, G] with Np = N rounded up to 16 (int8: G = 1 per channel; int4: G = K / group,
    group a multiple of 16); returns y: bf16 [M, N] = x @ (q * scale per (n, k // group)).T
The NumPy twins are fdlite.quant's wint8 / wint4 reference matmuls.
"""
from __future__ import annotations

import numpy as np

from . import load
from ._launch import BF16, check, expect, ptr

KT = {8: 64, 4: 128}
# (MT m16 tiles, NT n8 tiles, warps) compiled in mma_wq.cu. A block reads all of x for its K range, so x is
# re-read N / (8 NT) times: more rows want more columns per block (NT), but fewer blocks leave SMs idle, and
# MT * 16 < M re-reads the weights per 16-row block. _config's rule follows the per-shape timings of the four
# Llama-3-8B projections on the H100 (BENCHMARKS.md, results_gemv_v3_h100_2026-11-24.jsonl), e.g. at M = 32 (µs,
# int8): gate_up (2,8,4) 91 vs (1,2,8) 156; down (1,2,8) 74 vs (2,4,4) 119; qkv (2,4,4) 33 vs (1,2,8) 41.
_CONFIGS = ((1, 2, 8), (2, 4, 4), (2, 8, 4), (4, 2, 4), (4, 4, 4))
_NAMES = tuple(f"mma_wq<{b}, {m}, {n}, {w}, {p}>" for b, ps in ((16, ("false",)), (8, ("false",)),
                                                                 (4, ("false", "true")))
               for p in ps for m, n, w in _CONFIGS)


def _kernel(name: str):
    """One instantiation per compile (a module of all of them takes minutes under NVRTC)."""
    check(name in _NAMES, f"{name} is not one of mma_wq.cu's configurations")
    return load("mma_wq", name_expressions=(name,)).get_function(name)


def _config(M: int, N: int, cfg=None) -> tuple[int, int, int]:
    if cfg is not None:
        check(tuple(cfg) in _CONFIGS, f"cfg {cfg} is not one of the compiled {_CONFIGS}")
        return tuple(cfg)
    if M > 64:
        return 4, 4, 4
    if M <= 16 or (M <= 32 and N <= 16 * 256):   # narrow N: 16 columns a block keeps >= 256 blocks busy
        return 1, 2, 8
    return (2, 8, 4) if N >= 64 * 150 else (2, 4, 4)


def padded(N: int, K: int, bits: int) -> tuple[int, int]:
    return -(-N // 16) * 16, -(-K // KT[bits]) * KT[bits]


def repack(q, bits: int):
    """int codes [N, K] -> uint8 [Np * Kp * bits / 8] in the kernel's fragment order, on q's array module
    (numpy, or cupy for a device q: no host round trip at load). Index/reshape/transpose/bit ops only: the
    same bytes on either."""
    check(bits in KT, f"bits = {bits}, expected 8 or 4")
    if type(q).__module__.startswith("cupy"):
        import cupy as xp  # noqa: PLC0415 - already loaded: q is one of its arrays
    else:
        xp = np
    N, K = q.shape
    Np, Kp = padded(N, K, bits)
    kt = KT[bits]
    qz = xp.zeros((Np, Kp), np.int16)
    qz[:N, :K] = q
    v = qz.reshape(Np // 8, 8, Kp // kt, kt // 16, 16)                        # (nt, g, kt, step, 16)
    idx = xp.asarray([[2 * t, 2 * t + 1, 2 * t + 8, 2 * t + 9] for t in range(4)])  # (t, 4) k per lane
    sel = v[..., idx].transpose(0, 2, 1, 4, 3, 5)                             # (nt, kt, g, t, step, 4)
    del qz, v
    if bits == 8:
        return xp.ascontiguousarray(sel.astype(np.int8)).view(np.uint8).reshape(-1)
    u = (sel + 8).astype(np.uint8)                                            # (nt, kt, g, t, step, 4) codes c0..c3
    del sel
    # a 32-bit word per step pair (s0, s1), elements e0..e7 = c0..c3 of s0, then of s1, in the nibble order
    # e0 e2 e4 e6 | e1 e3 e5 e7 (common.cuh: u4x8_to_bf16x2): bytes c0|c2<<4 of s0, of s1, then c1|c3<<4 of s0, of s1.
    # The casts pin uint8 whatever a backend promotes ``<< 4`` to (the high bits drop anyway).
    u = u.reshape(u.shape[:4] + (u.shape[4] // 2, 2, 4))                       # (..., step pair, s, c)
    lo = (u[..., 0] | (u[..., 2] << 4)).astype(np.uint8, copy=False)          # (..., pair, s): c0 | c2 << 4
    hi = (u[..., 1] | (u[..., 3] << 4)).astype(np.uint8, copy=False)          # c1 | c3 << 4
    return xp.ascontiguousarray(xp.concatenate([lo, hi], axis=-1)).reshape(-1)


def _validate(x, qp, scale, N: int, bits: int, group: int):
    """Checks shared by both entry points -> (M, K, Np, group); int8 is one group of K per channel."""
    expect(x, "x", BF16, 2)
    expect(qp, "qp", np.uint8, 1)
    expect(scale, "scale", np.float32, 2)
    M, K = x.shape
    Np, Kp = padded(N, K, bits)
    check(Kp == K, f"x has K = {K}; pad it to a multiple of {KT[bits]} (the packed weight's K)")
    check(qp.size == Np * K * bits // 8, f"qp has {qp.size} bytes, expected {Np * K * bits // 8} for N = {N}, K = {K}")
    if bits == 8:
        check(scale.shape == (Np, 1), f"scale shape {scale.shape}, expected {(Np, 1)}")
        return M, K, Np, K
    check(group % 16 == 0 and K % group == 0, f"group = {group} must be a multiple of 16 dividing K = {K}")
    check(scale.shape == (Np, K // group), f"scale shape {scale.shape}, expected {(Np, K // group)}")
    return M, K, Np, group


def mma_wq(x, qp, scale, N: int, bits: int, group: int, out=None, cfg=None):
    """cfg: (MT, NT, warps) from _CONFIGS, for benchmarks; default by M and N (_config)."""
    import cupy as cp  # noqa: PLC0415

    M, K, Np, group = _validate(x, qp, scale, N, bits, group)
    mt, nt, warps = _config(M, N, cfg)
    y = out if out is not None else cp.empty((M, N), dtype=BF16)
    post = "true" if bits == 4 and group % KT[4] == 0 else "false"   # exact codes + per-tile scaling
    fn = _kernel(f"mma_wq<{bits}, {mt}, {nt}, {warps}, {post}>")
    grid = (-(-Np // (8 * nt)), -(-M // (16 * mt)))
    fn(grid, (32 * warps,), (x, qp, scale, y, np.int32(M), np.int32(N), np.int32(K), np.int32(group)))
    return y


def mma_bf16(x, w, out=None, cfg=None):
    """Dense bf16 on the tensor cores, reading w as stored (row-major, no repack): x bf16 [M, K], w bf16 [N, K]
    C-contiguous with K % 32 == 0 -> y bf16 [M, N] = x @ w.T (fp32 accumulation). Graph-capturable (CuPy's
    cuBLAS is not), for the decode buckets of dense models; its twin is the plain matmul. 17..SK_MAX_M rows with
    K % 64 == 0 run mma_sk.cu's pipelined split-K kernel (cfg set: always this file's kernel, for benchmarks)."""
    import cupy as cp  # noqa: PLC0415

    expect(x, "x", BF16, 2)
    expect(w, "w", BF16, 2)
    M, K = x.shape
    N = w.shape[0]
    check(w.shape[1] == K, f"w has K = {w.shape[1]}, x has K = {K}")
    check(K % 32 == 0, f"K = {K} must be a multiple of 32")
    check(x.flags.c_contiguous and w.flags.c_contiguous, "x and w must be C-contiguous")
    y = out if out is not None else cp.empty((M, N), dtype=BF16)
    if M == 0:
        return y
    if cfg is None and 16 < M <= SK_MAX_M and K % 64 == 0:     # 17-64 rows: the pipelined split-K kernel (at 16
        # rows it measured 217 us over the four 8B projections against this file's 197-216; at 32: 248 vs 304)
        from .mma_sk import mma_sk_bf16  # noqa: PLC0415 - mma_sk imports this module

        return mma_sk_bf16(x, w, out=y)
    mt, nt, warps = _config(M, N, cfg)
    fn = _kernel(f"mma_wq<16, {mt}, {nt}, {warps}, false>")
    grid = (-(-N // (8 * nt)), -(-M // (16 * mt)))
    fn(grid, (32 * warps,), (x, w, ptr(None), y, np.int32(M), np.int32(N), np.int32(K), np.int32(K)))
    return y


GEMV_MAX_M = 8   # gemv_packed.cu (tensor-core GEMV, weights into registers) up to here. H100, sum over the 8B
# projections (µs): M = 1 wint4 66-70 vs mma_sk 102, M = 8 86 vs 106; at M = 16 int4 134 vs mma_sk's 116 (BENCHMARKS.md)
XS_MAX_M = 32    # gemv_xs.cu (x staged in shared memory) from there to here. H100 (2026-11-25, results_gemv_xs_...):
# wint4 qkv / o / gate_up at M = 16 14.8 / 10.3 / 44.0 us vs mma_sk's 19.1 / 15.0 / 52.3, at M = 32 22.4 / 16.3 /
# 61.9 vs 37.1 / 23.1 / 71.6. down_proj (K = 14336) lost (33.7 vs 30.3 and 54.0 vs 43.3) until gemv_xs split K over
# blocks (gemv_xs.split_plan): 23.6 vs 28.2 and 34.4 vs 38.8 (results_gemv_xsk_h100_2026-11-25.jsonl)
XS_MAX_K = None  # K from which mma_sk takes those rows instead (None: gemv_xs at every K)
SK_MAX_M = 64    # mma_sk (split-K, cp.async pipeline) up to here: 1.2-1.8x mma_wq at M = 16-64 on the 8B shapes


def gemm_packed(x, qp, scale, N: int, bits: int, group: int, out=None):
    """y = x @ W.T for the packed weights of ``repack``, routed by M (the H100 measurements in BENCHMARKS.md):
    the tensor-core GEMV (gemv_packed.cu) up to GEMV_MAX_M rows, the GEMV with x in shared memory (gemv_xs.cu, K
    split over blocks for a long K) up to XS_MAX_M rows, the split-K pipelined GEMM (mma_sk.cu) up to SK_MAX_M rows,
    mma_wq above (prefill) and for int4 groups mma_sk does not stage. Same arguments and checks as ``mma_wq``."""
    from . import mma_sk  # noqa: PLC0415 - mma_sk imports this module
    from .gemv_packed import gemv_packed  # noqa: PLC0415 - gemv_packed imports this module
    from .gemv_xs import gemv_xs  # noqa: PLC0415 - gemv_xs imports this module

    M = x.shape[0] if hasattr(x, "shape") and len(x.shape) == 2 else 0
    if 1 <= M <= GEMV_MAX_M:
        return gemv_packed(x, qp, scale, N, bits, group, out=out)
    if 1 <= M <= XS_MAX_M and (XS_MAX_K is None or x.shape[1] < XS_MAX_K) and x.data.ptr % 16 == 0:
        return gemv_xs(x, qp, scale, N, bits, group, out=out)
    if 1 <= M <= SK_MAX_M and mma_sk.supports(bits, group):
        return mma_sk.mma_sk(x, qp, scale, N, bits, group, out=out)
    return mma_wq(x, qp, scale, N, bits, group, out=out)


def gemm_packed_swiglu(x, qp, scale, N: int, bits: int, group: int, out=None):
    """silu(gate) * up of a fused gate_up projection (rows [gate; up], N = 2I) in one kernel: the decode GEMVs'
    epilogue (gemv_packed up to GEMV_MAX_M rows, gemv_xs up to XS_MAX_M) -> y bf16 [M, I]. None where no kernel
    fuses it (more rows, I % 8 != 0, x not 16-byte aligned past GEMV_MAX_M): the caller runs ``gemm_packed`` and
    then the SwiGLU kernel. Bit for bit what that pair gives (the same sums, rounded the same way)."""
    from .gemv_packed import gemv_packed  # noqa: PLC0415 - gemv_packed imports this module
    from .gemv_xs import gemv_xs  # noqa: PLC0415 - gemv_xs imports this module

    M = x.shape[0] if hasattr(x, "shape") and len(x.shape) == 2 else 0
    if N % 16:
        return None                                    # I % 8 != 0: gate and up tiles do not pair
    if 1 <= M <= GEMV_MAX_M:
        return gemv_packed(x, qp, scale, N, bits, group, out=out, gate=True)
    if 1 <= M <= XS_MAX_M and (XS_MAX_K is None or x.shape[1] < XS_MAX_K) and x.data.ptr % 16 == 0:
        return gemv_xs(x, qp, scale, N, bits, group, out=out, gate=True)
    return None
