"""Every weight method: round-trip error within its bound, idempotence, pack/unpack, layouts, bad input."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fdlite import quant
from fdlite.errors import ConfigError, InputError
from fdlite.quant._common import FP8_TABLE, act_fp8, act_int8_per_token, fp8_encode, pack_nibbles, unpack_nibbles
from fdlite.quant.wint2 import CODE_SCALE, CODE_ZP

METHODS = [m for m in quant.available() if m not in ("dense", "mix_quant")]
EXACT = [m for m in METHODS if m != "wint2"]          # wint2's encoder re-fits scales: not idempotent


@st.composite
def weights(draw, max_n=40, max_k=300):
    """(N, K) float32 with the awkward cases: zeros, constant rows, huge outliers, tiny values."""
    n, k = draw(st.integers(1, max_n)), draw(st.integers(1, max_k))
    seed = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(["normal", "zeros", "constant", "outlier", "tiny"]))
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32) * np.float32(10.0 ** rng.integers(-3, 3))
    if kind == "zeros":
        w[rng.integers(0, n)] = 0
    elif kind == "constant":
        w[:] = np.float32(rng.standard_normal())
    elif kind == "outlier":
        w[rng.integers(0, n), rng.integers(0, k)] = 1e4
    elif kind == "tiny":
        w *= np.float32(1e-30)
    return w


def _q(name):
    return quant.get(name)()


@pytest.mark.parametrize("name", METHODS)
@settings(max_examples=25, deadline=None)
@given(w=weights())
def test_round_trip_within_bound(name, w):
    m = _q(name)
    p = m.quantize(w)
    d = m.dequantize(p)
    assert d.shape == w.shape and d.dtype == np.float32 and p.shape == w.shape
    assert np.all(np.isfinite(d))
    assert float(np.abs(d - w).max()) <= m.error_bound(w)


@pytest.mark.parametrize("name", EXACT)
@settings(max_examples=20, deadline=None)
@given(w=weights())
def test_quantize_dequantize_idempotent(name, w):
    m = _q(name)
    d = m.dequantize(m.quantize(w))
    np.testing.assert_array_equal(m.dequantize(m.quantize(d)), d)


@pytest.mark.parametrize("name", METHODS)
def test_matmul_is_reference_and_close(name):
    rng = np.random.default_rng(1)
    w, x = rng.standard_normal((96, 200)).astype(np.float32), rng.standard_normal((7, 200)).astype(np.float32)
    m = _q(name)
    p = m.quantize(w)
    y = m.matmul(x, p, np)
    assert y.shape == (7, 96) and y.dtype == np.float32
    rel = np.linalg.norm(y - x @ w.T) / np.linalg.norm(x @ w.T)
    assert rel < {"wint2": 0.6, "wint8": 0.01, "w8a8": 0.02, "block_wise_fp8": 0.06, "wfp8afp8": 0.06}.get(name, 0.2)
    if name in ("wint8", "wint4", "nf4", "wint2"):         # weight-only: exactly x @ W_hat.T
        np.testing.assert_allclose(y, x @ m.dequantize(p).T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weight_rejected_with_name(name, bad):
    w = np.ones((4, 8), np.float32)
    w[2, 3] = bad
    with pytest.raises(InputError, match=r"layers\.7\.q.*\(4, 8\).*\[2, 3\]"):
        _q(name).quantize(w, what="layers.7.q")


@pytest.mark.parametrize("name", METHODS)
def test_bad_shapes_rejected_with_shape(name):
    with pytest.raises(InputError, match=r"\(3, 4, 5\)"):
        _q(name).quantize(np.zeros((3, 4, 5), np.float32))
    with pytest.raises(InputError, match=r"\(0, 4\)"):
        _q(name).quantize(np.zeros((0, 4), np.float32))


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 20), st.integers(1, 20), st.booleans(), st.integers(0, 2**31 - 1))
def test_nibble_pack_unpack_inverse(n, half_k, signed, seed):
    rng = np.random.default_rng(seed)
    q = rng.integers(-8, 8, (n, 2 * half_k)) if signed else rng.integers(0, 16, (n, 2 * half_k))
    p = pack_nibbles(q)
    assert p.shape == (n, half_k) and p.dtype == np.uint8
    np.testing.assert_array_equal(unpack_nibbles(p, signed), q)
    np.testing.assert_array_equal(p[:, 0] & 0xF, q[:, 0] & 0xF)                 # low nibble = even k


def test_layouts_and_scale_shapes():
    w = np.random.default_rng(2).standard_normal((300, 576)).astype(np.float32)   # SmolLM2's K = 576 = 4.5 x 128
    p = _q("wint4").quantize(w)
    assert p.arrays["quant_weight"].shape == (300, 320) and p.arrays["weight_scale"].shape == (300, 5)
    p = quant.get("wint4")(group_size=-1).quantize(w)
    assert p.arrays["quant_weight"].shape == (300, 288) and p.arrays["weight_scale"].shape == (300, 1)
    p = _q("nf4").quantize(w)
    assert p.arrays["weight_scale"].shape == (300, 9)
    p = _q("wint8").quantize(w)
    assert p.arrays["quant_weight"].dtype == np.int8 and p.arrays["quant_weight"].min() >= -127
    p = _q("block_wise_fp8").quantize(w)
    assert p.arrays["quant_weight"].shape == (300, 576) and p.arrays["weight_scale_inv"].shape == (3, 5)
    p = _q("wint2").quantize(w)
    assert p.arrays["quant_weight"].shape == (160, 300) and p.arrays["weight_scale"].shape == (5, 300)
    assert p.arrays["super_scales"].dtype == ml_dtypes.bfloat16


def test_wint8_matches_fastdeploy_formula():
    w = np.array([[0.5, -1.0, 0.25, 1 / 254]], np.float32)   # 1/254 / 1 * 127 = 0.5: a half, rounds away from 0
    p = _q("wint8").quantize(w)
    np.testing.assert_array_equal(p.arrays["quant_weight"], [[64, -127, 32, 1]])
    np.testing.assert_allclose(p.arrays["weight_scale"], [[1 / 127]])


def test_wint4_nibbles_and_zero_rows():
    w = np.array([[7, -7, 1, -2, 0, 3], [0, 0, 0, 0, 0, 0]], np.float32)
    p = quant.get("wint4")(group_size=-1).quantize(w)
    np.testing.assert_array_equal(p.arrays["quant_weight"][0], [0x97, 0xE1, 0x30])   # (7,-7) (1,-2) (0,3)
    assert p.arrays["weight_scale"][1, 0] == 0 and not p.arrays["quant_weight"][1].any()


def test_fp8_codes_rne_and_saturating():
    x = np.array([448, 500, -1e6, 0.0, 1.0625, 1.1875, 2.0**-9], np.float32)
    np.testing.assert_array_equal(FP8_TABLE[fp8_encode(x)], [448, 448, -448, 0, 1.0, 1.25, 2.0**-9])


def test_block_fp8_partial_block_scales():
    w = np.zeros((130, 200), np.float32)
    w[129, 199] = 448.0 * 3
    p = _q("block_wise_fp8").quantize(w)
    s = p.arrays["weight_scale_inv"]
    assert s.shape == (2, 2) and s[1, 1] == 3.0 and s[0, 0] == 1.0      # all-zero block -> scale 1
    assert _q("block_wise_fp8").dequantize(p)[129, 199] == 448.0 * 3


def test_activation_quantizers():
    x = np.array([[1.0, -0.5, 0.25, 127.0]], np.float32)
    np.testing.assert_allclose(act_int8_per_token(x), [[1.0, -0.0, 0.0, 127.0]])      # rint: -0.5 -> -0
    x = np.random.default_rng(3).standard_normal((5, 300)).astype(np.float32)
    xi = act_int8_per_token(x, group=128)                      # per (token, 128-column group), last group partial
    assert xi.shape == x.shape and np.all(np.abs(xi - x) <= np.abs(x).max() / 254 * (1 + 1e-6))
    np.testing.assert_allclose(np.abs(xi[:, 256:]).max(1), np.abs(x[:, 256:]).max(1), rtol=1e-6)
    xh = act_fp8(x, 128)
    assert xh.shape == x.shape and np.abs(xh - x).max() <= np.abs(x).max() / 16
    for g in range(3):          # each 128-group's max is exactly representable
        blk = slice(128 * g, 128 * (g + 1))
        np.testing.assert_allclose(np.abs(xh[:, blk]).max(1), np.abs(x[:, blk]).max(1), rtol=1e-6)


def test_wint2_decode_matches_spec_by_hand():
    b, r = 37, 0
    v = int(np.floor(b * np.float32(CODE_SCALE) + np.float32(CODE_ZP) + np.float32(0.5)))
    n, K = 1, 128
    qw = np.zeros((K // 4, n), np.uint8)
    qw[r, 0] = b
    ls = np.array([[0x5A]], np.uint8)           # group 0 (rows 0..63): 5, group 1: 10
    p = quant.base.Packed("wint2", (n, K), {"quant_weight": qw, "weight_scale": ls,
                                            "super_scales": np.array([0.5], ml_dtypes.bfloat16),
                                            "code_scale": np.array([CODE_SCALE], np.float32),
                                            "code_zp": np.array([CODE_ZP], np.float32)})
    d = _q("wint2").dequantize(p)
    want = [(((v >> (9 - 3 * j)) & 63) - 32) * 5 * 0.5 for j in range(4)]
    np.testing.assert_array_equal(d[0, :4], want)
    zero_code = (((int(np.floor(CODE_ZP + 0.5)) >> (9 - 3 * np.arange(4))) & 63) - 32)
    np.testing.assert_array_equal(d[0, 64:68], zero_code * 10 * 0.5)     # b = 0 in group 1, local scale 10


def test_wint2_mean_error_is_two_bit_quality():
    w = np.random.default_rng(4).standard_normal((64, 512)).astype(np.float32)
    d = _q("wint2").dequantize(_q("wint2").quantize(w))
    assert np.mean((d - w) ** 2) < 0.13       # 2-bit Lloyd-Max on N(0, 1) is 0.1175


def test_method_options_rejected_by_name():
    with pytest.raises(ConfigError, match="group_size=3"):
        quant.get("wint4")(group_size=3)
    with pytest.raises(ConfigError, match="'bogus'"):
        quant.get("wint8")(bogus=1)
    with pytest.raises(ConfigError, match="weight_block_size"):
        quant.get("block_wise_fp8")(weight_block_size=[128])


def test_linear_swiglu_takes_the_fused_kernel_only_where_the_method_has_one():
    """ops.linear_swiglu: a method's fused gate_up + SwiGLU (the GPU decode GEMVs) when it returns one, else the
    projection then ops.swiglu; a bias, the host methods, a checkpoint-bound method (quant_config.Bound delegates)
    and GPTQ's recorder (which must see x) all take the two steps."""
    from fdlite import ops
    from fdlite.gptq import _Recorder
    from fdlite.quant.base import Linear
    from fdlite.quant_config import Bound

    rng = np.random.default_rng(3)
    w, x = rng.standard_normal((16, 32)).astype(np.float32), rng.standard_normal((3, 32)).astype(np.float32)
    m = quant.get("wint8")()
    p = m.quantize(w)
    two_steps = ops.swiglu(m.matmul(x, p, np), np)
    assert two_steps.shape == (3, 8)
    for method in (m, Bound(m, "mlp.gate_up_proj"), _Recorder(m, "mlp.gate_up_proj", {})):
        assert Linear(method, p, None, np).swiglu(x) is None
        np.testing.assert_array_equal(ops.linear_swiglu(Linear(method, p, None, np), x, np), two_steps)

    class Fused(type(m)):
        def matmul_swiglu(self, x, p, xp):
            return "fused"
    f = Fused()
    assert ops.linear_swiglu(Linear(f, p, None, np), x, np) == "fused"
    assert ops.linear_swiglu(Linear(Bound(f, "w13"), p, None, np), x, np) == "fused"
    bias = np.ones(16, np.float32)
    np.testing.assert_allclose(ops.linear_swiglu(Linear(f, p, bias, np), x, np),
                               ops.swiglu(m.matmul(x, p, np) + bias, np))


