"""The prefill GEMM of the x-quantizing methods (fdlite_kernels/mma_q8.cu) against their NumPy twins on fresh random
inputs, outputs poisoned (pytest -m gpu, on the lent device)."""
import ml_dtypes
import numpy as np
import pytest

pytestmark = pytest.mark.gpu
BF16 = np.dtype(ml_dtypes.bfloat16)
# method -> (the launcher's name, the weight's scale key, the relative bound against the twin)
METHODS = {"block_wise_fp8": ("mma_q8_fp8", "weight_scale_inv", 1e-2),
           "wfp8afp8": ("mma_q8_fp8_channel", "weight_scale", 1e-2),
           "w8a8": ("mma_q8_int8", "weight_scale", 1e-2),
           "w4a8": ("mma_q8_w4a8", "weight_scale", 1e-2),
           "w4afp8": ("mma_q8_w4afp8", "weight_scale", 5e-3)}


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _case(name, N, K, M, seed):
    """-> (method, packed weight, x with a scale spread per token, the method's NumPy product)."""
    from fdlite.quant import get

    rng = np.random.default_rng(seed)
    method = get(name)()
    p = method.quantize(rng.standard_normal((N, K)).astype(np.float32) * 0.05)
    x = (rng.standard_normal((M, K)) * np.exp(rng.standard_normal((M, 1)))).astype(BF16)
    return method, p, x, method.matmul(x.astype(np.float32), p, np)


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("N,K", [(4096, 4096), (4096, 14336), (1000, 1024), (1001, 512), (136, 256)])
@pytest.mark.parametrize("M", [1, 17, 130, 300])
def test_mma_q8_vs_twin(cp, name, N, K, M):
    """Every mode at awkward shapes (N not a multiple of the 128-column block, odd N, a single K tile pair, rows past
    the 128-row block), output poisoned; on two shapes every pipeline depth, unroll choice and kernel (sm_90: the
    8-bit weights on wgmma_q8, with and without a wgmma group in flight, and on mma_q8)."""
    import fdlite_kernels.mma_q8 as q8

    fn_name, skey, tol = METHODS[name]
    method, p, x, ref = _case(name, N, K, M, N + 7 * K + M)
    q, ws = cp.asarray(p.arrays["quant_weight"]), cp.asarray(p.arrays[skey])
    xd = cp.asarray(x)
    if q.shape[1] * (2 if name in ("w4a8", "w4afp8") else 1) != K:
        pytest.skip("a padded K: the routed matmul pads x (test_prefill_routes_take_mma_q8)")
    wg = name in ("block_wise_fp8", "wfp8afp8", "w8a8") and cp.cuda.Device().compute_capability == "90"
    variants = [{}]
    if (N, K) == (1000, 1024) or (N, K, M) == (4096, 14336, 300):      # every pipeline depth, unroll and kernel
        variants += [{"stages": s, "unroll": u} | ({"wgmma": False} if wg else {}) for s in (3, 4) for u in (0, 1)]
        variants += [{"stages": s, "wgmma": True, "inflight": f} for s in (3, 4) for f in (0, 1)] if wg else []
    for kw in variants:
        y = cp.full((M, N), np.nan, dtype=BF16)
        getattr(q8, fn_name)(xd, q, ws, out=y, **kw)
        got = cp.asnumpy(y).astype(np.float32)
        assert np.isfinite(got).all() and _rel(got, ref) < tol, (kw, _rel(got, ref))


@pytest.mark.parametrize("name", list(METHODS))
def test_mma_q8_large_m(cp, name):
    """4096 rows (a long prompt): 32 row blocks, each a weight tile read from L2 by its neighbours."""
    import fdlite_kernels.mma_q8 as q8

    fn_name, skey, tol = METHODS[name]
    method, p, x, ref = _case(name, 512, 1024, 4096, 3)
    y = cp.full((4096, 512), np.nan, dtype=BF16)
    getattr(q8, fn_name)(cp.asarray(x), cp.asarray(p.arrays["quant_weight"]), cp.asarray(p.arrays[skey]), out=y)
    got = cp.asnumpy(y).astype(np.float32)
    assert np.isfinite(got).all() and _rel(got, ref) < tol
    assert max(_rel(got[i:i + 128], ref[i:i + 128]) for i in range(0, 4096, 128)) < 2 * tol   # every row block


