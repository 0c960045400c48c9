"""GPU kernels against their NumPy twins on fresh random inputs (pytest -m gpu, on the lent device)."""
import types

import ml_dtypes
import numpy as np
import pytest

pytestmark = pytest.mark.gpu
BF16 = np.dtype(ml_dtypes.bfloat16)
SHAPES = [(4096, 4096), (6144, 4096), (28672, 4096), (4096, 14336), (576, 576), (1536, 576), (96, 160)]
MS = list(range(1, 17))


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _x(rng, M, K):
    return rng.standard_normal((M, K)).astype(BF16)


def _fp8_case(seed, N, K, M):
    """block_wise_fp8 weights and x -> (method, packed, x, the method's NumPy product)."""
    from fdlite.quant import get

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((N, K)).astype(np.float32) * 0.05
    x = _x(rng, M, K)
    method = get("block_wise_fp8")()
    p = method.quantize(w)
    return method, p, x, method.matmul(x.astype(np.float32), p, np)


@pytest.mark.parametrize("N,K", SHAPES)
@pytest.mark.parametrize("M", [1, 3, 8, 16])
def test_gemv_wint8(cp, N, K, M):
    from fdlite_kernels.gemv_wint8 import gemv_wint8

    rng = np.random.default_rng(N * 31 + K * 7 + M)
    x = _x(rng, M, K)
    q = rng.integers(-127, 128, (N, K)).astype(np.int8)
    s = (rng.random(N).astype(np.float32) + 0.5) / 127
    ref = x.astype(np.float32) @ (q.astype(np.float32) * s[:, None]).T
    y = cp.full((M, N), np.nan, dtype=BF16)                      # poisoned: every element must be written
    gemv_wint8(cp.asarray(x), cp.asarray(q), cp.asarray(s), out=y)
    got = cp.asnumpy(y).astype(np.float32)
    assert np.isfinite(got).all() and _rel(got, ref) < 1e-2


