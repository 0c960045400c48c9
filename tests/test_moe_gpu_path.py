"""MoE on the GPU (fdlite_kernels/moe.cu through fdlite/moe_gpu.py).

CPU: the NumPy twins against the reference path of fdlite/moe.py, the expert stacking done at load, and that every
kernel name the launcher asks NVRTC for is instantiated in moe.cu. GPU (pytest -m gpu): each kernel against its
twin on fresh random inputs with poisoned outputs, the whole routed pipeline (also replayed from a CUDA graph),
the ERNIE MoE fixtures against the CPU reference, and CUDA-graph decode of an MoE model.
"""
import re

import ml_dtypes
import numpy as np
import pytest
from conftest import FIXTURES, rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

from fdlite import moe_gpu
from fdlite.backend import get_backend
from fdlite.moe import Experts, MoE, _grouped, group_by_expert, route
from fdlite.quant import _gpu, get
from fdlite.quant.base import Linear
from fdlite_kernels.mma_wq import padded, repack

BF16 = np.dtype(ml_dtypes.bfloat16)
CPU = get_backend("cpu")
KINDS = {"bf16": None, "wint8": ("wint8", -1), "wint4_g128": ("wint4", 128), "wint4_g32": ("wint4", 32),
         "wint4_pc": ("wint4", -1)}


def _linears(kind, w, backend):
    """-> (the expert Linear as the GPU load path builds it, on backend; the CPU reference Linear, same codes)."""
    if kind == "bf16":
        m = get("dense")(dtype=BF16)
        p = m.quantize(w)
        return Linear(m, m.prepare(p, backend), None, backend.xp), Linear(m, p, None, np)
    name, g = KINDS[kind]
    m = get(name)(group_size=g)
    p = m.quantize(w)
    return Linear(m, _gpu.prepare_grouped(m, p, backend), None, backend.xp), Linear(m, p, None, np)


def _moe(rng, kind, E, k, H, I, backend=CPU):
    """-> (MoE with stacked experts on backend (m.gpu None if unsupported), the same MoE for the CPU reference)."""
    gus = [_linears(kind, rng.normal(0, 0.3, (2 * I, H)).astype(np.float32), backend) for _ in range(E)]
    dns = [_linears(kind, rng.normal(0, 0.3, (H, I)).astype(np.float32), backend) for _ in range(E)]
    rw, cb = rng.normal(0, 0.5, (E, H)).astype(np.float32), (0.1 * rng.normal(size=E)).astype(np.float32)
    dev = MoE(backend.asarray(rw), backend.asarray(cb), Experts([d for d, _ in gus], [d for d, _ in dns]), k)
    ref = MoE(rw, cb, Experts([r for _, r in gus], [r for _, r in dns]), k)
    dev.gpu = moe_gpu.prepare(dev, backend.xp)
    return dev, ref


def _distinct_ids(rng, N, E, k):
    return np.stack([rng.permutation(E)[:k] for _ in range(N)]).astype(np.int32).reshape(N, k)


# --- CPU: twins and stacking ----------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(N=st.integers(1, 40), E=st.integers(1, 70), data=st.data(), seed=st.integers(0, 2**16))
def test_align_twin_is_group_by_expert(N, E, data, seed):
    """Plan = the stable sort of group_by_expert, the used experts ascending, their ranges; empty slots last."""
    k = data.draw(st.integers(1, E))
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, E, (N, k)) if data.draw(st.booleans()) else _distinct_ids(rng, N, E, k)
    order, counts = group_by_expert(ids, E, np)
    srt, experts, offsets = moe_gpu.align(ids, E)
    S = min(E, N * k)
    assert srt.dtype == experts.dtype == offsets.dtype == np.int32
    assert srt.tolist() == order.tolist() and experts.shape == (S,) and offsets.shape == (S + 1,)
    used = [e for e, c in enumerate(counts) if c]
    assert experts[:len(used)].tolist() == used
    for s, e in enumerate(used):
        assert offsets[s + 1] - offsets[s] == counts[e] and (ids.reshape(-1)[srt[offsets[s]:offsets[s + 1]]] == e).all()
    assert (offsets[len(used):] == N * k).all()


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(1, 300), bits=st.sampled_from([8, 4]), seed=st.integers(0, 2**16))
def test_unpack_codes_inverts_repack(n, k, bits, seed):
    """The layout moe_gemm_packed reads is mma_wq.repack's: the twin's decoder gives back every code, zero padding."""
    lo, hi = (-127, 128) if bits == 8 else (-8, 8)
    q = np.random.default_rng(seed).integers(lo, hi, (n, k))
    Np, Kp = padded(n, k, bits)
    back = moe_gpu.unpack_codes(repack(q, bits).reshape(1, -1)[0], n, Kp, bits)
    assert back.shape == (Np, Kp) and (back[:n, :k] == q).all()
    assert not back[n:].any() and not back[:, k:].any()


