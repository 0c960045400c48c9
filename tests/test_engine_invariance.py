"""Batch invariance: a request's output does not depend on which other requests share its batch.

Unit level: a row of a TiledLinear and a query of invariant.attention give bit-identical results whatever rows,
padding and chunking surround them. Model level: the real SmolLM2, one prompt alone vs inside mixed batches."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fdlite import SamplingParams
from fdlite.backend import get_backend
from fdlite.engine import invariant
from fdlite.quant import get as get_method
from fdlite.quant.base import Linear

CPU = get_backend("cpu")


def _linear(name, n, k, seed=0):
    w = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32) * 0.05
    m = get_method(name)()
    return invariant.TiledLinear(m, m.prepare(m.quantize(w), CPU), None, np)


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(["dense", "wint8", "wfp8afp8"]), shape=st.sampled_from([(128, 64), (96, 256), (576, 64)]),
       m=st.integers(1, 40), pos=st.integers(0, 39), seed=st.integers(0, 2**16))
def test_tiled_linear_row_is_independent_of_the_batch(name, shape, m, pos, seed):
    """Row r of the output equals the row computed alone, for any batch size and position (bitwise)."""
    lin = _linear(name, *shape)
    x = np.random.default_rng(seed).standard_normal((max(m, pos + 1), shape[1])).astype(np.float32)
    invariant._ON.active = True
    try:
        batched, alone = lin(x)[pos], lin(x[pos:pos + 1])[0]
    finally:
        invariant._ON.active = False
    assert np.array_equal(batched, alone)
    assert np.allclose(batched, Linear.__call__(lin, x)[pos], rtol=1e-4, atol=1e-5)   # same math as a GEMM


@settings(max_examples=30, deadline=None)
@given(kv_len=st.integers(1, 200), chunk=st.integers(1, 20), pad_keys=st.integers(0, 130),
       others=st.integers(0, 3), window=st.sampled_from([None, 17]), seed=st.integers(0, 2**16))
def test_attention_query_is_independent_of_padding_chunks_and_neighbours(kv_len, chunk, pad_keys, others, window,
                                                                        seed):
    rng = np.random.default_rng(seed)
    H, Hkv, D = 6, 2, 16
    L = kv_len + pad_keys
    k = rng.standard_normal((1 + others, L, Hkv, D)).astype(np.float32)
    v = rng.standard_normal((1 + others, L, Hkv, D)).astype(np.float32)
    chunk = min(chunk, kv_len)
    q = rng.standard_normal((1 + others, chunk, H, D)).astype(np.float32)
    pos = np.arange(kv_len - chunk, kv_len)
    q_pos = np.tile(pos, (1 + others, 1))
    lens = np.array([kv_len] + rng.integers(1, L + 1, others).tolist())
    q_pos[1:] = np.minimum(q_pos[1:], lens[1:, None] - 1)
    out = invariant.attention(q, k, v, q_pos, lens, window, 0.25, np)                 # (B, chunk, H, D)
    last = invariant.attention(q[:1, -1:], k[:1, :kv_len], v[:1, :kv_len], q_pos[:1, -1:], lens[:1], window, 0.25, np)
    assert np.array_equal(out[0, -1], last[0, 0])                                     # bitwise
    from fdlite import ops  # noqa: PLC0415

    ref = ops.attention(q, k, v, q_pos, lens, window, 0.25, np)
    assert np.allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_smollm2_output_independent_of_batch(smollm2, smollm2_ref):
    """The real model: each prompt alone == inside a batch with the others (greedy and seeded sampling), with
    chunked prefill forced by a small token budget. Logprobs compared bitwise."""
    ids = smollm2_ref[0]["wikitext_ids"]
    prompts = [ids[i * 50: i * 50 + n].tolist() for i, n in enumerate((5, 21, 11))]
    params = [SamplingParams(temperature=0, max_tokens=3, ignore_eos=True, logprobs=0),
              SamplingParams(temperature=0.9, top_p=0.9, max_tokens=3, seed=3, ignore_eos=True, logprobs=0)]
    eng = smollm2.engine
    budget = eng.max_num_batched_tokens
    for sp in params:
        alone = [smollm2.generate([p], sp, use_tqdm=False)[0].outputs for p in prompts]
        eng.max_num_batched_tokens = 16                  # prefill chunks split across steps and requests
        try:
            together = [o.outputs for o in smollm2.generate(prompts, sp, use_tqdm=False)]
        finally:
            eng.max_num_batched_tokens = budget
        assert [o.token_ids for o in together] == [o.token_ids for o in alone]
        assert [o.cumulative_logprob for o in together] == [o.cumulative_logprob for o in alone]


def test_logits_path_is_not_tiled(smollm2):
    """Model.logits / perplexity keep full GEMMs (tiling is the engine's only)."""
    lin = smollm2.params["layers"][0]["wqkv"]
    assert isinstance(lin, invariant.TiledLinear) and not getattr(invariant._ON, "active", False)
    x = np.random.default_rng(0).standard_normal((8, lin.shape[1])).astype(np.float32)
    assert np.array_equal(lin(x), Linear.__call__(lin, x))


def test_invariant_attention_only_on_the_engine_cache(smollm2):
    """The model's cache attends with invariant.attention; the format class (scratch caches) keeps ops.attention."""
    from fdlite import ops  # noqa: PLC0415

    assert smollm2.cache.attention is invariant.attention
    assert type(smollm2.cache).attention is ops.attention


def test_batch_invariant_off_restores_plain_path():
    from fdlite import Model, ops  # noqa: PLC0415
    from conftest import FIXTURES  # noqa: PLC0415

    with Model.load(FIXTURES / "hf" / "llama", device="cpu", batch_invariant=False) as m:
        assert m.cache.attention is ops.attention and m.engine.runner == m._run
        sp = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
        assert len(m.generate([[1, 2, 3], [4, 5]], sp, use_tqdm=False)[1].outputs.token_ids) == 4
