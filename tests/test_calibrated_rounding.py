"""Calibrated rounding (fdlite/gptq.py) and the wint2 encoder's scale search: round-trip bounds and shapes
(hypothesis), and that calibration lowers the Hessian-weighted error it minimises."""
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fdlite.gptq import gptq_quantize, shrink_hessian
from fdlite.quant import get
from fdlite.quant.wint2 import _search_scales, codebook


def _problem(seed, N, K, T=None):
    """Correlated inputs X (T, K) with a few loud channels, H = X^T X, and weights w (N, K) with outliers."""
    rng = np.random.default_rng(seed)
    T = T or 4 * K
    X = rng.standard_normal((T, K)) @ (np.eye(K) + 0.3 * rng.standard_normal((K, K)))
    X[:, rng.choice(K, max(1, K // 32), replace=False)] *= 8
    w = rng.standard_normal((N, K)).astype(np.float32)
    w[rng.random(w.shape) < 0.002] *= 10
    return X.T @ X, w


def _loss(m, p, w, H):
    d = (m.dequantize(p) - w).astype(np.float64)
    return float(np.einsum("nk,kl,nl->", d, H, d))


@pytest.mark.parametrize("name", ["wint4", "w4a8", "w4afp8", "nf4", "wint2"])
def test_calibration_lowers_hessian_weighted_error(name):
    H, w = _problem(0, 48, 320)          # K = 320: a partial last group for every group size
    m = get(name)()
    assert _loss(m, gptq_quantize(m, w, H), w, H) < 0.8 * _loss(m, m.quantize(w), w, H)


def test_shrink_hessian_keeps_the_diagonal_and_shrinks_the_rest():
    H, _ = _problem(1, 4, 64)
    S = shrink_hessian(H, 0.25)
    np.testing.assert_allclose(np.diag(S), np.diag(H))
    off = ~np.eye(64, dtype=bool)
    np.testing.assert_allclose(S[off], 0.75 * H[off])
    np.testing.assert_array_equal(shrink_hessian(H, 0.0), H)


@settings(max_examples=25, deadline=None)
@given(N=st.integers(1, 24), K=st.integers(2, 300).map(lambda k: k + k % 2), seed=st.integers(0, 2**16),
       name=st.sampled_from(["wint4", "w4afp8", "nf4"]), group=st.sampled_from([None, 64, -1]))
def test_gptq_grouped_round_trip(N, K, seed, name, group):
    H, w = _problem(seed, N, K, T=2 * K)
    m = get(name)(group_size=group)
    p = gptq_quantize(m, w, H)
    ref = m.quantize(w)
    assert p.shape == (N, K) and {k: (a.shape, a.dtype) for k, a in p.arrays.items()} == \
        {k: (a.shape, a.dtype) for k, a in ref.arrays.items()}
    d = m.dequantize(p)
    assert d.shape == (N, K) and np.isfinite(d).all()
    # static group scales from a clipped abs-max: a code never exceeds the grid, so |w_hat| <= amax per group
    g = m.group_of(K)
    amax = np.abs(np.pad(w, ((0, 0), (0, -K % g))).reshape(N, -1, g)).max(-1)
    dmax = np.abs(np.pad(d, ((0, 0), (0, -K % g))).reshape(N, -1, g)).max(-1)
    assert (dmax <= amax * (8 / 7) * (1 + 1e-5) + 1e-30).all()


@settings(max_examples=20, deadline=None)
@given(N=st.integers(1, 16), K=st.integers(1, 200), seed=st.integers(0, 2**16), spread=st.floats(0.01, 100),
       outlier=st.floats(1, 50), calibrated=st.booleans())
def test_wint2_encoder_round_trip(N, K, seed, spread, outlier, calibrated):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((N, K)) * spread).astype(np.float32)
    w[rng.integers(N), rng.integers(K)] *= outlier
    m = get("wint2")()
    H = None
    if calibrated:
        X = rng.standard_normal((3 * K + 8, K))
        H = X.T @ X
    p = m.quantize(w, hessian=H)
    Kp = K + (-K % 128)
    a = p.arrays
    assert a["quant_weight"].shape == (Kp // 4, N) and a["quant_weight"].dtype == np.uint8
    assert a["weight_scale"].shape == (Kp // 128, N) and a["super_scales"].dtype == ml_dtypes.bfloat16
    d = m.dequantize(p)
    assert d.shape == (N, K) and np.isfinite(d).all()
    assert np.abs(d - w).max() <= m.error_bound(w)
    # 2-bit quality at worst: mean squared error below the weights' own mean square
    assert np.mean((d - w) ** 2) <= np.mean(w.astype(np.float64) ** 2) + 1e-30


def test_wint2_scale_search_widens_a_group_with_an_outlier():
    rng = np.random.default_rng(3)
    W = rng.standard_normal((4, 128)).astype(np.float32)
    W[0, 5] = 25.0                  # the group's rms is 3.3: the rms / 16 scale clips at 31 units = 6.4
    ls, ss = _search_scales(W, np.ones(128, np.float32), codebook())
    assert ls.shape == (4, 2) and ss.shape == (4,)
    scale = ls * ss[:, None]
    assert scale[0, 0] > 1.5 * scale[1, 0]              # the outlier's group chose a wider scale
    m = get("wint2")()
    assert m.dequantize(m.quantize(W))[0, 5] > 8