@pytest.mark.parametrize("kind", list(KINDS))
def test_prepare_stacks_views_of_one_copy(kind):
    rng = np.random.default_rng(3)
    E, H, I = 5, 64, 32
    dev, ref = _moe(rng, kind, E, 2, H, I)
    g = dev.gpu
    assert g is not None and g.gate_up.num_experts == g.down.num_experts == E
    assert (g.gate_up.N, g.down.N) == (2 * I, H) and g.gate_up.kind == g.down.kind == ("bf16" if kind == "bf16"
                                                                                          else "packed")
    for stack, lins, rlins in ((g.gate_up, dev.experts.gate_up, ref.experts.gate_up),
                               (g.down, dev.experts.down, ref.experts.down)):
        W = moe_gpu.dequantize_stack(stack)                                    # (E, N, K padded)
        for e, (lin, rlin) in enumerate(zip(lins, rlins)):
            for name, a in stack.arrays.items():                               # the Linear reads its slice
                assert np.shares_memory(lin.packed.arrays[name], a) and (lin.packed.arrays[name] == a[e]).all()
            want = rlin.method.dequantize(rlin.packed, np)                     # (N, K)
            np.testing.assert_array_equal(W[e, :, :want.shape[1]], want)
            assert not W[e, :, want.shape[1]:].any()                           # padded K: zero weights


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(list(KINDS)), N=st.integers(1, 12), E=st.integers(1, 9), data=st.data(),
       H=st.sampled_from([8, 32, 64]), I=st.sampled_from([8, 16, 48]), seed=st.integers(0, 999))
def test_routed_twin_equals_the_grouped_reference(kind, N, E, data, H, I, seed):
    """route -> align -> per-row GEMMs (SwiGLU between) -> combine on the stacks == moe.py's grouped path."""
    k = data.draw(st.integers(1, E))
    rng = np.random.default_rng(seed)
    dev, ref = _moe(rng, kind, E, k, H, I)
    if dev.gpu is None:          # int4 per channel with K = 48: group 48 does not divide the padded K = 128
        assert kind == "wint4_pc" and I == 48
        return
    x = rng.normal(size=(N, H)).astype(np.float32)
    np.testing.assert_allclose(moe_gpu.routed_ref(dev, x), _grouped(ref, x, np), rtol=1e-4, atol=1e-5)


def test_gemm_twin_rounds_swiglu_like_silu_mul():
    """bf16 input: the twin's SwiGLU is rounded to bf16 before the down projection (fused_ops.silu_mul)."""
    rng = np.random.default_rng(0)
    gu = rng.normal(size=(4, 16)).astype(BF16)
    w = rng.normal(size=(2, 3, 8)).astype(np.float32)
    ids = np.array([[0], [1], [1], [0]])
    h = (gu[:, :8].astype(np.float32) / (1 + np.exp(-gu[:, :8].astype(np.float32))) * gu[:, 8:]).astype(BF16)
    want = np.stack([h[r].astype(np.float32) @ w[ids[r, 0]].T for r in range(4)]).astype(BF16)
    assert (moe_gpu.gemm_ref(gu, w, ids, 1, swiglu=True) == want).all()


def test_prepare_refuses_what_the_kernels_cannot_run():
    rng = np.random.default_rng(1)
    dev, _ = _moe(rng, "wint8", 4, 2, 32, 16)
    dev.experts.gate_up[2] = _linears("bf16", rng.normal(size=(32, 32)).astype(np.float32), CPU)[0]   # mixed kinds
    assert moe_gpu.prepare(dev, np) is None
    dev, _ = _moe(rng, "bf16", 4, 2, 32, 16)
    lin = dev.experts.down[0]
    dev.experts.down[0] = Linear(lin.method, lin.packed, np.zeros(32, np.float32), np)              # a bias
    before = dict(dev.experts.gate_up[0].packed.arrays)
    assert moe_gpu.prepare(dev, np) is None
    assert all(dev.experts.gate_up[0].packed.arrays[n] is a for n, a in before.items())   # nothing re-pointed
    d = get("dense")()                                                                     # float32: the CPU
    f32 = [Linear(d, d.quantize(rng.normal(size=s).astype(np.float32)), None, np) for s in ((32, 16), (16, 16))]
    assert moe_gpu.prepare(MoE(np.zeros((1, 16), np.float32), None, Experts(f32[:1], f32[1:]), 1), np) is None
    dev, _ = _moe(rng, "wint4_g32", 3, 1, 12, 16)                                            # H % 8 != 0
    assert dev.gpu is None


