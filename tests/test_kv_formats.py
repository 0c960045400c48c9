"""Quantized KV formats: write-then-read error bounds, packing, paged addressing, static-scale clipping,
bad input. Small synthetic configs on the CPU backend; hypothesis draws the values."""
from __future__ import annotations

from types import SimpleNamespace

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fdlite import kv
from fdlite.backend import get_backend
from fdlite.errors import ConfigError, InputError
from fdlite.kv import int4_zp
from fdlite.kv.base import StepMeta

BACKEND = get_backend("cpu")
L, H, D, BS = 2, 2, 8, 4
CFG = SimpleNamespace(num_hidden_layers=L, num_key_value_heads=H, head_dim=D)
QUANTIZED = ["int8", "float8_e4m3fn", "block_wise_fp8", "int4_zp"]


def values(n_tokens=st.integers(1, 12)):
    """(N, H, D) float32 tokens: mixed magnitudes, exact zeros, outliers, optionally one hot channel."""
    @st.composite
    def draw(d):
        n = d(n_tokens)
        x = d(hnp.arrays(np.float32, (n, H, D), elements=st.one_of(
            st.just(0.0), st.floats(-1, 1, width=32), st.floats(-300, 300, width=32))))
        if d(st.booleans()):                                   # a single hot channel
            x[:, d(st.integers(0, H - 1)), d(st.integers(0, D - 1))] *= 1000
        return x
    return draw()


def static_opts(name, k, v, margin=1.0):
    """Scales that cover k, v (the tokens to be written) exactly: abs-max, or min/max for int4_zp."""
    if name == "int8":
        return {f"{n}_scale": np.tile(np.maximum(np.abs(x).max(0), 1e-6).reshape(-1) * margin, (L, 1))
                for n, x in (("k", k), ("v", v))}
    if name == "float8_e4m3fn":
        return {f"{n}_scale": np.tile(np.maximum(np.abs(x).max(axis=(0, 2)), 1e-6) * margin, (L, 1))
                for n, x in (("k", k), ("v", v))}
    if name == "int4_zp":
        out = {}
        for n, x in (("k", k), ("v", v)):
            lo, hi = x.min(0).reshape(-1) * margin, x.max(0).reshape(-1) * margin
            s = np.maximum((hi - lo) / 14, 1e-6)
            out[f"{n}_scale"], out[f"{n}_zero_point"] = np.tile(s, (L, 1)), np.tile(-7 - lo / s, (L, 1))
        return out
    return {}


def make(name, num_blocks=8, **opts):
    return kv.get(name)(CFG, num_blocks, BS, BACKEND, **opts)