def test_gpu_gate_up_swiglu_pads_x_once_and_falls_back_to_two_kernels(monkeypatch):
    """The GPU grouped path (fdlite.quant._gpu.matmul_grouped_swiglu, kernels stood in by recorders): where no
    decode GEMV fuses the SwiGLU it runs the routed GEMM then fused_ops.silu_mul itself, on the padded x it already
    made, rather than returning None and padding x again in Linear.__call__."""
    from fdlite.quant import _gpu
    from fdlite.quant.base import Packed
    from fdlite_kernels import fused_ops, mma_wq

    seen = []
    monkeypatch.setattr(mma_wq, "gemm_packed_swiglu", lambda x, *w: seen.append(("fused", x, w)) or None)
    monkeypatch.setattr(mma_wq, "gemm_packed", lambda x, *w: seen.append(("gemm", x, w)) or "gu")
    monkeypatch.setattr(fused_ops, "silu_mul", lambda gu: seen.append(("silu", gu)) or "y")
    p = Packed("wint4", (32, 100), {"qp": "qp", "scale": "s"}, {"K_pad": 128, "bits": 4, "group": 32})
    x = np.ones((40, 100), np.float32)
    assert _gpu.matmul_grouped_swiglu(x, p, np) == "y"
    (f, xf, wf), (g, xg, wg), (s, gu) = seen
    assert (f, g, s, gu) == ("fused", "gemm", "silu", "gu") and wf == wg == ("qp", "s", 32, 4, 32)
    assert xg is xf and xf.shape == (40, 128) and xf.dtype == ml_dtypes.bfloat16