def test_cpu_never_takes_the_kernel_path():
    dev, ref = _moe(np.random.default_rng(2), "bf16", 3, 2, 16, 8)
    x = np.ones((2, 16), np.float32)
    assert dev.gpu is not None and not moe_gpu.use_kernels(dev, x, np)


def test_plan_views():
    from fdlite_kernels.moe import Plan

    p = Plan(np.arange(3 * 2 + 2 * 4 + 1), tokens=3, top_k=2, num_experts=4)
    assert (p.R, p.S) == (6, 4)
    assert p.sorted.tolist() == [0, 1, 2, 3, 4, 5] and p.experts.tolist() == [6, 7, 8, 9]
    assert p.offsets.tolist() == [10, 11, 12, 13, 14]


def test_every_kernel_name_is_instantiated():
    """NVRTC compiles only what name_expressions lists; each must be defined (plain) or instantiated (template)."""
    import fdlite_kernels
    from fdlite_kernels.moe import _NAMES

    src = fdlite_kernels.source("moe")
    for name in _NAMES:
        if "<" in name:
            assert re.search(r"template __global__ void " + re.escape(name) + r"\(", src), name
        else:
            assert re.search(r"__global__ void __launch_bounds__\(\d+\) " + name + r"\(", src), name


# --- GPU: kernels against their twins ---------------------------------------------------------------------------
EKN = [(E, k, N) for E in (4, 64) for k in (1, 2, 6) for N in (1, 3, 32) if k <= E]


def _ids_equal_or_near_tie(ids, ref_ids, score, tol=1e-6):
    """Kernel and twin sum the router dot products in different orders; a pick may differ only where two biased
    scores are within tol (measured differences ~1e-7)."""
    for t in np.flatnonzero((ids != ref_ids).any(1)):
        s = np.sort(score[t])[::-1]
        assert np.abs(np.diff(s[:ids.shape[1] + 1])).min() < tol, (t, ids[t], ref_ids[t])


