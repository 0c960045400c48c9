"""Static KV scales: scale files, FastDeploy checkpoint keys, the fitting pieces, bad input."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fdlite import kv, kv_scales
from fdlite.backend import get_backend
from fdlite.errors import CheckpointError, InputError

L, H, D = 2, 2, 8
CFG = SimpleNamespace(num_hidden_layers=L, num_key_value_heads=H, head_dim=D)


def int4_opts(seed=0):
    r = np.random.default_rng(seed)
    return {"k_scale": r.uniform(0.1, 1, (L, H * D)).astype(np.float32),
            "v_scale": r.uniform(0.1, 1, (L, H * D)).astype(np.float32),
            "k_zero_point": r.uniform(-3, 3, (L, H * D)).astype(np.float32),
            "v_zero_point": r.uniform(-3, 3, (L, H * D)).astype(np.float32)}


def test_file_roundtrip_and_missing_format(tmp_path):
    p = tmp_path / "s.safetensors"
    int8 = {"k_scale": np.full((L, H * D), 2.0, np.float32), "v_scale": np.full((L, H * D), 3.0, np.float32)}
    kv_scales.save(p, {"int8": int8, "int4_zp": int4_opts()}, {"model": "x"})
    got = kv_scales.options_for(kv.get("int4_zp"), CFG, path=p)
    for n, a in int4_opts().items():
        np.testing.assert_array_equal(got[n], a)
    np.testing.assert_array_equal(kv_scales.load(p, kv.get("int8"), CFG)["v_scale"], int8["v_scale"])
    with pytest.raises(InputError, match="no scales for kv_cache 'float8_e4m3fn'.*int4_zp, int8"):
        kv_scales.load(p, kv.get("float8_e4m3fn"), CFG)
    with pytest.raises(CheckpointError, match=r"shape \[16\].*needs \[4\]"):   # wrong model: 4 kv heads
        other = SimpleNamespace(num_hidden_layers=L, num_key_value_heads=4, head_dim=1)
        kv_scales.load(p, kv.get("int8"), other)
    with pytest.raises(InputError, match="no such file"):
        kv_scales.load(tmp_path / "nope", kv.get("int8"), CFG)
    with pytest.raises(InputError, match="takes no static scales"):
        kv_scales.options_for(kv.get("block_wise_fp8"), CFG, path=p)
    assert kv_scales.options_for(kv.get("block_wise_fp8"), CFG) == {}
    assert kv_scales.options_for(kv.get("int8"), CFG) is None                  # static, none given: calibrate


class FakeTensors:
    def __init__(self, d):
        self.d = d

    def keys(self):
        return self.d.keys()

    def get(self, k):
        return self.d[k]


def test_fastdeploy_checkpoint_keys():
    pre = "ernie.layers.{}.self_attn.cache{}_matmul.activation_scale"
    t = {pre.format(i, c): np.full(H, 5.0 + i, np.float32) for i in range(L) for c in "kv"}
    t["ernie.layers.0.mlp.up_proj.weight"] = np.zeros(3)
    opts = kv_scales.from_checkpoint(FakeTensors(t), kv.get("float8_e4m3fn"), CFG)
    np.testing.assert_array_equal(opts["k_scale"], [[5, 5], [6, 6]])
    cache = kv.get("float8_e4m3fn")(CFG, 1, 4, get_backend("cpu"), **opts)
    assert cache.calibrated
    with pytest.raises(CheckpointError, match=r"shape \[2\].*needs \[16\]"):     # per-head scales for int8
        kv_scales.from_checkpoint(FakeTensors(t), kv.get("int8"), CFG)
    del t[pre.format(1, "v")]
    with pytest.raises(CheckpointError, match="layers.1.cachev_matmul.activation_scale.*missing"):
        kv_scales.from_checkpoint(FakeTensors(t), kv.get("float8_e4m3fn"), CFG)
    assert kv_scales.from_checkpoint(FakeTensors({"a.weight": np.zeros(1)}), kv.get("int8"), CFG) is None


def _int4_mse(x, lo, hi):
    s = (hi - lo) / 14
    q = np.clip(np.rint((x - lo) / s), 0, 14)
    return ((lo + q * s - x) ** 2).mean(0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), df=st.floats(1.5, 30))
def test_mse_range_beats_min_max(seed, df):
    """The clipped range never loses to plain min/max (it is in the grid), and wins on moderate tails (with
    extreme ones, clipping a 1000x outlier costs more than it saves, so min/max can be optimal)."""
    x = np.random.default_rng(seed).standard_t(df, (2000, 3)).astype(np.float32)
    lo, hi = kv_scales._mse_range(x)
    mn, mx = x.min(0), x.max(0)
    assert (lo >= mn - 1e-6).all() and (hi <= mx + 1e-6).all() and (hi > lo).all()
    assert (_int4_mse(x, lo, hi) <= _int4_mse(x, mn, mx) * 1.02).all()        # histogram vs exact: 2% slack
    if 2.5 < df < 10:
        assert (_int4_mse(x, lo, hi) < _int4_mse(x, mn, mx) * 0.8).all()


def test_rotated_keys_cover_positions():
    """Re-rotating keys keeps each RoPE pair's norm and reaches the angles of far positions."""
    from fdlite.rope import Rope, apply_rope

    cfg = SimpleNamespace(head_dim=D, max_position_embeddings=4096, rope=SimpleNamespace(
        theta=10000.0, type="default", interleaved=False, original_max_position_embeddings=None))
    rope = Rope(cfg)
    k0 = np.zeros((4, 1, D), np.float32)
    k0[..., D // 2 - 1] = 1.0                                                  # lowest-frequency pair only
    pos = np.arange(4)
    c, s = rope.cos_sin(pos)
    k = apply_rope(k0, c, s, False, np)
    out = kv_scales._rotated_keys(k, pos, rope, 4096, np.random.default_rng(0))
    assert out.shape == (4 * (1 + kv_scales.ROTATIONS), 1, D)
    pair = out[..., [D // 2 - 1, D - 1]]
    np.testing.assert_allclose(np.linalg.norm(pair, axis=-1), 1, rtol=1e-5)
    assert np.abs(out[..., D - 1]).max() > 5 * np.abs(k[..., D - 1]).max()    # the partner channel grows


def test_calibration_too_short():
    model = SimpleNamespace()
    with pytest.raises(InputError, match=f"100 tokens; at least {kv_scales.MIN_TOKENS}"):
        kv_scales.record(model, [[1] * 60, [2] * 40])
    with pytest.raises(InputError, match="static formats: int8, float8_e4m3fn, int4_zp"):
        kv_scales.fit("block_wise_fp8", None, CFG, None, 16)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_fp8_scale_search_never_loses_to_abs_max(seed):
    """The fp8 scale search stays in [base, 2 base) and beats (or ties) the plain margin-scaled abs-max."""
    from fdlite.kv._quant import e4m3_decode, e4m3_encode

    r = np.random.default_rng(seed)
    x = (r.standard_normal((500, H, D)) + r.uniform(-20, 20, (1, H, D))).astype(np.float32)  # massive chans
    hb = np.abs(x).max(axis=(0, 2)) * 2
    h = kv_scales._fp8_scale(x, hb, np.random.default_rng(0))
    assert ((h >= hb * (1 - 1e-6)) & (h < 2 * hb)).all()

    def mse_fp8(A):
        s = A[:, None] / 448
        return ((e4m3_decode(e4m3_encode(x / s, np), np) * s - x) ** 2).sum(axis=(0, 2))
    assert (mse_fp8(h) <= mse_fp8(hb) * (1 + 1e-6)).all()


def test_calibrate_refuses_tensor_parallel(tmp_path, capsys):
    """`fdlite calibrate` writes every KV head's scales: it runs on one process (rank 0 of a tensor-parallel load
    holds only its own heads), and says so before loading anything."""
    from fdlite import cli

    rc = cli.main(["calibrate", "--out", str(tmp_path / "s.safetensors"), "--model", str(tmp_path / "none"),
                   "--device", "cpu", "--tensor-parallel-size", "2"])
    assert rc == 2 and "fdlite calibrate runs on one process (--tensor-parallel-size 2)" in capsys.readouterr().err
    assert not (tmp_path / "s.safetensors").exists()
