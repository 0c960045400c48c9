"""Paged-attention, KV-write, fused-op and dense-GEMV kernels against their twins; CUDA-graph decode against
eager steps (pytest -m gpu, on the lent device)."""
from types import SimpleNamespace

import ml_dtypes
import numpy as np
import pytest
from conftest import FIXTURES, rel_err as _rel

pytestmark = pytest.mark.gpu
BF16 = np.dtype(ml_dtypes.bfloat16)
FORMATS = ["bf16", "int8", "float8_e4m3fn", "block_wise_fp8", "int4_zp"]


@pytest.fixture(scope="module")
def gpu(cp):
    from fdlite.backend import Backend

    return Backend("cuda", 0)


def _cfg(nh, nkv, D, layers=1):
    return SimpleNamespace(num_attention_heads=nh, num_key_value_heads=nkv, head_dim=D, num_hidden_layers=layers,
                           rms_norm_eps=1e-6)


def _scales(fmt, cfg, rng, spread=3.0):
    """Random static scales in FastDeploy's shapes (abs-max ranges around `spread`)."""
    from fdlite import kv

    shapes = kv.get(fmt).scale_shapes(cfg)
    out = {}
    for n, shp in shapes.items():
        if "zero_point" in n:
            out[n] = rng.uniform(-1.5, 1.5, shp).astype(np.float32)
        elif fmt == "int4_zp":
            out[n] = (rng.uniform(0.5, 1.5, shp) * spread / 7).astype(np.float32)   # steps
        else:
            out[n] = rng.uniform(0.5, 1.5, shp).astype(np.float32) * spread
    return out


def _cache(fmt, cfg, nb, bs, backend, rng):
    from fdlite import kv

    return kv.get(fmt)(cfg, nb, bs, backend, **_scales(fmt, cfg, rng))