@pytest.mark.gpu
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("E,k,N", EKN)
def test_route_kernel_vs_twin(cp, E, k, N, bias):
    from fdlite_kernels.moe import moe_route

    rng = np.random.default_rng(E * 100 + k * 10 + N + bias)
    H = 2560
    x = rng.standard_normal((N, H)).astype(BF16)
    rw = (rng.standard_normal((E, H)) * 0.05).astype(np.float32)
    cb = (rng.standard_normal(E) * 0.01).astype(np.float32) if bias else None
    w = cp.full((N, k), np.nan, np.float32)
    ids = cp.full((N, k), -5, np.int32)
    moe_route(cp.asarray(x), cp.asarray(rw), None if cb is None else cp.asarray(cb), k, 1e-12, out=(w, ids))
    rw_, rid = route(x.astype(np.float32), rw, cb, k, 1e-12, np)
    got_ids, got_w = cp.asnumpy(ids), cp.asnumpy(w)
    lg = x.astype(np.float32) @ rw.T
    p = np.exp(lg - lg.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    _ids_equal_or_near_tie(got_ids, rid, p + (0 if cb is None else cb))
    same = (got_ids == rid).all(1)
    assert np.isfinite(got_w).all()
    np.testing.assert_allclose(got_w[same], rw_[same], rtol=5e-5, atol=1e-7)


@pytest.mark.gpu
def test_route_kernel_ties_go_to_the_lower_expert(cp):
    from fdlite_kernels.moe import moe_route

    x = cp.ones((3, 8), BF16)
    w, ids = moe_route(x, cp.zeros((6, 8), np.float32), None, 3, 1e-12)
    assert cp.asnumpy(ids).tolist() == [[0, 1, 2]] * 3
    np.testing.assert_allclose(cp.asnumpy(w), 1 / 3, rtol=1e-6)
    bias = cp.asarray(np.array([0, 0, 0, 0.5, 0, 0.5], np.float32))
    assert cp.asnumpy(moe_route(x, cp.zeros((6, 8), np.float32), bias, 6, 1e-12)[1]).tolist() == \
        [[3, 5, 0, 1, 2, 4]] * 3


@pytest.mark.gpu
@pytest.mark.parametrize("E,k,N", EKN + [(64, 6, 256), (1024, 8, 5)])
def test_align_kernel_vs_twin(cp, E, k, N):
    from fdlite_kernels.moe import moe_align

    ids = _distinct_ids(np.random.default_rng(E + k + N), N, E, k)
    R, S = N * k, min(E, N * k)
    buf = cp.full(R + 2 * S + 1, -7, np.int32)
    plan = moe_align(cp.asarray(ids), E, out=buf)
    srt, experts, offsets = moe_gpu.align(ids, E)
    assert cp.asnumpy(plan.sorted).tolist() == srt.tolist()
    assert cp.asnumpy(plan.experts).tolist() == experts.tolist()
    assert cp.asnumpy(plan.offsets).tolist() == offsets.tolist()


def _random_stack(cp, rng, kind, E, N, K):
    """An ExpertStack of random codes and scales on the GPU (as moe_gpu.prepare builds it from Linears)."""
    from fdlite_kernels.moe import ExpertStack

    if kind == "bf16":
        return ExpertStack("bf16", N, K, {"w": cp.asarray((rng.standard_normal((E, N, K)) * 0.05).astype(BF16))})
    _, g = KINDS[kind]
    bits = 8 if kind == "wint8" else 4
    Np, Kp = padded(N, K, bits)
    group = Kp if bits == 8 else (K if g == -1 else g)
    lo, hi = (-127, 128) if bits == 8 else (-8, 8)
    qp, sc = [], []
    for _ in range(E):
        qp.append(repack(rng.integers(lo, hi, (N, K)), bits))
        s = np.zeros((Np, Kp // group), np.float32)
        s[:N] = (rng.random((N, Kp // group)) + 0.5) / hi * 0.05
        sc.append(s)
    return ExpertStack("packed", N, Kp, {"qp": cp.asarray(np.stack(qp)), "scale": cp.asarray(np.stack(sc))}, bits,
                       group)


@pytest.mark.gpu
@pytest.mark.parametrize("H,I", [(384, 128), (72, 40)])
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("E,k,N", EKN + [(4, 2, 40), (64, 6, 17)])
def test_expert_gemms_vs_twin(cp, kind, E, k, N, H, I):
    """gate_up (x rows shared by a token's k slots) then down over the SwiGLU of its rows (as moe_gpu.routed).
    N >= SK_MIN_TOKENS with H, I multiples of 128 take the tensor-core GATHER kernel (N = 40, E = 4: experts with
    more than 16 rows, a second row tile); the rest the GEMV."""
    from fdlite_kernels.fused_ops import silu_mul
    from fdlite_kernels.moe import moe_align, moe_gemm

    if kind == "wint4_pc" and (padded(1, H, 4)[1] % H or padded(1, I, 4)[1] % I):
        pytest.skip("int4 per channel needs K a multiple of 128")
    rng = np.random.default_rng(E * 7 + k * 3 + N + H)
    gate_up, down = _random_stack(cp, rng, kind, E, 2 * I, H), _random_stack(cp, rng, kind, E, H, I)
    ids = _distinct_ids(rng, N, E, k)
    plan = moe_align(cp.asarray(ids), E)
    x = rng.standard_normal((N, H)).astype(BF16)
    gu = cp.full((N * k, 2 * I), np.nan, BF16)
    moe_gemm(cp.asarray(x), gate_up, plan, k, out=gu)
    gu_ref = moe_gpu.gemm_ref(x, moe_gpu.dequantize_stack(gate_up), ids, k)
    got = cp.asnumpy(gu)
    assert np.isfinite(got.astype(np.float32)).all() and rel_err(got, gu_ref) < 1e-2
    y = cp.full((N * k, H), np.nan, BF16)
    moe_gemm(silu_mul(cp.asarray(got)), down, plan, 1, out=y)
    y_ref = moe_gpu.gemm_ref(got, moe_gpu.dequantize_stack(down), ids, 1, swiglu=True)
    got = cp.asnumpy(y)
    assert np.isfinite(got.astype(np.float32)).all() and rel_err(got, y_ref) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("k,N", [(k, N) for k in (1, 2, 6) for N in (1, 3, 32)])
def test_combine_kernel_is_exactly_the_twin(cp, k, N):
    from fdlite_kernels.moe import moe_combine

    rng = np.random.default_rng(k * 10 + N)
    y = rng.standard_normal((N * k, 2560)).astype(BF16)
    w = rng.random((N, k)).astype(np.float32)
    out = cp.full((N, 2560), np.nan, BF16)
    moe_combine(cp.asarray(y), cp.asarray(w), out=out)
    np.testing.assert_array_equal(cp.asnumpy(out).astype(np.float32), moe_gpu.combine(y, w).astype(np.float32))


@pytest.mark.gpu
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("E,k,N", [(4, 2, 3), (64, 6, 1), (64, 6, 32)])
def test_routed_pipeline_vs_twin_and_graph_replay(cp, kind, E, k, N):
    """The whole routed path on the GPU vs its twin and the CPU reference; then captured in a CUDA graph (no host
    sync allowed) and replayed on new inputs."""
    rng = np.random.default_rng(E + k + N)
    dev, ref = _moe(rng, kind, E, k, 128, 64, get_backend("cuda"))
    assert dev.gpu is not None
    x = rng.standard_normal((N, 128)).astype(BF16)
    xd = cp.asarray(x)
    got = cp.asnumpy(moe_gpu.routed(dev, xd, cp))
    assert rel_err(got, moe_gpu.routed_ref(dev, x)) < 1e-2
    assert rel_err(got, _grouped(ref, x.astype(np.float32), np)) < 3e-2
    stream, pool = cp.cuda.Stream(non_blocking=True), cp.cuda.MemoryPool()
    with cp.cuda.using_allocator(pool.malloc), stream:      # as fdlite/engine/cuda_graph.py captures
        moe_gpu.routed(dev, xd, cp)                  # warm-up outside the capture (compiles, fills the pool)
        stream.synchronize()
        stream.begin_capture()
        out = moe_gpu.routed(dev, xd, cp)
        graph = stream.end_capture()
        x2 = rng.standard_normal((N, 128)).astype(BF16)
        xd.set(x2, stream=stream)
        graph.launch(stream)
        stream.synchronize()
    assert rel_err(cp.asnumpy(out), moe_gpu.routed_ref(dev, x2)) < 1e-2


# --- GPU: whole models --------------------------------------------------------------------------------------------
MOE_CASES = ["ernie4_5_moe", "ernie4_5_moe_interval"]


@pytest.mark.gpu
@pytest.mark.parametrize("quant", [None, "wint8", "wint4"])
@pytest.mark.parametrize("case", MOE_CASES)
def test_ernie_moe_fixture_on_the_kernels(cp, case, quant, monkeypatch):
    """Every MoE layer runs the kernels; logits match the CPU reference of the same weights, and the grouped
    GPU path (forced with MAX_TOKENS = 0) closely."""
    from fdlite import Model

    d = FIXTURES / "hf" / case
    ids = dict(np.load(d / "reference.npz"))["input_ids"]
    with Model.load(d, device="cpu", quantization=quant) as m:
        cpu_full, cpu_step = m.logits(ids), m.logits(ids[:, :1])
    with Model.load(d, device="cuda", quantization=quant) as m:
        moes = [lp["moe"] for lp in m.params["layers"] if "moe" in lp]
        assert moes and all(b.gpu is not None for b in moes)
        full, step = m.logits(ids), m.logits(ids[:, :1])
        assert rel_err(full, cpu_full) < 3e-2 and rel_err(step, cpu_step) < 3e-2
        monkeypatch.setattr(moe_gpu, "MAX_TOKENS", 0)
        assert rel_err(m.logits(ids), full) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("quant,n", [("wint8", 3), ("wint4", 3), (None, 1)])
@pytest.mark.parametrize("case", MOE_CASES)
def test_graph_runner_captures_moe_decode(cp, case, quant, n):
    """MoE decode steps are captured (no host sync left) and give the eager steps' tokens exactly."""
    from fdlite import Model, SamplingParams

    d = FIXTURES / "hf" / case
    ids = dict(np.load(d / "reference.npz"))["input_ids"]
    prompts = [ids[0, :4 + i].tolist() for i in range(n)]
    sp = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    outs = {}
    for graphs in (False, True):
        with Model.load(d, device="cuda", quantization=quant, cuda_graphs=graphs, max_num_seqs=4) as m:
            outs[graphs] = [o.outputs.token_ids for o in m.generate(prompts, sp, use_tqdm=False)]
            runner = m.engine.runner
            if graphs:
                assert runner.enabled, runner.reason
                assert runner.num_replays > 0
    assert outs[True] == outs[False]