def roundtrip(cache, k, v, table=None, layer=1):
    n = len(k)
    table = table or list(range(-(-n // BS)))
    meta = StepMeta.build([(0, n, table)], BS)
    cache.write(layer, k, v, meta)
    rk, rv = cache.read(layer, meta)                                              # (1, L, H, D)
    return rk[0, :n], rv[0, :n]


def bound(name, x, opts, kind):
    """Per-element worst-case |x - x^| for format ``name`` when x lies inside the static range."""
    ax = np.abs(x)
    if name == "int8":
        return np.broadcast_to(opts[f"{kind}_scale"][1].reshape(H, D) / 127 / 2, x.shape)
    if name == "int4_zp":
        return np.broadcast_to(opts[f"{kind}_scale"][1].reshape(H, D) / 2, x.shape)
    # e4m3: half an ulp = 2^-4 relative for normals; 2^-10 (in units of A / 448) for subnormals
    amax = opts[f"{kind}_scale"][1][None, :, None] if name == "float8_e4m3fn" else ax.max(-1, keepdims=True)
    return np.maximum(ax * 2.0 ** -4, amax / 448 * 2.0 ** -10)


@pytest.mark.parametrize("name", QUANTIZED)
@settings(max_examples=40, deadline=None)
@given(k=values(), v_seed=st.integers(0, 2**31))
def test_write_read_within_bound(name, k, v_seed):
    v = (np.random.default_rng(v_seed).standard_normal(k.shape) * 3).astype(np.float32)
    opts = static_opts(name, k, v)
    rk, rv = roundtrip(make(name, **opts), k, v)
    for kind, x, r in (("k", k, rk), ("v", v, rv)):
        err = np.abs(r.astype(np.float64) - x)
        tol = bound(name, x, opts, kind) * (1 + 1e-5) + 1e-30 + np.abs(x) * 1e-6
        assert (err <= tol).all(), f"{name} {kind}: max excess {(err - tol).max()}"
    if name in ("int8", "float8_e4m3fn", "block_wise_fp8"):   # zeros stay exact zeros
        assert (rk[k == 0] == 0).all()


@settings(max_examples=60, deadline=None)
@given(q=hnp.arrays(np.int8, hnp.array_shapes(min_dims=1, max_dims=3, max_side=6).map(
    lambda s: s[:-1] + (2 * s[-1],)), elements=st.integers(-7, 7)))
def test_int4_pack_unpack_inverse(q):
    b = int4_zp.pack(q, np)
    assert b.dtype == np.uint8 and b.shape == q.shape[:-1] + (q.shape[-1] // 2,)
    np.testing.assert_array_equal(int4_zp.unpack(b, np), q)
    np.testing.assert_array_equal(b & 0x0F, q[..., 0::2] + 8)                    # even d in the low nibble
    assert ((b & 0x0F) >= 1).all() and ((b >> 4) >= 1).all()                    # nibble 0 is never written


@pytest.mark.parametrize("name", ["bf16"] + QUANTIZED)
@settings(max_examples=15, deadline=None)
@given(k=values(st.integers(5, 12)), perm_seed=st.integers(0, 2**31))
def test_paged_addressing_scattered_blocks(name, k, perm_seed):
    """Tokens written through a non-contiguous block table, in two steps, read back in sequence order and
    identical to a contiguous write of the same tokens."""
    v = -k
    opts = static_opts(name, k, v)
    n = len(k)
    nb = -(-n // BS)
    table = list(np.random.default_rng(perm_seed).permutation(8)[:nb])
    scattered = make(name, **opts)
    cut = n // 2
    for s, e in ((0, cut), (cut, n)):
        scattered.write(0, k[s:e], v[s:e], StepMeta.build([(s, e - s, table)], BS))
    meta = StepMeta.build([(n - 1, 1, table)], BS)
    sk, sv = scattered.read(0, meta)
    ck, cv = roundtrip(make(name, **opts), k, v, layer=0)
    np.testing.assert_array_equal(sk[0, :n], ck)
    np.testing.assert_array_equal(sv[0, :n], cv)
    untouched = [b for b in range(8) if b not in table]                         # other blocks stay empty
    for arr in scattered.layers[0].values():
        assert not np.asarray(arr[untouched]).any()


@pytest.mark.parametrize("name", ["int8", "float8_e4m3fn", "int4_zp"])
def test_static_scales_clip(name):
    """Values beyond the calibrated range saturate at its ends; inside it they are kept."""
    k = np.linspace(-1, 1, 2 * H * D, dtype=np.float32).reshape(2, H, D)
    opts = static_opts(name, k, k)
    big = k * 50
    rk, _ = roundtrip(make(name, **opts), big, big)
    top = {"int8": 1.0, "float8_e4m3fn": 1.0}.get(name)
    if top is not None:                                       # symmetric: clipped to +-A exactly
        amax = np.abs(k).max(0) if name == "int8" else np.abs(k).max(axis=(0, 2))[:, None]
        np.testing.assert_allclose(np.abs(rk), np.broadcast_to(amax * top, rk.shape), rtol=1e-6)
    else:                                                     # int4_zp: clipped to [lo, hi] of each channel
        lo, hi = k.min(0), k.max(0)
        assert (rk >= lo - 1e-6).all() and (rk <= hi + 1e-6).all()
        np.testing.assert_allclose(rk[0], lo, atol=1e-6)
        np.testing.assert_allclose(rk[1], hi, atol=1e-6)


@pytest.mark.parametrize("name", ["float8_e4m3fn", "block_wise_fp8"])
def test_fp8_round_to_int_flag(name):
    """FastDeploy's quirk (round to an integer before the cast) only behind fp8_kv_round_to_int."""
    k = np.zeros((1, H, D), np.float32)
    k[0, :, 0] = 448.0                                         # sets the scale to 1 (in units of A/448)
    k[0, :, 1], k[0, :, 2], k[0, :, 3] = 0.3, 2.3, 0.75
    opts = {**static_opts(name, k, k)}
    plain, _ = roundtrip(make(name, **opts), k, k)
    quirk, _ = roundtrip(make(name, **opts, fp8_kv_round_to_int=True), k, k)
    exact = k.astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
    np.testing.assert_allclose(plain, exact, rtol=1e-6)
    np.testing.assert_allclose(quirk[0, :, 1:4], np.broadcast_to([0.0, 2.0, 1.0], (H, 3)), rtol=1e-6)


def test_bytes_per_token():
    per = {n: make(n).bytes_per_token() for n in ["bf16"] + QUANTIZED}
    elems = 2 * L * H * D
    assert per["bf16"] == elems * BACKEND.compute_dtype.itemsize
    assert per["int8"] == per["float8_e4m3fn"] == elems
    assert per["int4_zp"] == elems // 2
    assert per["block_wise_fp8"] == elems + 2 * L * H * 4                      # + one float32 scale per head
    for n in QUANTIZED:                                                         # storage matches the claim
        c = make(n, num_blocks=3)
        assert c.nbytes == per[n] // L * L * 3 * BS


def test_bad_input():
    good = static_opts("int8", np.ones((1, H, D), np.float32), np.ones((1, H, D), np.float32))
    with pytest.raises(InputError, match=r"\[2, 8\].*\[2, 16\]"):
        make("int8", k_scale=np.ones((L, 8)), v_scale=good["v_scale"])
    with pytest.raises(InputError, match="must be > 0.*0.0"):
        make("int8", k_scale=np.zeros((L, H * D)), v_scale=good["v_scale"])
    with pytest.raises(InputError, match="> 0.*-1.0 at layer 1 index 3"):
        bad = good["k_scale"].copy()
        bad[1, 3] = -1
        make("int8", k_scale=bad, v_scale=good["v_scale"])
    with pytest.raises(InputError, match=r"needs all of"):
        make("int8", k_scale=good["k_scale"])
    with pytest.raises(InputError, match=r"\[2, 16\].*\[2, 2\]"):
        make("float8_e4m3fn", k_scale=good["k_scale"], v_scale=good["v_scale"])
    with pytest.raises(InputError, match="takes no option"):
        make("block_wise_fp8", k_scale=good["k_scale"])
    with pytest.raises(InputError, match="unknown kv_cache 'int3'.*block_wise_fp8.*int4_zp"):
        kv.get("int3")
    with pytest.raises(ConfigError, match="no static scales"):                  # uncalibrated static cache
        roundtrip(make("int8"), np.ones((1, H, D), np.float32), np.ones((1, H, D), np.float32))
    with pytest.raises(ConfigError, match="head_dim=7 is odd"):
        odd = SimpleNamespace(num_hidden_layers=1, num_key_value_heads=1, head_dim=7)
        kv.get("int4_zp")(odd, 1, BS, BACKEND)


@given(st.lists(st.tuples(st.integers(0, 60), st.integers(1, 20), st.integers(0, 2)), min_size=1, max_size=8),
       st.sampled_from([1, 4, 16]), st.sampled_from(["last", "all"]), st.integers(0, 2**31))
@settings(max_examples=200, deadline=None)
def test_step_meta_build_meaning(spec, bs, logits, seed):
    """StepMeta.build (vectorized) against its definition, token by token: token i of sequence b is at position
    start_b + i, in slot table_b[pos // bs] * bs + pos % bs; padded queries repeat the last position."""
    rng = np.random.default_rng(seed)
    seqs = [(s, n, rng.permutation(500)[:-(-(s + n) // bs) + extra].tolist()) for s, n, extra in spec]
    m = StepMeta.build(seqs, bs, logits)
    i = 0
    for b, (s, n, table) in enumerate(seqs):
        for j in range(n):
            pos = s + j
            assert (m.positions[i], m.rows[i], m.cols[i], m.rope_lens[i]) == (pos, b, j, s + n)
            assert m.slots[i] == table[pos // bs] * bs + pos % bs
            i += 1
        assert m.q_pos[b].tolist() == [s + min(j, n - 1) for j in range(m.q_pos.shape[1])]
        assert m.block_tables[b, :len(table)].tolist() == table and m.kv_lens[b] == s + n
    assert i == len(m.positions)
    ends = np.cumsum([n for _, n, _ in seqs])
    assert m.logit_rows.tolist() == (list(range(i)) if logits == "all" else (ends - 1).tolist())
    with pytest.raises(ValueError, match="cannot hold"):
        StepMeta.build(seqs + [(bs * 2, 1, [0, 1])], bs)
