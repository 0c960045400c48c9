"""Tensor / expert parallel sharding (fdlite.parallel): reassembly is exact, the math is preserved per
method, and a simulated N-rank forward of the tiny fixture models equals Model.logits.
No collective runs here: NCCL is not tested."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fdlite import Model
from fdlite.errors import InputError
from fdlite.moe import group_by_expert, route
from fdlite.parallel import experts as ep
from fdlite.parallel import simulate
from fdlite.parallel.sharding import (activation_scope, column_shards, gate_up_segments, k_unit, kv_heads_of,
                                     n_unit, qkv_segments, reassemble, row_shards, split_even, take_cols,
                                     take_rows)
from fdlite.quant import get as get_method
from fdlite.quant.base import Packed

from conftest import FIXTURES

HF = FIXTURES / "hf"
# (method, options) pairs: every packed layout, with groups small enough for small random shapes
METHODS = [("dense", {}), ("wint8", {}), ("wint4", {"group_size": 16}), ("wint4", {"group_size": -1}),
           ("nf4", {"group_size": 8}), ("nf4", {"group_size": 8, "activation": "int8"}), ("w8a8", {}),
           ("w4a8", {"group_size": 16}), ("w4afp8", {}), ("wfp8afp8", {}),
           ("block_wise_fp8", {"weight_block_size": [16, 32]}), ("wint8", {"group_size": 32}), ("wint2", {})]


def _quantized(data, idx=None):
    name, opts = METHODS[data.draw(st.integers(0, len(METHODS) - 1)) if idx is None else idx]
    m = get_method(name)(**opts)
    N = data.draw(st.integers(1, 6)) * 16
    K = data.draw(st.sampled_from([64, 96, 130, 256, 300] if name != "w4afp8" else [256, 300, 512]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    w = rng.standard_normal((N, K)).astype(np.float32)
    w[:, data.draw(st.integers(0, K - 1))] *= 20                             # an outlier column
    return m, m.quantize(w), rng


def _same(a: Packed, b: Packed):
    assert a.method == b.method and a.shape == b.shape and a.meta == b.meta and set(a.arrays) == set(b.arrays)
    for k in a.arrays:
        assert a.arrays[k].dtype == b.arrays[k].dtype and np.array_equal(a.arrays[k], b.arrays[k]), k


# --------------------------------------------------------------------------------------- (a) reassembly

@given(st.data())
@settings(max_examples=60, deadline=None)
def test_reassemble_is_exact(data):
    _, p, _ = _quantized(data)
    N, K = p.shape
    tp = data.draw(st.integers(1, 4))
    kr = split_even(K, min(tp, -(-K // k_unit(p))), k_unit(p))
    cols = row_shards(p, kr)
    assert [c.shape for c in cols] == [(N, e - s) for s, e in kr]
    _same(reassemble(cols[::-1]), p)                     # the order of the list does not matter
    nr = split_even(N, min(tp, -(-N // n_unit(p))), n_unit(p))
    rows = column_shards(p, [[r] for r in nr])
    assert sum(r.shape[0] for r in rows) == N
    _same(reassemble(rows), p)


# ----------------------------------------------------------------------------- (b) the math is preserved

@given(st.data())
@settings(max_examples=60, deadline=None)
def test_column_parallel_concat_equals_whole(data):
    m, p, rng = _quantized(data)
    N, K = p.shape
    x = rng.standard_normal((data.draw(st.integers(1, 5)), K)).astype(np.float32)
    tp = data.draw(st.integers(1, 3))
    nr = split_even(N, min(tp, -(-N // n_unit(p))), n_unit(p))
    shards = column_shards(p, [[r] for r in nr])
    y = m.matmul(x, p, np)
    ys = np.concatenate([m.matmul(x, s, np) for s in shards], axis=1)          # all-gather
    assert np.abs(ys - y).max() <= 1e-5 * (np.abs(y).max() + 1)


@given(st.data())
@settings(max_examples=60, deadline=None)
def test_row_parallel_sum_equals_whole(data):
    m, p, rng = _quantized(data)
    K = p.shape[1]
    x = rng.standard_normal((data.draw(st.integers(1, 5)), K)).astype(np.float32)
    tp = data.draw(st.integers(2, 4))
    kr = split_even(K, min(tp, -(-K // k_unit(p))), k_unit(p))
    y = m.matmul(x, p, np)
    ys = sum(m.matmul(x[:, s:e], sh, np) for (s, e), sh in zip(kr, row_shards(p, kr)))   # all-reduce
    scope = activation_scope(m, p)
    exact = scope is None or (isinstance(scope, int) and all(s % scope == 0 for s, _ in kr))
    if exact:
        assert np.abs(ys - y).max() <= 1e-5 * (np.abs(y).max() + 1)
    else:   # each rank quantizes its own slice of x: both are within the activation rounding of x @ W_hat
        wa = np.abs(m.dequantize(p, np))                                         # (N, K)
        amax = np.abs(x).max(1, keepdims=True)                                   # (M, 1); a shard's is <= it
        if p.method in ("wfp8afp8", "w4afp8", "block_wise_fp8"):   # e4m3: half ulp 2^-4 relative, subnormals
            step = np.abs(x) / 16 + amax / 448 / 1024
        else:                                                      # int8 per token: half a step of amax / 127
            step = np.broadcast_to(amax / 254, x.shape)
        assert np.all(np.abs(ys - y) <= 2 * step @ wa.T * (1 + 1e-4) + 1e-5)


def test_k_split_changes_only_dynamic_per_token_activations():
    """The bound above is not vacuous: a per-token int8 method's row-parallel sum really differs."""
    rng = np.random.default_rng(0)
    w, x = rng.standard_normal((32, 64)).astype(np.float32), rng.standard_normal((4, 64)).astype(np.float32)
    x[:, 0] = 50                                                              # amax lives in rank 0's slice
    m = get_method("w8a8")()
    p = m.quantize(w)
    halves = [(0, 32), (32, 64)]
    parts = sum(m.matmul(x[:, s:e], sh, np) for (s, e), sh in zip(halves, row_shards(p, halves)))
    assert np.abs(parts - m.matmul(x, p, np)).max() > 1e-3
    assert activation_scope(m, p) == "row"