def test_mma_q8_int8_sums_are_exact(cp):
    """w8a8's int32 sums are exact: with one-hot x rows (code 127 at column k, scale amax / 127) each output is
    q[n, k] * ws[n] * x[m, k] / 127 * 127 — the weight code times the scales, rounded once to bf16."""
    from fdlite_kernels.mma_q8 import mma_q8_int8

    rng = np.random.default_rng(0)
    N, K, M = 300, 512, 140
    q = rng.integers(-127, 128, (N, K), dtype=np.int8)
    ws = rng.random((N, 1), dtype=np.float32)
    cols = rng.integers(0, K, M)
    x = np.zeros((M, K), BF16)
    x[np.arange(M), cols] = 1.0
    got = cp.asnumpy(mma_q8_int8(cp.asarray(x), cp.asarray(q), cp.asarray(ws)))
    s = np.float32(1.0) / np.float32(127)                                  # x's per-token scale, as quantize_x
    want = (q[:, cols].T.astype(np.float32) * 127) * (s * ws[:, 0])         # the exact sum 127 q, then the scales
    got = got.astype(np.float32)
    assert (np.abs(got - want) <= np.abs(want) * 2 ** -8 + 1e-30).all()   # one bf16 rounding


def test_mma_q8_graph_replay_equals_eager(cp):
    """Captured (the x quantization and the GEMM, PDL between them) and replayed on new x: bit-identical to eager."""
    from fdlite_kernels.mma_q8 import mma_q8_w4afp8

    _, p, x, _ = _case("w4afp8", 1000, 1024, 200, 1)
    q, ws = cp.asarray(p.arrays["quant_weight"]), cp.asarray(p.arrays["weight_scale"])
    xd = cp.asarray(x)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        mma_q8_w4afp8(xd, q, ws)
        stream.begin_capture()
        y = mma_q8_w4afp8(xd, q, ws)
        graph = stream.end_capture()
        rng = np.random.default_rng(2)
        for _ in range(3):
            xd[...] = cp.asarray(rng.standard_normal((200, 1024)).astype(BF16))
            graph.launch(stream)
            stream.synchronize()
            assert np.array_equal(cp.asnumpy(y).view(np.uint16), cp.asnumpy(mma_q8_w4afp8(xd, q, ws)).view(np.uint16))


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("M", [40, 65, 257])
def test_prefill_routes_take_mma_q8(cp, name, M):
    """The routed matmul (fdlite.quant._gpu) past the decode rows: within the twin's bound, at a K the int4 methods
    pad (K = 200: x zero-padded as the twin pads) and at 8B-like shapes."""
    from fdlite.backend import get_backend

    for N, K in ((1000, 1024), (96, 200)):
        if name in ("block_wise_fp8", "wfp8afp8", "w8a8") and K % 128:
            continue
        method, p, x, ref = _case(name, N, K, M, M + N)
        gp = method.prepare(p, get_backend("cuda"))
        got = cp.asnumpy(method.matmul(cp.asarray(x), gp, cp)).astype(np.float32)
        assert np.isfinite(got).all() and _rel(got, ref) < METHODS[name][2], (N, K)


def test_mma_q8_errors(cp):
    from fdlite_kernels.mma_q8 import mma_q8_fp8, mma_q8_int8, mma_q8_w4a8

    x = cp.zeros((3, 192), dtype=BF16)
    with pytest.raises(ValueError, match="K = 192 must be a positive multiple of 128"):
        mma_q8_int8(x, cp.zeros((8, 192), np.int8), cp.ones((8, 1), np.float32))
    with pytest.raises(ValueError, match=r"ws shape \(1, 1\), expected \(2, 2\) for N = 200, K = 256"):
        mma_q8_fp8(cp.zeros((3, 256), dtype=BF16), cp.zeros((200, 256), np.uint8), cp.ones((1, 1), np.float32))
    with pytest.raises(ValueError, match=r"ws shape \(8, 1\), expected \(8, 2\)"):
        mma_q8_w4a8(cp.zeros((3, 256), dtype=BF16), cp.zeros((8, 128), np.uint8), cp.ones((8, 1), np.float32))
    with pytest.raises(ValueError, match="stages = 5, expected 3 or 4"):
        mma_q8_int8(cp.zeros((3, 256), dtype=BF16), cp.zeros((8, 256), np.int8), cp.ones((8, 1), np.float32), stages=5)