_NF4 = quant.get("nf4").levels
_MIDS = ((_NF4[:-1].astype(np.float64) + _NF4[1:]) / 2).astype(np.float32)      # ties, rounded to float32


@given(st.lists(st.one_of(st.floats(-1.5, 1.5, width=32), st.sampled_from([float(v) for v in _NF4]),
                          st.sampled_from([float(v) for v in _MIDS]),
                          st.sampled_from([float(np.nextafter(m, d)) for m in _MIDS for d in (-2.0, 2.0)])),
                min_size=1, max_size=200))
@settings(max_examples=300, deadline=None)
def test_nearest_level_is_argmin_exactly(ts):
    """nf4's code search (searchsorted, then the two neighbours) gives argmin(|t - level|) in float32 bit for bit,
    first index on a tie: on levels, on the float32 midpoints between them, one ulp either side, and outside +-1."""
    from fdlite.quant._common import nearest_level

    t = np.array(ts, np.float32)
    want = np.abs(t[:, None] - _NF4).argmin(-1)
    assert np.array_equal(nearest_level(t, _NF4), want)
    assert np.array_equal(nearest_level(t.reshape(-1, 1, 1), _NF4).reshape(-1), want)   # any shape


def test_nf4_codes_match_the_argmin_definition_on_a_layer():
    """A whole weight through nf4.quantize: the codes are argmin |w / absmax - level| (the definition) everywhere."""
    w = np.random.default_rng(5).standard_normal((64, 1000)).astype(np.float32)
    m = _q("nf4")
    q = m.unpack(m.quantize(w))[:, :1000].astype(np.int64)
    wp = np.pad(w, ((0, 0), (0, 24))).reshape(64, -1, 64)
    amax = np.abs(wp).max(-1, keepdims=True)
    t = (wp / np.where(amax > 0, amax, np.float32(1))).astype(np.float32) * np.float32(1)
    assert np.array_equal(q, np.abs(t[..., None] - _NF4).argmin(-1).reshape(64, -1)[:, :1000])


@pytest.mark.parametrize("name", ["w8a8", "w4a8"])
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), [1.0, 2.0]])
def test_static_activation_scale_must_be_one_positive_value(name, bad):
    """A checkpoint's activation_scale that is zero, negative, not finite or not one value is refused at load
    (prepare) on any backend, naming the method and the values, instead of dividing x by zero on every call."""
    from fdlite.backend import get_backend
    from fdlite.errors import CheckpointError

    m = quant.get(name)()
    p = m.quantize(np.random.default_rng(0).standard_normal((16, 256)).astype(np.float32))
    p.arrays["activation_scale"] = np.array(bad if isinstance(bad, list) else [bad], np.float32)
    with pytest.raises(CheckpointError, match=f"{name}: activation_scale holds"):
        m.prepare(p, get_backend("cpu"))
    p.arrays["activation_scale"] = np.array([3.0], np.float32)
    q = m.prepare(p, get_backend("cpu"))                  # a valid one: kept, the twin's static branch reads it
    x = np.random.default_rng(1).standard_normal((2, 256)).astype(np.float32)
    assert np.isfinite(m.matmul(x, q, np)).all()