def _rot(cp, positions, D, identity, interleaved, rng):
    from fdlite.rope import RotaryStep

    T = int(positions.max()) + 1
    if identity:
        cos, sin = np.ones((T, D // 2), np.float32), np.zeros((T, D // 2), np.float32)
    else:
        ang = rng.uniform(0, 2 * np.pi, (T, D // 2)).astype(np.float32)
        cos, sin = np.cos(ang), np.sin(ang)
    return RotaryStep(cp.asarray(cos), cp.asarray(sin), cp.asarray(positions.astype(np.int32)), interleaved)


def _meta(lens, bs, nb, rng, start=None):
    """Sequences with shuffled block tables; lens[i] new tokens after start[i] cached ones."""
    from fdlite.kv.base import StepMeta

    ids = rng.permutation(nb)
    seqs, used = [], 0
    for i, n in enumerate(lens):
        s = 0 if start is None else start[i]
        need = -(-(s + n) // bs)
        seqs.append((s, n, ids[used:used + need].tolist()))
        used += need
    return StepMeta.build(seqs, bs, logits="all")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("D", [64, 128])
def test_kv_write_codes_match_twin(cp, gpu, fmt, D):
    """Identity rotation, no norm: the stored codes (and block fp8 token scales) equal the twin's bit for bit."""
    rng = np.random.default_rng(D + len(fmt))
    cfg, bs, nb = _cfg(8, 2, D), 16, 12
    lens = [5, 17, 1]
    meta = _meta(lens, bs, nb, rng)
    N = sum(lens)
    qkv = cp.asarray((rng.standard_normal((N, (8 + 4) * D)) * 2).astype(BF16))
    seed = int(rng.integers(1 << 30))
    a = _cache(fmt, cfg, nb, bs, gpu, np.random.default_rng(seed))
    b = _cache(fmt, cfg, nb, bs, gpu, np.random.default_rng(seed))
    b.kernel_code = None                                      # the reference path
    rot = _rot(cp, meta.positions, D, True, False, rng)
    qa = a.store(0, qkv, meta, rot, 1e-6)
    qb = b.store(0, qkv, meta, rot, 1e-6)
    assert _rel(cp.asnumpy(qa).astype(np.float32), cp.asnumpy(qb).astype(np.float32)) == 0.0
    for name, arr in a.layers[0].items():
        got, want = cp.asnumpy(arr), cp.asnumpy(b.layers[0][name])
        if got.dtype == np.uint8 and fmt in ("float8_e4m3fn", "block_wise_fp8"):
            # +0 / -0 are the same value; compare decoded values exactly
            from fdlite.kv._quant import E4M3_TABLE
            assert np.array_equal(E4M3_TABLE[got], E4M3_TABLE[want]), name
        else:
            assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), name


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_rope_norm_write_vs_twin(cp, gpu, fmt, interleaved, qk_norm):
    rng = np.random.default_rng(7 + interleaved + 2 * qk_norm)
    D, cfg, bs, nb = 128, _cfg(16, 4, 128), 16, 20
    lens = [33, 2, 9]
    meta = _meta(lens, bs, nb, rng)
    N = sum(lens)
    qkv = cp.asarray(rng.standard_normal((N, (16 + 8) * D)).astype(BF16))
    qn = cp.asarray(rng.uniform(0.5, 1.5, D).astype(BF16)) if qk_norm else None
    kn = cp.asarray(rng.uniform(0.5, 1.5, D).astype(BF16)) if qk_norm else None
    seed = int(rng.integers(1 << 30))
    a = _cache(fmt, cfg, nb, bs, gpu, np.random.default_rng(seed))
    b = _cache(fmt, cfg, nb, bs, gpu, np.random.default_rng(seed))
    b.kernel_code = None
    rot = _rot(cp, meta.positions, D, False, interleaved, rng)
    qa = cp.asnumpy(a.store(0, qkv, meta, rot, 1e-6, qn, kn)).astype(np.float32)
    qb = cp.asnumpy(b.store(0, qkv, meta, rot, 1e-6, qn, kn)).astype(np.float32)
    assert np.isfinite(qa).all() and _rel(qa, qb) < 1e-2
    for x, y in zip(a.read(0, meta), b.read(0, meta)):
        x, y = cp.asnumpy(x).astype(np.float32), cp.asnumpy(y).astype(np.float32)
        assert _rel(x, y) < (5e-2 if fmt == "int4_zp" else 2e-2)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("nh,nkv,D", [(32, 8, 128), (16, 16, 64), (20, 4, 128), (8, 1, 64), (4, 2, 16),
                                      (64, 4, 128), (8, 2, 256)])
@pytest.mark.parametrize("window", [None, 40])
def test_paged_attention_vs_twin(cp, gpu, fmt, nh, nkv, D, window):
    """Decode rows and prefill chunks over shuffled paged blocks, contexts of 1..700 keys (several splits)."""
    _check_paged(cp, gpu, fmt, nh, nkv, D, window, [0, 300, 683, 0, 64], [1, 1, 17, 40, 5], 160)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("nh,nkv,D", [(32, 8, 128), (8, 2, 256), (4, 4, 8)])
def test_paged_attention_long_contexts(cp, gpu, fmt, nh, nkv, D):
    """Contexts past 1024 and 2048 keys: the launcher's 128- and 256-key splits."""
    _check_paged(cp, gpu, fmt, nh, nkv, D, None, [2900, 1500, 0], [1, 3, 2], 300)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("nh,nkv,D", [(32, 8, 128), (8, 2, 256)])
@pytest.mark.parametrize("window", [None, 40])
def test_paged_attention_grid_sized_for_a_longer_context(cp, gpu, fmt, nh, nkv, D, window):
    """A captured graph sizes the split grid for its longest context (here 8192 keys: 32 splits of up to 256);
    each row then picks its own split length (kernel: row_chunk) from its context, 1..700 keys."""
    _check_paged(cp, gpu, fmt, nh, nkv, D, window, [0, 300, 683, 0, 64, 90], [1, 1, 17, 40, 5, 1], 160,
                 max_len=8192)


def _check_paged(cp, gpu, fmt, nh, nkv, D, window, start, lens, nb, max_len=None):
    rng = np.random.default_rng(nh * 7 + nkv + D + (window or 0) + len(start))
    cfg, bs = _cfg(nh, nkv, D), 16
    cache = _cache(fmt, cfg, nb, bs, gpu, rng)
    meta = _meta(lens, bs, nb, rng, start)
    # fill every position each sequence sees (context + new tokens) through the reference write
    from fdlite.kv.base import StepMeta

    full = StepMeta.build([(0, s + n, meta.block_tables[i][:-(-(s + n) // bs)].tolist())
                           for i, (s, n) in enumerate(zip(start, lens))], bs, logits="all")
    T = len(full.positions)
    code = cache.kernel_code
    cache.kernel_code = None
    cache.write(0, cp.asarray(rng.standard_normal((T, nkv, D)).astype(BF16)),
                cp.asarray(rng.standard_normal((T, nkv, D)).astype(BF16)), full)
    q = cp.asarray(rng.standard_normal((sum(lens), nh, D)).astype(BF16))
    want = cp.asnumpy(cache.attend(0, q, meta, window, D ** -0.5)).astype(np.float32)
    cache.kernel_code = code
    meta.device = None
    if max_len is not None:
        meta.on_device(cp)["max_len"] = max_len
    got = cp.asnumpy(cache.attend(0, q, meta, window, D ** -0.5)).astype(np.float32)
    assert np.isfinite(got).all() and _rel(got, want) < 2e-2


@pytest.mark.parametrize("M,H", [(1, 576), (7, 4096), (64, 5120), (3, 64), (2, 100), (1, 9000)])
def test_fused_norms_and_swiglu(cp, M, H):
    from fdlite import ops
    from fdlite_kernels import fused_ops

    rng = np.random.default_rng(M + H)
    x = rng.standard_normal((M, H)).astype(BF16)
    d = rng.standard_normal((M, H)).astype(BF16)
    w = rng.uniform(0.5, 1.5, H).astype(BF16)
    xf, df, wf = (a.astype(np.float32) for a in (x, d, w))
    got = cp.asnumpy(fused_ops.rms_norm(cp.asarray(x), cp.asarray(w), 1e-5)).astype(np.float32)
    assert _rel(got, ops.rms_norm(xf, wf, 1e-5, np)) < 1e-2
    xg = cp.asarray(x)
    y = cp.asnumpy(fused_ops.add_rms_norm(xg, cp.asarray(d), cp.asarray(w), 1e-5)).astype(np.float32)
    s = (xf + df).astype(BF16).astype(np.float32)
    assert np.array_equal(cp.asnumpy(xg).astype(np.float32), s)          # the residual, rounded once
    assert _rel(y, ops.rms_norm(s, wf, 1e-5, np)) < 1e-2
    gu = rng.standard_normal((M, 2 * H)).astype(BF16)
    got = cp.asnumpy(fused_ops.silu_mul(cp.asarray(gu))).astype(np.float32)
    g = gu.astype(np.float32)
    assert _rel(got, ops.silu_mul(g[:, :H], g[:, H:], np)) < 1e-2


@pytest.mark.parametrize("N,K", [(4096, 4096), (128256, 4096), (576, 576), (49152, 576), (40, 64)])
@pytest.mark.parametrize("M", [1, 2, 5, 16])
def test_gemv_bf16(cp, N, K, M):
    from fdlite_kernels.gemv_bf16 import gemv_bf16

    rng = np.random.default_rng(N + K + M)
    x = rng.standard_normal((M, K)).astype(BF16)
    w = (rng.standard_normal((N, K)) * 0.02).astype(BF16)
    y = cp.full((M, N), np.nan, dtype=BF16)
    gemv_bf16(cp.asarray(x), cp.asarray(w), out=y)
    got = cp.asnumpy(y).astype(np.float32)
    assert np.isfinite(got).all() and _rel(got, x.astype(np.float32) @ w.astype(np.float32).T) < 1e-2


@pytest.mark.parametrize("case", ["llama", "qwen3", "mistral_sliding", "ernie4_5"])
@pytest.mark.parametrize("kv_cache", ["bf16", "int8", "block_wise_fp8"])
@pytest.mark.parametrize("quant,n", [("wint8", 3), (None, 1), (None, 3)])
def test_graph_decode_equals_eager(cp, monkeypatch, case, kv_cache, quant, n):
    """CUDA-graph decode gives the eager steps' tokens exactly: 3 sequences (bucket 4, one padding row) and one,
    wint8 and bf16 weights. The graph's dense layers run mma_bf16; eager steps are made to run it too (instead of
    cuBLAS) so both paths round alike and the tokens must match exactly."""
    from fdlite import Model, SamplingParams
    from fdlite.quant import _gpu

    monkeypatch.setattr(_gpu, "DENSE_MMA_MAX_M", 1 << 30)

    d = FIXTURES / "hf" / case
    ids = dict(np.load(d / "reference.npz"))["input_ids"]
    prompts = [ids[0, :4 + i].tolist() for i in range(n)]
    sp = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    outs = {}
    for graphs in (False, True):
        with Model.load(d, device="cuda", kv_cache=kv_cache, quantization=quant, cuda_graphs=graphs,
                        max_num_seqs=4) as m:
            outs[graphs] = [o.outputs.token_ids for o in m.generate(prompts, sp, use_tqdm=False)]
            runner = m.engine.runner
            if graphs:
                assert runner.enabled, runner.reason
                assert runner.num_replays > 0
    assert outs[True] == outs[False]


@pytest.mark.parametrize("case", ["llama", "ernie4_5"])
@pytest.mark.parametrize("kv_cache", ["bf16", "int8"])
def test_overlapped_decode_equals_plain_steps_on_the_gpu(cp, case, kv_cache):
    """The engine's overlapped decode (off by default) against plain steps: same tokens, with stop ids that end
    sequences at different steps, sampled rows, and two models one after the other in the process."""
    from fdlite import Model, SamplingParams

    d = FIXTURES / "hf" / case
    ids = dict(np.load(d / "reference.npz"))["input_ids"]
    prompts = [ids[0, :4 + i].tolist() for i in range(5)]
    params = [SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, stop_token_ids=[7, 11, 13]),
              SamplingParams(temperature=0.8, top_p=0.9, max_tokens=12, ignore_eos=True, seed=3)]
    outs = {}
    for overlap in (False, True, False, True):
        with Model.load(d, device="cuda", kv_cache=kv_cache, max_num_seqs=8) as m:
            m.engine.overlap = overlap
            got = [[o.outputs.token_ids for o in m.generate(prompts, sp, use_tqdm=False)] for sp in params]
            assert m.engine.runner.num_replays > 0
        assert outs.setdefault(overlap, got) == got
    assert outs[True] == outs[False]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("plan", [dict(tensor_cores=True, warps=8), dict(tensor_cores=True, min_keys=32),
                                  dict(tensor_cores=True, min_keys=256), dict(tensor_cores=False),
                                  dict(tensor_cores=True, min_keys=32, ctas_per_row=1),
                                  dict(tensor_cores=True, min_keys=32, ctas_per_row=3)])
@pytest.mark.parametrize("nh,nkv,D", [(32, 8, 128), (20, 4, 128), (16, 16, 64)])
def test_paged_attention_launch_plans(cp, gpu, fmt, plan, nh, nkv, D, monkeypatch):
    """Both kernels (paged_attn_tc, paged_attn) and the launch plans the benchmarks try (8 warps, 32-key and
    256-key splits, one or three CTAs looping over a row's splits) against the twin: the plan changes the work
    split, never the result."""
    import functools

    from fdlite_kernels import kv_cache

    monkeypatch.setattr(kv_cache, "paged_attention", functools.partial(kv_cache.paged_attention, **plan))
    _check_paged(cp, gpu, fmt, nh, nkv, D, None, [0, 300, 683, 0, 64], [1, 1, 17, 40, 5], 160)