@pytest.mark.parametrize("name", ["w8a8", "w4a8"])
@pytest.mark.parametrize("M", [1, 3, 20, 300])
def test_static_activation_scale(cp, name, M):
    """A checkpoint's static activation scale (activation_scale, the abs-max A; here below x's largest values, so
    codes clip): prepare() gives the kernels float32(A / 127) and the routed matmul (gemv_rows with x quantized once,
    mma_q8 from Q8_MIN_M rows) matches the twin's static branch; at 3 rows bit for bit the direct launch."""
    from fdlite.backend import get_backend
    from fdlite_kernels import gemv_rows

    method, p, x, _ = _case(name, 1000, 1024, M, 7 * M)
    A = float(np.abs(x.astype(np.float32)).max()) * 0.8
    p.arrays["activation_scale"] = np.array([A], np.float32)
    ref = method.matmul(x.astype(np.float32), p, np)
    gp = method.prepare(p, get_backend("cuda"))
    assert cp.asnumpy(gp.arrays["act_static"]).tolist() == [np.float32(float(np.float32(A)) / 127.0)]
    got = cp.asnumpy(method.matmul(cp.asarray(x), gp, cp))
    assert np.isfinite(got.astype(np.float32)).all() and _rel(got.astype(np.float32), ref) < 1e-2
    if M == 3:
        run = gemv_rows.gemv_rows_int8 if name == "w8a8" else gemv_rows.gemv_rows_w4a8
        direct = cp.asnumpy(run(cp.asarray(x), gp.arrays["quant_weight"], gp.arrays["weight_scale"],
                                static=gp.arrays["act_static"]))
        assert np.array_equal(direct.view(np.uint16), got.view(np.uint16))


@pytest.mark.parametrize("N,K", [(4096, 4096), (4096, 14336), (1000, 1024), (1001, 512), (136, 256), (96, 200)])
@pytest.mark.parametrize("M", [1, 17, 130, 300])
def test_mma_nf4_vs_twin(cp, N, K, M):
    """nf4's prefill GEMM on the codes prepare() permuted for the decode kernel (one device copy), output poisoned,
    both pipeline depths on one shape, a K padded to 256 (K = 200) through the routed matmul; one-hot x reads single
    decoded weights back as bf16(bf16(level) * absmax), bit for bit."""
    import types

    from fdlite.quant import get
    from fdlite_kernels.mma_nf4 import mma_nf4

    rng = np.random.default_rng(N + 29 * K + M)
    method = get("nf4")()
    p = method.quantize(rng.standard_normal((N, K)).astype(np.float32) * 0.05)
    x = (rng.standard_normal((M, K)) * np.exp(rng.standard_normal((M, 1)))).astype(BF16)
    ref = method.matmul(x.astype(np.float32), p, np)
    dev = method.prepare(p, types.SimpleNamespace(is_gpu=True, asarray=cp.asarray))
    q, ws = dev.arrays["quant_weight"], dev.arrays["weight_scale"]
    if q.shape[1] * 2 == K:
        for stages, wm in [(s, w) for s in (3, 4) for w in (1, 2)] if (N, K) == (1000, 1024) else [(None, None)]:
            y = cp.full((M, N), np.nan, dtype=BF16)
            mma_nf4(cp.asarray(x), q, ws, out=y, stages=stages, wm=wm)
            got = cp.asnumpy(y).astype(np.float32)
            assert np.isfinite(got).all() and _rel(got, ref) < 5e-3, (stages, wm)
        if M == 130:                                   # x[m] = e_k: y[m, n] = bf16(bf16(level) * absmax), exactly
            ks = rng.choice(K, 130, replace=True)
            e = np.zeros((130, K), BF16)
            e[np.arange(130), ks] = 1
            lv = np.asarray(method.levels)[method.unpack(p)[:, ks]].astype(BF16).astype(np.float32).T   # (130, N)
            s = p.arrays["weight_scale"][:, ks // 64].T
            got = cp.asnumpy(mma_nf4(cp.asarray(e), q, ws)).astype(np.float32)
            assert np.array_equal(got, (lv * s).astype(BF16).astype(np.float32))
    routed = cp.asnumpy(method.matmul(cp.asarray(x), dev, cp)).astype(np.float32)
    assert np.isfinite(routed).all() and _rel(routed, ref) < 5e-3