@pytest.mark.parametrize("N,K", SHAPES)
@pytest.mark.parametrize("M", [1, 5, 16])
@pytest.mark.parametrize("G", [32, 64, 128, -1])
def test_gemv_wint4(cp, N, K, M, G):
    from fdlite_kernels.gemv_wint4 import gemv_wint4, pack_int4

    G = K if G == -1 else G
    if K % G:
        pytest.skip("group does not divide K")
    rng = np.random.default_rng(N * 13 + K * 5 + M + G)
    x = _x(rng, M, K)
    q = rng.integers(-8, 8, (N, K))
    s = (rng.random((N, K // G)).astype(np.float32) + 0.5) / 7
    w = q.astype(np.float32) * np.repeat(s, G, axis=1)
    ref = x.astype(np.float32) @ w.T
    y = cp.full((M, N), np.nan, dtype=BF16)
    gemv_wint4(cp.asarray(x), cp.asarray(pack_int4(q)), cp.asarray(s), out=y)
    got = cp.asnumpy(y).astype(np.float32)
    assert np.isfinite(got).all() and _rel(got, ref) < 1e-2


def test_launcher_errors(cp):
    from fdlite_kernels.gemv_wint4 import gemv_wint4
    from fdlite_kernels.gemv_wint8 import gemv_wint8

    x = cp.zeros((2, 40), dtype=BF16)
    with pytest.raises(ValueError, match="K = 40 must be a multiple of 16"):
        gemv_wint8(x, cp.zeros((8, 40), np.int8), cp.ones(8, np.float32))
    with pytest.raises(ValueError, match="M <= 16 rows, got M = 17"):
        gemv_wint8(cp.zeros((17, 64), dtype=BF16), cp.zeros((8, 64), np.int8), cp.ones(8, np.float32))
    with pytest.raises(ValueError, match="scale has 4 entries for N = 8"):
        gemv_wint8(cp.zeros((1, 64), dtype=BF16), cp.zeros((8, 64), np.int8), cp.ones(4, np.float32))
    with pytest.raises(ValueError, match="dtype float32, expected bfloat16"):
        gemv_wint4(cp.zeros((1, 64), np.float32), cp.zeros((8, 32), np.uint8), cp.ones((8, 2), np.float32))


@pytest.mark.parametrize("N,K", SHAPES)
@pytest.mark.parametrize("M", [1, 7, 16])
def test_gemv_block_fp8_vs_twin(cp, N, K, M):
    """Against the method's own NumPy matmul (fp8 weights, dynamic fp8 activations)."""
    from fdlite_kernels.gemv_block_fp8 import gemv_block_fp8

    _, p, x, ref = _fp8_case(N + 3 * K + M, N, K, M)
    y = cp.full((M, N), np.nan, dtype=BF16)
    gemv_block_fp8(cp.asarray(x), cp.asarray(p.arrays["quant_weight"]), cp.asarray(p.arrays["weight_scale_inv"]),
                   out=y)
    got = cp.asnumpy(y).astype(np.float32)
    assert np.isfinite(got).all() and _rel(got, ref) < 1e-2


@pytest.mark.parametrize("N,K", [(4096, 4096), (576, 576), (96, 160), (300, 1008)])
@pytest.mark.parametrize("M", [17, 64, 300])
def test_block_fp8_above_16_rows(cp, N, K, M):
    """The stop-gap (bf16 expansion): each expanded element equals the twin's float32 value rounded to bf16; the
    routed product (mma_sk_fp8 where K % 128 == 0 up to 256 rows and in graphs, else the stop-gap with cuBLAS or
    mma_bf16) matches the method's NumPy matmul."""
    from fdlite.backend import get_backend
    from fdlite.quant import _gpu
    from fdlite.quant._common import act_fp8
    from fdlite_kernels.dequant_block_fp8 import dequant_w, dequant_x

    method, p, x, ref = _fp8_case(N + 5 * K + M, N, K, M)
    q, ws = cp.asarray(p.arrays["quant_weight"]), cp.asarray(p.arrays["weight_scale_inv"])
    wd = cp.full((N, K), np.nan, dtype=BF16)
    dequant_w(q, ws, out=wd)
    assert (cp.asnumpy(wd).view(np.uint16) == method.dequantize(p).astype(BF16).view(np.uint16)).all()
    xd = cp.asnumpy(dequant_x(cp.asarray(x)))
    assert (xd.view(np.uint16) == act_fp8(x.astype(np.float32), 128).astype(BF16).view(np.uint16)).all()
    gp = method.prepare(p, get_backend("cuda"))
    eager = cp.asnumpy(_gpu.matmul_block_fp8(method, cp.asarray(x), gp, cp)).astype(np.float32)
    assert np.isfinite(eager).all() and _rel(eager, ref) < 1e-2
    if K % 32 == 0:                                   # the captured path: mma_bf16
        stream = cp.cuda.Stream(non_blocking=True)
        with stream:
            xg = cp.asarray(x)
            _gpu.matmul_block_fp8(method, xg, gp, cp)
            stream.begin_capture()
            y = _gpu.matmul_block_fp8(method, xg, gp, cp)
            graph = stream.end_capture()
            graph.launch(stream)
            stream.synchronize()
        got = cp.asnumpy(y).astype(np.float32)
        assert np.isfinite(got).all() and _rel(got, ref) < 1e-2


@pytest.mark.parametrize("M,K", [(1, 128), (3, 576), (16, 4096), (2, 200 - 200 % 16)])
def test_act_quant_fp8_bits(cp, M, K):
    """Activation codes and scales equal the NumPy twin's (ml_dtypes round-to-nearest-even)."""
    import ml_dtypes as md

    from fdlite_kernels.gemv_block_fp8 import act_quant_fp8

    rng = np.random.default_rng(M * K)
    x = (rng.standard_normal((M, K)) * np.exp(rng.standard_normal((M, 1)))).astype(BF16)
    xq, xs = act_quant_fp8(cp.asarray(x))
    xf = x.astype(np.float32)
    Kb = -(-K // 128)
    xp = np.pad(xf, ((0, 0), (0, Kb * 128 - K))).reshape(M, Kb, 128)
    s = np.maximum(np.abs(xp).max(-1), 1e-10).astype(np.float32) / np.float32(448)
    codes = (xp / s[..., None]).astype(md.float8_e4m3fn).view(np.uint8).reshape(M, -1)
    assert np.array_equal(cp.asnumpy(xs), s)
    assert np.array_equal(cp.asnumpy(xq)[:, :K], codes[:, :K])


@pytest.mark.parametrize("N,K", SHAPES)
@pytest.mark.parametrize("M", [1, 2, 4, 9, 16, 17, 24, 64, 300])
@pytest.mark.parametrize("bits,group", [(8, -1), (4, 128), (4, 64), (4, 32), (4, -1)])
@pytest.mark.parametrize("entry", ["mma_wq", "gemm_packed"])
def test_mma_wq(cp, N, K, M, bits, group, entry):
    """Packed int8/int4 GEMM (mma_wq on the tensor cores; gemm_packed: the routed entry, i.e. the CUDA-core GEMV,
    mma_sk or mma_wq by M, K and group) vs the NumPy formula."""
    from fdlite_kernels import mma_wq as mod

    if entry == "gemm_packed" and M > mod.SK_MAX_M:
        pytest.skip("same kernel as mma_wq above SK_MAX_M")
    case = _packed_case(N, K, M, bits, group, N * 7 + K + M * 3 + bits + max(group, 0))
    if case is None:
        pytest.skip("group does not divide the padded K")
    x, qp, s, g, ref = case
    y = cp.full((M, N), np.nan, dtype=BF16)
    getattr(mod, entry)(cp.asarray(x), cp.asarray(qp), cp.asarray(s), N, bits, g, out=y)
    got = cp.asnumpy(y).astype(np.float32)
    assert np.isfinite(got).all() and _rel(got, ref) < 1e-2


_GEMV_SHAPES = [(4096, 4096), (4096, 14336), (576, 576), (96, 160), (40, 256)]


@pytest.mark.parametrize("N,K", _GEMV_SHAPES)
@pytest.mark.parametrize("M", [1, 3, 8, 9, 16])
@pytest.mark.parametrize("bits,group", [(8, -1), (4, 128), (4, 256), (4, 64), (4, 32), (4, 16), (4, 80), (4, -1)])
@pytest.mark.parametrize("depth", [None, 4])
def test_gemv_packed(cp, N, K, M, bits, group, depth):
    """Tensor-core decode GEMV (default block shape; weights through registers or the shared-memory ring) vs the
    NumPy formula, output poisoned: every scale-group form (per tile, per half / quarter tile, per step, per
    channel), ragged N, one and two B fragments."""
    from fdlite_kernels.gemv_packed import gemv_packed

    case = _packed_case(N, K, M, bits, group, N * 3 + K + M * 11 + bits + max(group, 0))
    if case is None:
        pytest.skip("group does not divide the padded K")
    x, qp, s, g, ref = case
    y = cp.full((M, N), np.nan, dtype=BF16)
    gemv_packed(cp.asarray(x), cp.asarray(qp), cp.asarray(s), N, bits, g, out=y, depth=depth)
    got = cp.asnumpy(y).astype(np.float32)
    assert np.isfinite(got).all() and _rel(got, ref) < 4e-3


@pytest.mark.parametrize("N,K", [(4096, 14336), (96, 160), (40, 256)])
@pytest.mark.parametrize("M", [1, 9])
@pytest.mark.parametrize("bits,group", [(8, -1), (4, 128)])
@pytest.mark.parametrize("rows,warps,minb", [(1, 4, 1), (1, 8, 1), (1, 16, 2), (1, 8, 4), (2, 8, 1), (2, 16, 1)])
@pytest.mark.parametrize("depth", [0, 2, 6])
def test_gemv_packed_block_shapes(cp, N, K, M, bits, group, rows, warps, minb, depth):
    """Block shapes (row pairs per block, warps splitting K, register budget) give the same answer, including a
    last block whose second row pair lies past N."""
    from fdlite_kernels.gemv_packed import gemv_packed

    from fdlite_kernels.gemv_packed import smem_bytes

    x, qp, s, g, ref = _packed_case(N, K, M, bits, group, N + K + M + bits + rows + warps)
    y = cp.full((M, N), np.nan, dtype=BF16)
    if smem_bytes(bits, g, rows, warps, depth) > 227 * 1024:     # a ring no block can hold: refused, not launched
        with pytest.raises(ValueError, match="over the 227 KiB a block may have"):
            gemv_packed(cp.asarray(x), cp.asarray(qp), cp.asarray(s), N, bits, g, out=y, rows=rows, warps=warps,
                        minb=minb, depth=depth)
        return
    gemv_packed(cp.asarray(x), cp.asarray(qp), cp.asarray(s), N, bits, g, out=y, rows=rows, warps=warps, minb=minb,
                depth=depth)
    got = cp.asnumpy(y).astype(np.float32)
    assert np.isfinite(got).all() and _rel(got, ref) < 4e-3


@pytest.mark.parametrize("N,K", [(4096, 14336), (96, 160), (40, 256), (6144, 4096)])
@pytest.mark.parametrize("M", [1, 5, 9])
@pytest.mark.parametrize("bits,group", [(8, -1), (4, 128), (4, 32)])
@pytest.mark.parametrize("rows,warps,depth", [(1, 4, -2), (1, 4, -4), (1, 8, -5), (2, 8, -3), (1, 16, -6), (1, 16, 0)])
def test_gemv_packed_register_depths(cp, N, K, M, bits, group, rows, warps, depth):
    """Weights n tiles deep in registers (the unrolled loop of each depth, its tails of 0..n - 2 tiles per warp): the
    same answer."""
    from fdlite_kernels.gemv_packed import gemv_packed

    case = _packed_case(N, K, M, bits, group, N + K + M + bits + rows + warps - depth)
    if case is None:
        pytest.skip("group does not divide the padded K")
    x, qp, s, g, ref = case
    y = cp.full((M, N), np.nan, dtype=BF16)
    gemv_packed(cp.asarray(x), cp.asarray(qp), cp.asarray(s), N, bits, g, out=y, rows=rows, warps=warps, minb=1,
                depth=depth)
    got = cp.asnumpy(y).astype(np.float32)
    assert np.isfinite(got).all() and _rel(got, ref) < 4e-3


@pytest.mark.parametrize("N,K", _GEMV_SHAPES + [(28672, 4096)])
@pytest.mark.parametrize("M", [1, 9, 16, 17, 32])
@pytest.mark.parametrize("bits,group", [(8, -1), (4, 128), (4, 64), (4, 32), (4, 16), (4, -1)])
def test_gemv_xs(cp, N, K, M, bits, group):
    """Batched decode GEMV with x staged in shared memory (default plan) vs the NumPy formula, output poisoned:
    every scale-group form, ragged N, 2 and 4 B fragments, one and several x chunks (K = 14336: 14 chunks)."""
    from fdlite_kernels.gemv_xs import gemv_xs

    case = _packed_case(N, K, M, bits, group, N * 13 + K + M * 5 + bits + max(group, 0))
    if case is None:
        pytest.skip("group does not divide the padded K")
    x, qp, s, g, ref = case
    y = cp.full((M, N), np.nan, dtype=BF16)
    gemv_xs(cp.asarray(x), cp.asarray(qp), cp.asarray(s), N, bits, g, out=y)
    got = cp.asnumpy(y).astype(np.float32)
    assert np.isfinite(got).all() and _rel(got, ref) < 4e-3


@pytest.mark.parametrize("P,S,warps,chunk_kib", [(1, 1, 16, 32), (1, 16, 16, 32), (3, 5, 16, 32), (14, 1, 16, 32),
                                                 (2, 8, 16, 64), (16, 1, 16, 16), (None, None, 8, 64),
                                                 (None, None, 8, 16)])
@pytest.mark.parametrize("M,bits,group", [(16, 4, 128), (32, 8, -1), (20, 4, 64)])
def test_gemv_xs_block_shapes(cp, P, S, warps, chunk_kib, M, bits, group):
    """Every split of a block into row pairs x K slices, and every x chunk size, gives the same answer, with a
    last block that runs past N."""
    from fdlite_kernels.gemv_xs import gemv_xs

    x, qp, s, g, ref = _packed_case(1000, 4096, M, bits, group, (P or 0) * 31 + (S or 0) + M + bits + chunk_kib)
    y = cp.full((M, 1000), np.nan, dtype=BF16)
    gemv_xs(cp.asarray(x), cp.asarray(qp), cp.asarray(s), 1000, bits, g, out=y, pairs_per_block=P, slices=S,
            warps=warps, chunk_kib=chunk_kib)
    got = cp.asnumpy(y).astype(np.float32)
    assert np.isfinite(got).all() and _rel(got, ref) < 4e-3


@pytest.mark.parametrize("ksplit,P,S", [(2, None, None), (3, 16, 1), (7, 4, 4), (8, 16, 1), (55, 2, 8)])
@pytest.mark.parametrize("M,bits,group", [(16, 4, 128), (32, 8, -1), (20, 4, 64), (9, 4, 32)])
def test_gemv_xs_k_split(cp, ksplit, P, S, M, bits, group):
    """K split over blocks (a workspace and the last block's ordered sum): ragged splits, a split of one K tile,
    a last row block past N, output poisoned; twice, so the arrival counters are left at zero."""
    from fdlite_kernels.gemv_xs import gemv_xs

    x, qp, s, g, ref = _packed_case(1000, 14336, M, bits, group, ksplit * 7 + (P or 0) + M + bits)
    for _ in range(2):
        y = cp.full((M, 1000), np.nan, dtype=BF16)
        gemv_xs(cp.asarray(x), cp.asarray(qp), cp.asarray(s), 1000, bits, g, out=y, pairs_per_block=P, slices=S,
                ksplit=ksplit)
        got = cp.asnumpy(y).astype(np.float32)
        assert np.isfinite(got).all() and _rel(got, ref) < 4e-3


@pytest.mark.parametrize("N,K,M", [(n, k, m) for n, k in [(2048, 14336), (96, 160), (32, 576)]
                                   for m in (1, 3, 8, 9, 16, 17, 32)] + [(28672, 4096, m) for m in (1, 9, 32)])
@pytest.mark.parametrize("bits,group", [(8, -1), (4, 128), (4, 64), (4, 32), (4, -1)])
def test_gate_up_swiglu_fused_equals_the_two_steps(cp, N, K, M, bits, group):
    """SwiGLU in the decode GEMVs' epilogue (gemv_packed to 8 rows, gemv_xs to 32; K = 14336 splits K over blocks)
    gives, bit for bit, the plain GEMM then fused_ops.silu_mul, and is near the NumPy twin (ops.swiglu of the
    formula); output poisoned, run twice (the split counters are left at zero)."""
    from fdlite import ops
    from fdlite_kernels.fused_ops import silu_mul
    from fdlite_kernels.mma_wq import gemm_packed, gemm_packed_swiglu

    case = _packed_case(N, K, M, bits, group, N * 7 + K + M * 3 + bits + max(group, 0))
    if case is None:
        pytest.skip("group does not divide the padded K")
    x, qp, s, g, ref = case
    xd, qd, sd = cp.asarray(x), cp.asarray(qp), cp.asarray(s)
    two_steps = cp.asnumpy(silu_mul(gemm_packed(xd, qd, sd, N, bits, g)))
    twin = ops.swiglu(ref.astype(BF16), np).astype(np.float32)
    for _ in range(2):
        y = cp.full((M, N // 2), np.nan, dtype=BF16)
        assert gemm_packed_swiglu(xd, qd, sd, N, bits, g, out=y) is y
        got = cp.asnumpy(y)
        assert np.array_equal(got.view(np.uint16), two_steps.view(np.uint16))
        assert _rel(got.astype(np.float32), twin) < 1e-2


def test_gate_up_swiglu_rejects_an_unpaired_weight(cp):
    from fdlite_kernels.gemv_packed import gemv_packed
    from fdlite_kernels.gemv_xs import gemv_xs
    from fdlite_kernels.mma_wq import gemm_packed_swiglu

    x, qp, s, g, _ = _packed_case(40, 256, 9, 4, 128, 3)
    args = (cp.asarray(x), cp.asarray(qp), cp.asarray(s), 40, 4, g)
    assert gemm_packed_swiglu(*args) is None                      # I = 20: not whole n8 tiles, the two steps run
    x33, q33, s33, g33, _ = _packed_case(96, 128, 33, 4, 128, 1)
    assert gemm_packed_swiglu(cp.asarray(x33), cp.asarray(q33), cp.asarray(s33), 96, 4, g33) is None   # past gemv_xs
    with pytest.raises(ValueError, match="I a multiple of 8, got N = 40"):
        gemv_xs(*args, gate=True)
    with pytest.raises(ValueError, match="I a multiple of 8, got N = 40"):
        gemv_packed(cp.asarray(x[:1]), *args[1:], gate=True)


def test_gemv_xs_rejects_bad_input(cp):
    from fdlite_kernels.gemv_xs import gemv_xs

    x, qp, s, g, _ = _packed_case(96, 128, 33, 4, 128, 1)
    with pytest.raises(ValueError, match="1..32 rows, got M = 33"):
        gemv_xs(cp.asarray(x), cp.asarray(qp), cp.asarray(s), 96, 4, g)
    with pytest.raises(ValueError, match="pairs_per_block = 4 x slices = 5"):
        gemv_xs(cp.asarray(x[:3]), cp.asarray(qp), cp.asarray(s), 96, 4, g, pairs_per_block=4, slices=5)
    with pytest.raises(ValueError, match="chunk_kib = 48"):
        gemv_xs(cp.asarray(x[:3]), cp.asarray(qp), cp.asarray(s), 96, 4, g, chunk_kib=48)
    with pytest.raises(ValueError, match=r"ksplit = 2 must be in \[1, 1\]"):
        gemv_xs(cp.asarray(x[:3]), cp.asarray(qp), cp.asarray(s), 96, 4, g, ksplit=2)


def test_gemv_packed_rejects_bad_input(cp):
    from fdlite_kernels.gemv_packed import gemv_packed

    x, qp, s, g, _ = _packed_case(96, 128, 17, 4, 128, 1)
    with pytest.raises(ValueError, match="1..16 rows, got M = 17"):
        gemv_packed(cp.asarray(x), cp.asarray(qp), cp.asarray(s), 96, 4, g)
    with pytest.raises(ValueError, match="warps = 3"):
        gemv_packed(cp.asarray(x[:1]), cp.asarray(qp), cp.asarray(s), 96, 4, g, warps=3)
    with pytest.raises(ValueError, match="depth = 1"):
        gemv_packed(cp.asarray(x[:1]), cp.asarray(qp), cp.asarray(s), 96, 4, g, depth=1)


def _packed_case(N, K, M, bits, group, seed):
    """Random codes, scales and x for the packed GEMMs -> (x, qp, s, g, ref) on the host, or None when the group
    does not divide the padded K."""
    from fdlite_kernels.mma_wq import padded, repack

    Np, Kp = padded(N, K, bits)
    g = Kp if group == -1 else group
    if Kp % g:
        return None
    rng = np.random.default_rng(seed)
    lo, hi = (-128, 128) if bits == 8 else (-8, 8)
    q = rng.integers(lo, hi, (N, K))
    G = 1 if bits == 8 else Kp // g
    s = np.zeros((Np, G), np.float32)
    s[:N] = (rng.random((N, G)) + 0.5) / hi
    qz = np.zeros((N, Kp))
    qz[:, :K] = q
    w = qz * np.repeat(s[:N], Kp // G, axis=1)                      # (N, Kp)
    x = np.zeros((M, Kp), BF16)
    x[:, :K] = _x(rng, M, K)
    return x, repack(q, bits), s, g, x.astype(np.float32) @ w.T.astype(np.float32)


_SK_CASES = [(N, K, M) for N, K in [(4096, 4096), (576, 576), (1536, 576), (96, 160)]
             for M in [1, 3, 16, 17, 32, 33, 64, 300]] + [(6144, 4096, 16), (28672, 4096, 32), (4096, 14336, 64),
                                                                (4096, 14336, 24)]


@pytest.mark.parametrize("N,K,M", _SK_CASES)
@pytest.mark.parametrize("bits,group", [(8, -1), (4, 128), (4, 64), (4, -1)])
def test_mma_sk(cp, N, K, M, bits, group):
    """Split-K pipelined GEMM (default plan) vs the NumPy formula, output poisoned; launched twice, so the
    split-K counters it leaves behind are proven reset."""
    from fdlite_kernels.mma_sk import mma_sk

    case = _packed_case(N, K, M, bits, group, N * 5 + K + M * 7 + bits)
    if case is None:
        pytest.skip("group does not divide the padded K")
    x, qp, s, g, ref = case
    xd, qd, sd = cp.asarray(x), cp.asarray(qp), cp.asarray(s)
    for _ in range(2):
        y = cp.full((M, N), np.nan, dtype=BF16)
        mma_sk(xd, qd, sd, N, bits, g, out=y)
        got = cp.asnumpy(y).astype(np.float32)
        assert np.isfinite(got).all() and _rel(got, ref) < 1e-2


@pytest.mark.parametrize("warps", [4, 8])
@pytest.mark.parametrize("mt", [1, 2, 4])
@pytest.mark.parametrize("splits", [1, 2, 5, 32])
@pytest.mark.parametrize("bits,group", [(8, -1), (4, 128), (4, 32)])
def test_mma_sk_plans(cp, warps, mt, splits, bits, group):
    """Every block height and split count, including splits that leave the last one short."""
    from fdlite_kernels.mma_sk import mma_sk

    case = _packed_case(1536, 4096, 40, bits, group, mt * 100 + splits + bits + warps)
    x, qp, s, g, ref = case
    y = cp.full((40, 1536), np.nan, dtype=BF16)
    mma_sk(cp.asarray(x), cp.asarray(qp), cp.asarray(s), 1536, bits, g, out=y, mt=mt, splits=splits, warps=warps)
    got = cp.asnumpy(y).astype(np.float32)
    assert np.isfinite(got).all() and _rel(got, ref) < 1e-2


@pytest.mark.parametrize("warps", [4, 8])
@pytest.mark.parametrize("mt", [1, 2, 4])
@pytest.mark.parametrize("splits", [1, 3, 16])
@pytest.mark.parametrize("N,M", [(1000, 40), (136, 1), (4096, 64)])
def test_mma_sk_bf16(cp, warps, mt, splits, N, M):
    """Dense bf16 through the pipelined split-K kernel (B fragments by ldmatrix), every plan, ragged N."""
    from fdlite_kernels.mma_sk import mma_sk_bf16

    rng = np.random.default_rng(N + M + mt * 10 + splits + warps)
    K = 1024
    x = _x(rng, M, K)
    w = (rng.standard_normal((N, K)) * 0.02).astype(BF16)
    y = cp.full((M, N), np.nan, dtype=BF16)
    mma_sk_bf16(cp.asarray(x), cp.asarray(w), out=y, mt=mt, splits=splits, warps=warps)
    got = cp.asnumpy(y).astype(np.float32)
    assert np.isfinite(got).all() and _rel(got, x.astype(np.float32) @ w.astype(np.float32).T) < 1e-2


@pytest.mark.parametrize("N,K", [(4096, 4096), (1000, 1024), (136, 256), (4096, 14336)])
@pytest.mark.parametrize("M", [1, 5, 16, 33, 64, 200])
@pytest.mark.parametrize("mt,splits", [(None, None), (1, 1), (2, 3)])
def test_mma_sk_fp8_vs_twin(cp, N, K, M, mt, splits):
    """block_wise_fp8 on the e4m3 tensor cores against the method's NumPy matmul (activations quantized per token
    and 128 columns, weights per 128 x 128 block), output poisoned, ragged N, every plan."""
    from fdlite_kernels.mma_sk import mma_sk_fp8

    if K == 14336 and (M not in (1, 64) or mt is not None):
        pytest.skip("the long K at two row counts is enough")
    if splits is not None and splits > K // 128:
        pytest.skip("more splits than K tiles (the launcher refuses them: test_mma_sk_plan_covers_k_exactly)")
    _, p, x, ref = _fp8_case(N + 3 * K + 7 * M + (mt or 0) + (splits or 0), N, K, M)
    y = cp.full((M, N), np.nan, dtype=BF16)
    mma_sk_fp8(cp.asarray(x), cp.asarray(p.arrays["quant_weight"]), cp.asarray(p.arrays["weight_scale_inv"]), out=y,
               mt=mt, splits=splits)
    got = cp.asnumpy(y).astype(np.float32)
    assert np.isfinite(got).all() and _rel(got, ref) < 1e-2


def test_mma_sk_graph_replay(cp):
    """Captured in a CUDA graph and replayed on new inputs: the split-K counters and workspace work in replays,
    and the result is bit-identical to an eager launch (the splits are summed in a fixed order)."""
    from fdlite_kernels.mma_sk import mma_sk

    x, qp, s, g, _ = _packed_case(4096, 4096, 32, 4, 128, 11)
    qd, sd = cp.asarray(qp), cp.asarray(s)
    xd = cp.asarray(x)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        y = mma_sk(xd, qd, sd, 4096, 4, 128)                 # warm-up: compile, counters
        stream.begin_capture()
        y = mma_sk(xd, qd, sd, 4096, 4, 128)
        graph = stream.end_capture()
        rng = np.random.default_rng(3)
        for _ in range(3):
            xn = _x(rng, 32, 4096)
            xd[...] = cp.asarray(xn)
            graph.launch(stream)
            stream.synchronize()
            eager = mma_sk(xd, qd, sd, 4096, 4, 128)          # same plan: same sums in the same order
            assert np.array_equal(cp.asnumpy(y).view(np.uint16), cp.asnumpy(eager).view(np.uint16))


@pytest.mark.parametrize("N,K", [(4096, 4096), (6144, 4096), (4096, 14336), (128256, 4096), (576, 576), (40, 64),
                                 (1000, 96)])
@pytest.mark.parametrize("M", [1, 2, 5, 16, 17, 32, 64, 200])
def test_mma_bf16(cp, N, K, M):
    """Dense bf16 on the tensor cores, w read row-major (the graph's dense kernel) vs float32 matmul."""
    from fdlite_kernels.mma_wq import mma_bf16

    rng = np.random.default_rng(N + K * 3 + M)
    x = _x(rng, M, K)
    w = (rng.standard_normal((N, K)) * 0.02).astype(BF16)
    y = cp.full((M, N), np.nan, dtype=BF16)
    mma_bf16(cp.asarray(x), cp.asarray(w), out=y)
    got = cp.asnumpy(y).astype(np.float32)
    assert np.isfinite(got).all() and _rel(got, x.astype(np.float32) @ w.astype(np.float32).T) < 1e-2


def test_mma_bf16_errors(cp):
    from fdlite_kernels.mma_wq import mma_bf16

    x = cp.zeros((2, 48), dtype=BF16)
    with pytest.raises(ValueError, match="K = 48 must be a multiple of 32"):
        mma_bf16(x, cp.zeros((8, 48), dtype=BF16))
    with pytest.raises(ValueError, match="w has K = 64, x has K = 48"):
        mma_bf16(x, cp.zeros((8, 64), dtype=BF16))


@pytest.mark.parametrize("N,K", [(4096, 4096), (576, 576), (1536, 576), (96, 160), (4096, 14336)])
@pytest.mark.parametrize("M", [1, 3])
def test_gemv_wint2_vs_twin(cp, N, K, M):
    """WINT2 (CCQ) decode GEMV against fdlite.quant.wint2's reference matmul on the same packed tensors."""
    from fdlite.quant import get
    from fdlite_kernels.gemv_wint2 import gemv_wint2

    rng = np.random.default_rng(N + K + M)
    method = get("wint2")()
    p = method.quantize(rng.standard_normal((N, K)).astype(np.float32) * 0.02)
    x = _x(rng, M, K)
    ref = method.matmul(x.astype(np.float32), p, np)
    a = {k: cp.asarray(v) for k, v in p.arrays.items()}
    y = cp.full((M, N), np.nan, dtype=BF16)
    gemv_wint2(cp.asarray(x), a["quant_weight"], a["weight_scale"], a["super_scales"], a["code_scale"],
               a["code_zp"], out=y)
    got = cp.asnumpy(y).astype(np.float32)
    assert np.isfinite(got).all() and _rel(got, ref) < 1e-2


@pytest.mark.parametrize("M", [5, 9, 16, 20])
def test_wint2_batched_rows_on_the_gpu(cp, M):
    """Past 4 rows the method runs gemv_wint2 4 rows a launch (to 16 rows, and at any M inside a graph capture,
    where the float32 formula's cuBLAS is refused): eager and captured results against the NumPy twin."""
    import dataclasses

    from fdlite.quant import get

    rng = np.random.default_rng(M)
    method = get("wint2")()
    p = method.quantize(rng.standard_normal((300, 512)).astype(np.float32) * 0.02)
    x = _x(rng, M, 512)
    ref = method.matmul(x.astype(np.float32), p, np)
    pd = dataclasses.replace(p, arrays={k: cp.asarray(v) for k, v in p.arrays.items()})
    xd = cp.asarray(x)
    eager = cp.asnumpy(method.matmul(xd, pd, cp)).astype(np.float32)
    assert np.isfinite(eager).all() and _rel(eager, ref) < 1e-2
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        method.matmul(xd, pd, cp)
        stream.begin_capture()
        y = method.matmul(xd, pd, cp)
        graph = stream.end_capture()
        graph.launch(stream)
        stream.synchronize()
    got = cp.asnumpy(y).astype(np.float32)
    assert np.isfinite(got).all() and _rel(got, ref) < 1e-2


@pytest.mark.parametrize("M", [1, 5])
def test_pdl_chain_in_a_graph_equals_plain_launches(cp, monkeypatch, M):
    """A dependent chain of PDL-launched kernels (norm -> int4 GEMV -> SwiGLU -> int8 GEMV -> norm; each reads the
    one before's output, and the GEMVs start their weight loads before pdl_wait) replayed from a CUDA graph many
    times gives bit for bit what plain launches give, eagerly and in a graph: a missing or misplaced wait would
    read stale inputs."""
    from fdlite_kernels import fused_ops
    from fdlite_kernels._launch import pdl_enabled
    from fdlite_kernels.gemv_packed import gemv_packed

    H, I = 4096, 2048
    a, b = _packed_case(2 * I, H, M, 4, 128, 11), _packed_case(H, I, M, 8, -1, 12)
    rng = np.random.default_rng(M)
    x0, d, w = (cp.asarray(rng.standard_normal(s).astype(BF16)) for s in ((M, H), (M, H), (H,)))
    wa, wb = [tuple(cp.asarray(v) for v in c[1:3]) + (c[3],) for c in (a, b)]

    def chain(x):                                                  # every stage's output, kept alive
        h = fused_ops.add_rms_norm(x, d, w, 1e-5)
        gu = gemv_packed(h, wa[0], wa[1], 2 * I, 4, wa[2])
        sw = fused_ops.silu_mul(gu)
        y = gemv_packed(sw, wb[0], wb[1], H, 8, wb[2])
        return [h, gu, sw, y, fused_ops.rms_norm(y, w, 1e-5)]

    def run(pdl, graph):
        monkeypatch.setenv("FDLITE_PDL", pdl)
        s = cp.cuda.Stream(non_blocking=True)
        with s:
            x = x0.copy()
            if not graph:
                return [[cp.asnumpy(v) for v in chain(x)] for _ in range(3)]   # x accumulates d: three steps
            s.begin_capture()
            outs = chain(x)
            g = s.end_capture()
            got = []
            for _ in range(3):
                g.launch(s)
                s.synchronize()
                got.append([cp.asnumpy(v) for v in outs])
            return got

    want = run("0", False)
    if int(cp.cuda.Device().compute_capability) >= 90:
        monkeypatch.setenv("FDLITE_PDL", "1")
        assert pdl_enabled()
    names = ("h", "gu", "silu", "y", "out")
    for pdl, graph in (("0", True), ("1", False), ("1", True)):
        got = run(pdl, graph)
        bad = [f"step {i} {n}: {int((got[i][j] != want[i][j]).sum())} of {want[i][j].size} differ"
               for i in range(3) for j, n in enumerate(names) if not np.array_equal(got[i][j], want[i][j])]
        assert not bad, f"PDL={pdl} graph={graph}: " + "; ".join(bad)


ROWS_SHAPES = [(4096, 4096), (6144, 4096), (4096, 14336), (1000, 1024), (136, 256), (40, 128)]


@pytest.mark.parametrize("N,K", ROWS_SHAPES + [(96, 192)])
@pytest.mark.parametrize("M", [1, 2, 5, 8, 12, 16])
def test_gemv_rows_bf16_vs_twin(cp, N, K, M):
    """Dense bf16 decode GEMV over the row-major weight (gemv_rows.cu) against the float32 product: ragged N
    (rows past N read row N - 1 and are not stored), output poisoned, every compiled block shape on one shape."""
    from fdlite_kernels.gemv_rows import SHAPES, gemv_rows_bf16

    rng = np.random.default_rng(N + 3 * K + M)
    x = _x(rng, M, K)
    w = (rng.standard_normal((N, K)) * 0.02).astype(BF16)
    ref = x.astype(np.float32) @ w.astype(np.float32).T
    xd, wd = cp.asarray(x), cp.asarray(w)
    for rows, warps in SHAPES if (N, K) == (1000, 1024) and M <= 8 else [(None, None)]:
        y = cp.full((M, N), np.nan, dtype=BF16)
        gemv_rows_bf16(xd, wd, out=y, rows=rows, warps=warps)
        got = cp.asnumpy(y).astype(np.float32)
        assert np.isfinite(got).all() and _rel(got, ref) < 1e-2, (rows, warps)


@pytest.mark.parametrize("N,K", ROWS_SHAPES + [(28672, 4096)])
@pytest.mark.parametrize("M", [1, 3, 8, 16])
def test_gemv_rows_fp8_vs_twin(cp, N, K, M):
    """block_wise_fp8 decode GEMV (e4m3 mma over the stored weight, x quantized in the kernel's prologue) against
    the method's NumPy matmul, and against mma_sk_fp8 (act_quant_fp8's codes, the same products: only the fp32
    summation order differs). The persistent grid (fewer blocks than row pairs) runs on 28672 rows."""
    from fdlite_kernels.gemv_rows import SHAPES, gemv_rows_fp8
    from fdlite_kernels.mma_sk import mma_sk_fp8

    if N == 28672 and M != 1:
        pytest.skip("one row count for the large N")
    _, p, x, ref = _fp8_case(N + 7 * K + M, N, K, M)
    xd = cp.asarray(x)
    q, ws = cp.asarray(p.arrays["quant_weight"]), cp.asarray(p.arrays["weight_scale_inv"])
    sk = cp.asnumpy(mma_sk_fp8(xd, q, ws)).astype(np.float32)
    for rows, warps in SHAPES if (N, K) == (1000, 1024) and M <= 8 else [(None, None)]:
        y = cp.full((M, N), np.nan, dtype=BF16)
        gemv_rows_fp8(xd, q, ws, out=y, rows=rows, warps=warps)
        got = cp.asnumpy(y).astype(np.float32)
        assert np.isfinite(got).all() and _rel(got, ref) < 1e-2, (rows, warps)
        assert _rel(got, sk) < 2e-3, (rows, warps)


@pytest.mark.parametrize("N,K", ROWS_SHAPES)
@pytest.mark.parametrize("M", [1, 3, 8, 12])
def test_gemv_rows_fp8_channel_vs_twin(cp, N, K, M):
    """wfp8afp8 decode (e4m3 mma over the stored weight, x quantized per token over all of K in the prologue)
    against the method's NumPy matmul, output poisoned; the routed matmul (fdlite.quant._gpu) takes the kernel."""
    from fdlite.quant import get
    from fdlite_kernels.gemv_rows import SHAPES, gemv_rows_fp8_channel

    rng = np.random.default_rng(N + 11 * K + M)
    method = get("wfp8afp8")()
    p = method.quantize(rng.standard_normal((N, K)).astype(np.float32) * 0.05)
    x = (rng.standard_normal((M, K)) * np.exp(rng.standard_normal((M, 1)))).astype(BF16)   # a scale per token
    ref = method.matmul(x.astype(np.float32), p, np)
    xd = cp.asarray(x)
    q, ws = cp.asarray(p.arrays["quant_weight"]), cp.asarray(p.arrays["weight_scale"])
    for rows, warps in SHAPES if (N, K) == (1000, 1024) and M <= 8 else [(None, None)]:
        y = cp.full((M, N), np.nan, dtype=BF16)
        gemv_rows_fp8_channel(xd, q, ws, out=y, rows=rows, warps=warps)
        got = cp.asnumpy(y).astype(np.float32)
        assert np.isfinite(got).all() and _rel(got, ref) < 1e-2, (rows, warps)
    planned = cp.asnumpy(gemv_rows_fp8_channel(xd, q, ws))
    routed = cp.asnumpy(method.matmul(xd, type(p)(p.method, p.shape, {"quant_weight": q, "weight_scale": ws}, p.meta),
                                      cp))
    assert np.array_equal(routed.view(np.uint16), planned.view(np.uint16))


@pytest.mark.parametrize("N,K", ROWS_SHAPES)
@pytest.mark.parametrize("M", [1, 3, 8, 16, 20])
def test_gemv_rows_int8_vs_twin(cp, N, K, M):
    """w8a8 (dynamic) decode on gemv_rows' int8 mode (integer mma over the stored weight, x quantized per token in
    the prologue) against the method's NumPy matmul, output poisoned, every block shape on one shape; the routed
    matmul (20 rows: three launches) takes it too."""
    from fdlite.quant import get
    from fdlite_kernels.gemv_rows import MAX_M, SHAPES, gemv_rows_int8

    rng = np.random.default_rng(N + 13 * K + M)
    method = get("w8a8")()
    p = method.quantize(rng.standard_normal((N, K)).astype(np.float32) * 0.05)
    x = (rng.standard_normal((M, K)) * np.exp(rng.standard_normal((M, 1)))).astype(BF16)
    ref = method.matmul(x.astype(np.float32), p, np)
    xd = cp.asarray(x)
    q, ws = cp.asarray(p.arrays["quant_weight"]), cp.asarray(p.arrays["weight_scale"])
    if M <= MAX_M:
        for rows, warps in SHAPES if (N, K) == (1000, 1024) and M <= 8 else [(None, None)]:
            y = cp.full((M, N), np.nan, dtype=BF16)
            gemv_rows_int8(xd, q, ws, out=y, rows=rows, warps=warps)
            got = cp.asnumpy(y).astype(np.float32)
            assert np.isfinite(got).all() and _rel(got, ref) < 1e-2, (rows, warps)
    dev = type(p)(p.method, p.shape, {"quant_weight": q, "weight_scale": ws}, p.meta)
    routed = cp.asnumpy(method.matmul(xd, dev, cp)).astype(np.float32)
    assert np.isfinite(routed).all() and _rel(routed, ref) < 1e-2


@pytest.mark.parametrize("N,K", [(4096, 4096), (6144, 4096), (4096, 14336), (1000, 1024), (136, 256), (48, 200)])
@pytest.mark.parametrize("M", [1, 3, 8, 20])
def test_gemv_rows_w4a8_vs_twin(cp, N, K, M):
    """w4a8 (dynamic, groups of 128) decode on gemv_rows' int4 x int8 mode against the method's NumPy matmul: the
    nibbles enter the s8 mma as q + 8 and the prologue's code sums take 8 sum xq back out; a K padded to the packed
    256 (K = 200), a per-token scale spread and 20 rows (three launches) through the routed matmul."""
    from fdlite.quant import get
    from fdlite_kernels.gemv_rows import MAX_M_INT4 as MAX_M, gemv_rows_w4a8

    rng = np.random.default_rng(N + 17 * K + M)
    method = get("w4a8")()
    p = method.quantize(rng.standard_normal((N, K)).astype(np.float32) * 0.05)
    x = (rng.standard_normal((M, K)) * np.exp(rng.standard_normal((M, 1)))).astype(BF16)
    ref = method.matmul(x.astype(np.float32), p, np)
    q, ws = cp.asarray(p.arrays["quant_weight"]), cp.asarray(p.arrays["weight_scale"])
    Kp = q.shape[1] * 2
    if M <= MAX_M and Kp == K:
        y = cp.full((M, N), np.nan, dtype=BF16)
        gemv_rows_w4a8(cp.asarray(x), q, ws, out=y)
        got = cp.asnumpy(y).astype(np.float32)
        assert np.isfinite(got).all() and _rel(got, ref) < 1e-2
    dev = type(p)(p.method, p.shape, {"quant_weight": q, "weight_scale": ws}, p.meta)
    routed = cp.asnumpy(method.matmul(cp.asarray(x), dev, cp)).astype(np.float32)
    assert np.isfinite(routed).all() and _rel(routed, ref) < 1e-2


@pytest.mark.parametrize("N,K", [(4096, 4096), (6144, 4096), (4096, 14336), (1000, 1024), (136, 256), (48, 200)])
@pytest.mark.parametrize("M", [1, 3, 8, 20])
def test_gemv_rows_w4afp8_vs_twin(cp, N, K, M):
    """w4afp8 (groups of 128, x to e4m3 per token and group in the prologue) on gemv_rows' int4 x e4m3 mode against
    the method's NumPy matmul: nibbles looked up as e4m3(q + 8), the prologue's sums of code values taking 8 sum x
    back out; every block shape on one shape, a K padded to 256 (K = 200) and 20 rows through the routed matmul."""
    from fdlite.quant import get
    from fdlite_kernels.gemv_rows import MAX_M_INT4 as MAX_M, SHAPES, gemv_rows_w4afp8

    rng = np.random.default_rng(N + 19 * K + M)
    method = get("w4afp8")()
    p = method.quantize(rng.standard_normal((N, K)).astype(np.float32) * 0.05)
    x = (rng.standard_normal((M, K)) * np.exp(rng.standard_normal((M, 1)))).astype(BF16)
    ref = method.matmul(x.astype(np.float32), p, np)
    q, ws = cp.asarray(p.arrays["quant_weight"]), cp.asarray(p.arrays["weight_scale"])
    if M <= MAX_M and q.shape[1] * 2 == K:
        for rows, warps in SHAPES if (N, K) == (1000, 1024) and M <= 8 else [(None, None)]:
            y = cp.full((M, N), np.nan, dtype=BF16)
            gemv_rows_w4afp8(cp.asarray(x), q, ws, out=y, rows=rows, warps=warps)
            got = cp.asnumpy(y).astype(np.float32)
            assert np.isfinite(got).all() and _rel(got, ref) < 5e-3, (rows, warps)
    dev = type(p)(p.method, p.shape, {"quant_weight": q, "weight_scale": ws}, p.meta)
    routed = cp.asnumpy(method.matmul(cp.asarray(x), dev, cp)).astype(np.float32)
    assert np.isfinite(routed).all() and _rel(routed, ref) < 5e-3


@pytest.mark.parametrize("N,K", [(4096, 4096), (6144, 4096), (4096, 14336), (1000, 1024), (136, 256), (48, 200)])
@pytest.mark.parametrize("M", [1, 3, 8, 16, 20])
def test_gemv_rows_nf4_vs_twin(cp, N, K, M):
    """nf4 (weight-only, groups of 64) on gemv_rows' nf4 mode against the method's NumPy matmul (the levels as bf16:
    2^-9 relative each): the codes permuted by prepare() on a GPU backend, output poisoned, every block shape on one
    shape, a K padded to 256 (K = 200) and 20 rows through the routed matmul; one-hot x reads single decoded weights."""
    from fdlite.quant import get
    from fdlite_kernels.gemv_rows import MAX_M, SHAPES, gemv_rows_nf4

    rng = np.random.default_rng(N + 23 * K + M)
    method = get("nf4")()
    p = method.quantize(rng.standard_normal((N, K)).astype(np.float32) * 0.05)
    x = (rng.standard_normal((M, K)) * np.exp(rng.standard_normal((M, 1)))).astype(BF16)
    ref = method.matmul(x.astype(np.float32), p, np)
    dev = method.prepare(p, types.SimpleNamespace(is_gpu=True, asarray=cp.asarray))
    assert dev.meta["gpu"] == "rows_nf4"
    q, ws = dev.arrays["quant_weight"], dev.arrays["weight_scale"]
    if M <= MAX_M and q.shape[1] * 2 == K:
        for rows, warps in SHAPES if (N, K) == (1000, 1024) and M <= 8 else [(None, None)]:
            y = cp.full((M, N), np.nan, dtype=BF16)
            gemv_rows_nf4(cp.asarray(x), q, ws, out=y, rows=rows, warps=warps)
            got = cp.asnumpy(y).astype(np.float32)
            assert np.isfinite(got).all() and _rel(got, ref) < 5e-3, (rows, warps)
        if M == 8:                                     # x[m] = e_k: y[m, n] = bf16(bf16(level) * absmax), exactly
            ks = rng.choice(K, 8, replace=False)
            e = np.zeros((8, K), BF16)
            e[np.arange(8), ks] = 1
            W = method.dequantize(p)                                               # float32 level * absmax
            lv = np.asarray(method.levels)[method.unpack(p)[:, ks]].astype(BF16).astype(np.float32).T   # (8, N)
            s = p.arrays["weight_scale"][:, ks // 64].T
            got = cp.asnumpy(gemv_rows_nf4(cp.asarray(e), q, ws)).astype(np.float32)
            assert np.array_equal(got, (lv * s).astype(BF16).astype(np.float32))
            assert np.abs(got - W[:, ks].T).max() <= 2 ** -7 * np.abs(W).max()
    routed = cp.asnumpy(method.matmul(cp.asarray(x), dev, cp)).astype(np.float32)
    assert np.isfinite(routed).all() and _rel(routed, ref) < 5e-3


@pytest.mark.parametrize("M", [9, 20, 64])
def test_wfp8afp8_rows_above_16_take_gemv_rows_per_16(cp, M):
    """wfp8afp8 at 9-64 rows (batched decode): gemv_rows per 16 rows (two token fragments) against the twin, and
    each chunk equal to a launch on those rows alone (per-token quantization: the chunks are exact)."""
    from fdlite.quant import get
    from fdlite_kernels.gemv_rows import gemv_rows_fp8_channel

    rng = np.random.default_rng(M)
    method = get("wfp8afp8")()
    p = method.quantize(rng.standard_normal((1000, 1024)).astype(np.float32) * 0.05)
    x = _x(rng, M, 1024)
    ref = method.matmul(x.astype(np.float32), p, np)
    dev = type(p)(p.method, p.shape, {k: cp.asarray(v) for k, v in p.arrays.items()}, p.meta)
    got = cp.asnumpy(method.matmul(cp.asarray(x), dev, cp))
    assert _rel(got.astype(np.float32), ref) < 1e-2
    last = cp.asnumpy(gemv_rows_fp8_channel(cp.asarray(x[(M - 1) // 16 * 16:]), dev.arrays["quant_weight"],
                                            dev.arrays["weight_scale"]))
    assert np.array_equal(got[(M - 1) // 16 * 16:].view(np.uint16), last.view(np.uint16))


@pytest.mark.parametrize("N,K", [(6144, 4096), (4096, 14336), (136, 256)])
@pytest.mark.parametrize("M", [1, 3, 8])
def test_gemv_rows_pre_equals_per_block(cp, N, K, M):
    """x quantized once by gemv_rows_quant_x (pre=True: a launch before, the GEMV a block per row pairs reading it from
    global memory) gives every x-quantizing mode's output bit for bit as each block's own prologue (pre=False) at the
    same block shape: the same codes, scales and sums, the same mma and summation order per row pair (the default
    plans differ in warps, so in the fp32 order of the warps' partial sums). Also within the twin's bound (w4afp8)."""
    from fdlite.quant import get
    from fdlite_kernels import gemv_rows as gr

    rng = np.random.default_rng(N + K + M)
    x = cp.asarray((rng.standard_normal((M, K)) * np.exp(rng.standard_normal((M, 1)))).astype(BF16))
    b8 = cp.asarray(rng.integers(0, 256, (N, K), dtype=np.uint8) & 0xF7)      # e4m3 bits without NaN / 448+
    nib = cp.asarray(rng.integers(0, 256, (N, K // 2), dtype=np.uint8))
    s1, s4 = cp.asarray(rng.random((N, 1), dtype=np.float32)), cp.asarray(rng.random((N, K // 128), dtype=np.float32))
    sb = cp.asarray(rng.random((-(-N // 128), K // 128), dtype=np.float32))
    runs = {"fp8": lambda pre: gr.gemv_rows_fp8(x, b8, sb, pre=pre, rows=1, warps=8),
            "channel": lambda pre: gr.gemv_rows_fp8_channel(x, b8, s1, pre=pre, rows=1, warps=8),
            "int8": lambda pre: gr.gemv_rows_int8(x, b8.view(np.int8), s1, pre=pre, rows=1, warps=8),
            "w4a8": lambda pre: gr.gemv_rows_w4a8(x, nib, s4, pre=pre, rows=1, warps=8),
            "w4afp8": lambda pre: gr.gemv_rows_w4afp8(x, nib, s4, pre=pre, rows=1, warps=8)}
    for name, run in runs.items():
        a, b = cp.asnumpy(run(False)), cp.asnumpy(run(True))
        assert np.isfinite(a.astype(np.float32)).all(), name
        assert np.array_equal(a.view(np.uint16), b.view(np.uint16)), name
    method = get("w4afp8")()
    p = method.quantize(rng.standard_normal((N, K)).astype(np.float32) * 0.05)
    ref = method.matmul(cp.asnumpy(x).astype(np.float32), p, np)
    got = cp.asnumpy(gr.gemv_rows_w4afp8(x, cp.asarray(p.arrays["quant_weight"]), cp.asarray(p.arrays["weight_scale"]),
                                         pre=True)).astype(np.float32)
    assert _rel(got, ref) < 5e-3


def test_gemv_rows_graph_replay_equals_eager(cp):
    """Captured (PDL launch) and replayed on new x: bit-identical to an eager launch, fp8 (3 rows: x quantized once,
    a launch before the GEMV) and bf16."""
    from fdlite_kernels.gemv_rows import gemv_rows_bf16, gemv_rows_fp8

    _, p, x, _ = _fp8_case(5, 6144, 4096, 3)
    q, ws = cp.asarray(p.arrays["quant_weight"]), cp.asarray(p.arrays["weight_scale_inv"])
    wb = cp.asarray((np.random.default_rng(1).standard_normal((6144, 4096)) * 0.02).astype(BF16))
    xd = cp.asarray(x)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        gemv_rows_fp8(xd, q, ws), gemv_rows_bf16(xd, wb)
        stream.begin_capture()
        yf, yb = gemv_rows_fp8(xd, q, ws), gemv_rows_bf16(xd, wb)
        graph = stream.end_capture()
        rng = np.random.default_rng(2)
        for _ in range(3):
            xd[...] = cp.asarray(_x(rng, 3, 4096))
            graph.launch(stream)
            stream.synchronize()
            for got, eager in ((yf, gemv_rows_fp8(xd, q, ws)), (yb, gemv_rows_bf16(xd, wb))):
                assert np.array_equal(cp.asnumpy(got).view(np.uint16), cp.asnumpy(eager).view(np.uint16))


def test_gemv_rows_errors(cp):
    from fdlite_kernels.gemv_rows import gemv_rows_bf16, gemv_rows_fp8

    with pytest.raises(ValueError, match="K = 96 must be a positive multiple of 64"):
        gemv_rows_bf16(cp.zeros((1, 96), dtype=BF16), cp.zeros((8, 96), dtype=BF16))
    with pytest.raises(ValueError, match="1..16 rows here, got M = 17"):
        gemv_rows_bf16(cp.zeros((17, 64), dtype=BF16), cp.zeros((8, 64), dtype=BF16))
    with pytest.raises(ValueError, match="K = 192 must be a positive multiple of 128"):
        gemv_rows_fp8(cp.zeros((1, 192), dtype=BF16), cp.zeros((8, 192), np.uint8), cp.ones((1, 1), np.float32))
    with pytest.raises(ValueError, match=r"ws shape \(1, 1\), expected \(2, 2\) for N = 200, K = 256"):
        gemv_rows_fp8(cp.zeros((1, 256), dtype=BF16), cp.zeros((200, 256), np.uint8), cp.ones((1, 1), np.float32))
    with pytest.raises(ValueError, match=r"rows = 2, warps = 16"):
        gemv_rows_bf16(cp.zeros((1, 64), dtype=BF16), cp.zeros((8, 64), dtype=BF16), rows=2, warps=16)


def _wint2_random(rng, N, K, per_column=False):
    """Random CCQ tensors (any bytes are valid codewords): the twin decodes them, so no encoder is needed."""
    import ml_dtypes as md

    from fdlite.quant import get
    from fdlite.quant.base import Packed

    Kp = -(-K // 128) * 128
    cs = rng.uniform(100, 130, N) if per_column else np.full(N, 120.0)
    cz = rng.uniform(900, 1200, N) if per_column else np.full(N, 1084.0)
    arrays = {"quant_weight": rng.integers(0, 256, (Kp // 4, N), dtype=np.uint8),
              "weight_scale": rng.integers(0, 256, (Kp // 128, N), dtype=np.uint8),
              "super_scales": (rng.random(N) * 1e-3 + 1e-4).astype(md.bfloat16),
              "code_scale": cs.astype(np.float32), "code_zp": cz.astype(np.float32)}
    return get("wint2")(), Packed("wint2", (N, K), arrays, {"group_size": 64})


@pytest.mark.parametrize("N,K", [(4096, 4096), (6144, 4096), (4096, 14336), (1536, 576), (64, 164)])
@pytest.mark.parametrize("M", [1, 3, 9, 16])
def test_gemv_wint2_tc_vs_twin(cp, N, K, M):
    """The tensor-core WINT2 GEMV against the twin's float32 product (the same bf16 weights: only the fp32 sums'
    order differs), per-column codeword maps on one shape, split counts and register depths; and one-hot rows of x,
    which read single decoded weights back: equal to the twin's W bit for bit, the last (ragged) group included."""
    from fdlite_kernels.gemv_wint2 import gemv_wint2_tc

    rng = np.random.default_rng(N + 3 * K + M)
    method, p = _wint2_random(rng, N, K, per_column=(N, K) == (1536, 576))
    a = {k: cp.asarray(v) for k, v in p.arrays.items()}
    w = (a["quant_weight"], a["weight_scale"], a["super_scales"], a["code_scale"], a["code_zp"])
    x = _x(rng, M, K)
    ref = x.astype(np.float32) @ method.dequantize(p).T
    plans = [(None, None), (1, 2), (2, 3), (7, 2)] if (N, K) == (4096, 4096) else [(None, None), (None, 2)]
    for splits, depth in plans:
        y = cp.full((M, N), np.nan, dtype=BF16)
        gemv_wint2_tc(cp.asarray(x), *w, out=y, splits=splits, depth=depth)
        got = cp.asnumpy(y).astype(np.float32)
        assert np.isfinite(got).all() and _rel(got, ref) < 5e-3, (splits, depth)
    ks = rng.choice(K, size=M, replace=False)
    ks[-1] = K - 1
    onehot = np.zeros((M, K), BF16)
    onehot[np.arange(M), ks] = 1
    got = cp.asnumpy(gemv_wint2_tc(cp.asarray(onehot), *w)).astype(np.float32)
    W = method.dequantize(p)                                                   # (N, K) bf16 values
    assert np.array_equal(got, W[:, ks].T)


def test_gemv_wint2_tc_graph_replay_and_route(cp):
    """Captured and replayed: bit-identical to eager (the K splits are added in a fixed order); the routed wint2
    matmul takes it at 16 rows and per 16 rows above (against the twin), and the old kernel where N % 64 != 0."""
    from fdlite.quant import _gpu
    from fdlite.backend import get_backend
    from fdlite_kernels.gemv_wint2 import gemv_wint2_tc

    rng = np.random.default_rng(7)
    method, p = _wint2_random(rng, 4096, 4096)
    gp = method.prepare(p, get_backend("cuda"))
    assert gp.meta["codewords_in_range"]
    w = tuple(gp.arrays[k] for k in ("quant_weight", "weight_scale", "super_scales", "code_scale", "code_zp"))
    xd = cp.asarray(_x(rng, 2, 4096))
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        gemv_wint2_tc(xd, *w)
        stream.begin_capture()
        yg = gemv_wint2_tc(xd, *w)
        graph = stream.end_capture()
        for _ in range(3):
            xd[...] = cp.asarray(_x(rng, 2, 4096))
            graph.launch(stream)
            stream.synchronize()
            assert np.array_equal(cp.asnumpy(yg).view(np.uint16), cp.asnumpy(gemv_wint2_tc(xd, *w)).view(np.uint16))
    x = _x(rng, 40, 4096)
    got = cp.asnumpy(_gpu.matmul_wint2(cp.asarray(x), gp, cp)).astype(np.float32)
    assert _rel(got, x.astype(np.float32) @ method.dequantize(p).T) < 5e-3
    method2, p2 = _wint2_random(rng, 96, 256)                                  # N % 64 != 0: gemv_wint2
    gp2 = method2.prepare(p2, get_backend("cuda"))
    x2 = _x(rng, 3, 256)
    got2 = cp.asnumpy(_gpu.matmul_wint2(cp.asarray(x2), gp2, cp)).astype(np.float32)
    assert _rel(got2, x2.astype(np.float32) @ method2.dequantize(p2).T) < 1e-2