# ------------------------------------------------------------------------------------------------- rejections

@pytest.mark.parametrize("name,opts,shape,cut,msg", [
    ("wint4", {"group_size": 32}, (16, 128), ("cols", 0, 48), "whole groups of 32"),
    ("wint4", {"group_size": -1}, (16, 64), ("cols", 0, 33), "split a byte"),
    ("block_wise_fp8", {}, (256, 256), ("rows", 0, 192), "128-row block"),
    ("block_wise_fp8", {}, (256, 256), ("cols", 64, 256), "128-column block"),
    ("dense", {}, (8, 8), ("cols", 4, 9), r"outside \[0, 8\)"),
])
def test_bad_cuts_are_refused_with_the_numbers(name, opts, shape, cut, msg):
    m = get_method(name)(**opts)
    p = m.quantize(np.ones(shape, np.float32))
    with pytest.raises(InputError, match=msg):
        take_cols(p, cut[1], cut[2]) if cut[0] == "cols" else take_rows(p, [cut[1:]])


def test_gpu_packed_and_bad_head_counts_are_refused():
    p = get_method("dense")().quantize(np.ones((4, 4), np.float32))
    with pytest.raises(InputError, match="shard the host Packed"):
        take_rows(Packed(p.method, p.shape, p.arrays, {"gpu": "mma_wq"}), [(0, 2)])
    with pytest.raises(InputError, match="num_key_value_heads = 3 and tensor_parallel_size = 2"):
        kv_heads_of(3, 2, 0)
    with pytest.raises(InputError, match="num_attention_heads = 9 is not a multiple of tensor_parallel"):
        qkv_segments(9, 3, 64, 2, 0)
    with pytest.raises(InputError, match="intermediate size 10 is not a multiple"):
        gate_up_segments(10, 4, 0)


# ---------------------------------------------------------------------------------------------------- plans

@given(nkv=st.sampled_from([1, 2, 3, 4, 8]), groups=st.integers(1, 4), tp=st.sampled_from([1, 2, 4, 8]),
       D=st.sampled_from([2, 4]))
@settings(max_examples=80, deadline=None)
def test_qkv_plan_keeps_every_q_head_with_its_kv_head(nkv, groups, tp, D):
    nh = nkv * groups
    if nh % tp or (nkv % tp and tp % nkv):
        with pytest.raises(InputError):
            [qkv_segments(nh, nkv, D, tp, r) for r in range(tp)]
        return
    held_q = []
    for r in range(tp):
        (q0, q1), (k0, k1), (v0, v1) = qkv_segments(nh, nkv, D, tp, r)
        qs, ks = range(q0 // D, q1 // D), range((k0 - nh * D) // D, (k1 - nh * D) // D)
        assert v1 - v0 == k1 - k0 and (v0 - (nh + nkv) * D) // D == ks[0]
        assert all(h // groups in ks for h in qs)        # GQA: q head h reads kv head h // groups
        held_q += list(qs)
    assert sorted(held_q) == list(range(nh))             # each q head on exactly one rank


def test_kv_cache_is_sharded_by_kv_head():
    from fdlite.backend import get_backend
    from fdlite.kv import get as get_kv

    with Model.load(HF / "llama", device="cpu") as m:                        # 4 q heads, 2 kv heads
        whole = get_kv("bf16")(m.config, 1, 16, get_backend("cpu")).bytes_per_token()
        for tp in (2, 4):                                # tp 4: each kv head replicated on two ranks
            cfgs = [simulate.rank_config(m.config, tp, r) for r in range(tp)]
            got = [get_kv("bf16")(c, 1, 16, get_backend("cpu")).bytes_per_token() for c in cfgs]
            assert got == [whole / 2] * tp


# -------------------------------------------------------------------------------------------- expert parallel

@given(N=st.integers(0, 40), E=st.integers(1, 16), data=st.data())
@settings(max_examples=60, deadline=None)
def test_dispatch_covers_every_pair_once_and_combine_is_the_moe_sum(N, E, data):
    k, n_ep = data.draw(st.integers(1, E)), data.draw(st.integers(1, E))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x = rng.standard_normal((N, 8)).astype(np.float32)
    w, ids = route(x, rng.standard_normal((E, 8)).astype(np.float32), None, k, 1e-12, np)
    ds = ep.dispatch(ids, E, n_ep)
    assert sorted(np.concatenate([d.flat for d in ds]).tolist()) == list(range(N * k))
    order, counts = group_by_expert(ids, E, np)
    assert np.concatenate([d.flat for d in ds]).tolist() == order.tolist()   # single-process order, cut
    assert [c for d in ds for c in d.counts] == counts
    for d, (s, e) in zip(ds, ep.expert_ranges(E, n_ep)):
        assert np.all((ids.reshape(-1)[d.flat] >= s) & (ids.reshape(-1)[d.flat] < e))
    y = rng.standard_normal((N * k, 8)).astype(np.float32)                    # expert output of every pair
    whole = (y.reshape(N, k, 8) * w[:, :, None]).sum(1)
    parts = sum(ep.combine(d, y[d.flat], w, N) for d in ds)
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-5)


def test_expert_placement_and_all_to_all_counts():
    assert ep.expert_ranges(8, 4) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert ep.owner(5, 2).tolist() == [0, 0, 1, 1, 1]
    with pytest.raises(InputError, match=r"\[1, moe_num_experts = 4\]"):
        ep.expert_ranges(4, 5)
    ids = [np.array([[0, 7], [3, 4]]), np.array([[6, 7]])]
    c = ep.send_counts(ids, 8, 4)
    assert c.tolist() == [[1, 1, 1, 1], [0, 0, 0, 2]] and c.sum() == 6
    assert ep.displacements(c).tolist() == [[0, 1, 2, 3], [0, 0, 0, 0]]


# ----------------------------------------------------------------- (c) simulated N-rank forward == logits

CASES = [("llama", None), ("qwen3", None), ("qwen2", None), ("ernie4_5_bias", None), ("ernie4_5_moe", None),
         ("mistral_sliding", None), ("llama", {"quantization": "wint4", "group_size": 16}),
         ("ernie4_5_moe", {"quantization": "wint4", "group_size": 16}),
         ("qwen3", {"quantization": "block_wise_fp8", "weight_block_size": [16, 16]})]


@pytest.mark.parametrize("name,quant", CASES)
def test_simulated_tp_forward_equals_single_process_logits(name, quant):
    with Model.load(HF / name, device="cpu", quantization=quant) as m:
        ids = np.random.default_rng(1).integers(0, m.config.vocab_size, (2, 13))
        ref = m.logits(ids)
        for tp in (1, 2, 4):               # tp 4 > 2 kv heads: each kv head is replicated on two ranks
            out = simulate.logits(m, ids, tp)
            assert out.shape == ref.shape
            assert np.abs(out - ref).max() <= 1e-5, (tp, float(np.abs(out - ref).max()))


def test_simulated_tp_wint2_equals_single_process_logits():
    """wint2 (CCQ, N the last axis, 128-row scale bytes) under tensor parallelism: a model whose per-rank K ranges
    are whole 128-row units (o_proj 2 heads x 128, down_proj 512 over 2 and 4 ranks) gives the one-process
    logits; the tiny fixtures' 32-column K ranges are refused with the numbers."""
    with Model.from_config("llama-3-8b", device="cpu", quantization="wint2", num_hidden_layers=2, hidden_size=256,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=128, intermediate_size=512,
                           vocab_size=300, max_model_len=64) as m:
        assert m.params["layers"][0]["w2"].packed.method == "wint2"
        ids = np.random.default_rng(4).integers(0, 300, (2, 11))
        ref = m.logits(ids)
        for tp in (2, 4):                  # tp 4: 128 columns of o_proj and of down_proj per rank
            assert np.abs(simulate.logits(m, ids, tp) - ref).max() <= 1e-5 * (np.abs(ref).max() + 1)
    with Model.load(HF / "llama", device="cpu", quantization="wint2") as m:
        with pytest.raises(InputError, match=r"wint2 weight \(64, 64\): columns \[0, 32\) are not whole "
                                             r"128-column scale bytes"):
            simulate.shard_model(m, 2)


def test_simulated_tp_with_a_static_int8_kv_cache():
    """Static per-channel KV scales are cut by KV head along with the cache."""
    with Model.load(HF / "qwen2", device="cpu", quantization="wint8", kv_cache="int8") as m:
        assert m._kv_options.get("k_scale") is not None
        ids = np.random.default_rng(2).integers(0, m.config.vocab_size, (1, 17))
        ref = m.logits(ids)
        for tp in (2, 4):
            assert np.abs(simulate.logits(m, ids, tp) - ref).max() <= 1e-5


def test_simulation_catches_a_wrong_plan():
    """Negative control: keeping the row-parallel o bias on every rank adds it tp times; the check sees it."""
    with Model.load(HF / "ernie4_5_bias", device="cpu") as m:
        ids = np.arange(9)[None]
        ranks = simulate.shard_model(m, 2)
        ranks[1].params["layers"][0]["wo"].bias = m.params["layers"][0]["wo"].bias
        assert np.abs(simulate.logits(m, ids, 2, ranks) - m.logits(ids)).max() > 1e-3


@pytest.mark.slow
def test_smollm2_three_ranks(smollm2, smollm2_ref):
    """The real model: 9 q heads / 3 kv heads split over 3 ranks (2 ranks are refused: 9 % 2). 30 layers of
    float32 reassociation: measured max |diff| 9.6e-5 on logits up to 34.9 (48 tokens)."""
    ids = smollm2_ref[0]["wikitext_ids"][:32][None].astype(np.int64)
    ref = smollm2.logits(ids)
    out = simulate.logits(smollm2, ids, 3)
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()
    assert (out.argmax(-1) == ref.argmax(-1)).all()
    with pytest.raises(InputError, match="num_attention_heads = 9"):
        simulate.shard_model(smollm2, 2)
