"""Tensor parallelism in processes (fdlite/parallel/runtime.py): Model.load(..., tensor_parallel_size=N) on the
CPU through HostComm equals one process; worker errors and deaths surface in rank 0; no worker outlives its
Model or rank 0. The NCCL backend has GPU tests at the end (world size 1: what one GPU can prove)."""
from __future__ import annotations

import functools
import gc
import os
import re
import subprocess
import sys
import textwrap
import threading
import time

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fdlite import Model, SamplingParams
from fdlite.errors import InputError
from fdlite.parallel.comm import CommError, HostComm
from fdlite.parallel.sharding import take_cols, take_rows

from conftest import FIXTURES, ROOT

HF = FIXTURES / "hf"
BF16 = np.dtype(ml_dtypes.bfloat16)
WINT4 = {"quantization": "wint4", "group_size": 16}


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _gone(pids, within: float = 10.0) -> bool:
    end = time.time() + within
    while time.time() < end:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


# ------------------------------------------------------------------------------------ HostComm collectives

def _ranks(world: int, slot_bytes: int, timeout: float = 20.0):
    """world HostComm ranks in this process (threads stand in for processes: the same buffer and barrier)."""
    import multiprocessing as mp

    c0 = HostComm.create(world, mp.get_context("spawn"), slot_bytes, timeout)
    return [c0] + [HostComm.attach(c0.spec, r) for r in range(1, world)]


def _on_all(comms, fn):
    """fn(comm, rank) on every rank concurrently -> results in rank order (re-raises a rank's error)."""
    out, errs = [None] * len(comms), []

    def run(r):
        try:
            out[r] = fn(comms[r], r)
        except BaseException as e:  # noqa: BLE001
            errs.append(e)
            comms[r].abort()

    ts = [threading.Thread(target=run, args=(r,)) for r in range(len(comms))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errs:
        raise errs[0]
    return out


@given(world=st.integers(1, 4), shape=st.lists(st.integers(0, 9), min_size=1, max_size=3),
       dtype=st.sampled_from([np.dtype(np.float32), BF16]), slot=st.sampled_from([64, 136, 4096]),
       seed=st.integers(0, 2**16), data=st.data())
@settings(max_examples=25, deadline=None)
def test_host_comm_matches_numpy(world, shape, dtype, slot, seed, data):
    """all_reduce = the rank-order numpy sum (bit for bit, the same on every rank); all_gather = concatenate;
    broadcasts deliver root's value. Small slots force the chunked path."""
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal(shape).astype(dtype) for _ in range(world)]
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    root = data.draw(st.integers(0, world - 1))
    comms = _ranks(world, slot)
    try:
        def work(c, r):
            red = c.all_reduce_sum(xs[r].copy())
            gat = c.all_gather(xs[r], axis)
            b = c.broadcast(xs[r].copy(), root)
            obj = c.broadcast_object({"rank": r, "ids": list(range(r + 3))}, root)
            c.barrier()
            return red, gat, b, obj

        got = _on_all(comms, work)
    finally:
        for c in comms:
            c.close()
    want = functools.reduce(np.add, xs)
    for red, gat, b, obj in got:
        assert red.dtype == dtype and red.tobytes() == want.tobytes()
        np.testing.assert_array_equal(gat, np.concatenate(xs, axis))
        assert b.tobytes() == xs[root].tobytes()
        assert obj == {"rank": root, "ids": list(range(root + 3))}


def test_host_comm_times_out_when_a_peer_never_comes():
    comms = _ranks(2, 1024, timeout=0.3)
    t0 = time.time()
    try:
        with pytest.raises(CommError, match=r"rank 0: collective round 0 failed.*within 0.3 s"):
            comms[0].all_reduce_sum(np.ones(4, np.float32))
        with pytest.raises(CommError):                   # the group stays failed
            comms[1].barrier()
    finally:
        for c in comms:
            c.close()
    assert time.time() - t0 < 5


# ----------------------------------------------------------------------------- N processes == one process

CASES = [("llama", None, 2), ("llama", "wint8", 2), ("llama", WINT4, 2), ("llama", None, 4),
         ("ernie4_5_moe", None, 2), ("ernie4_5_moe", "wint8", 2), ("ernie4_5_moe", WINT4, 2),
         ("ernie4_5_moe", WINT4, 4)]


@pytest.mark.parametrize("name,quant,tp", CASES)
def test_tp_logits_and_greedy_generate_equal_one_process(name, quant, tp):
    """tp 4 on these fixtures (4 q heads, 2 KV heads, 8 experts): each KV head on two ranks, two experts each."""
    prompts = [[1, 2, 3, 4, 5], [9, 8, 7], list(range(20, 50))]
    sp = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    with Model.load(HF / name, device="cpu", quantization=quant) as one:
        ids = np.random.default_rng(1).integers(0, one.config.vocab_size, (2, 13))
        ref, ref_gen = one.logits(ids), [o.outputs.token_ids for o in one.generate(prompts, sp, use_tqdm=False)]
        ref_chunked = one._window_logits(list(range(3, 40)), chunk=5)
        whole_bytes = one.memory_report()["weights_bytes"]
    with Model.load(HF / name, device="cpu", quantization=quant, tensor_parallel_size=tp) as m:
        assert len(m._workers.pids) == tp - 1 and m.config.num_attention_heads == 4 // tp
        out = m.logits(ids)
        assert out.shape == ref.shape and np.abs(out - ref).max() <= 1e-5, float(np.abs(out - ref).max())
        assert [o.outputs.token_ids for o in m.generate(prompts, sp, use_tqdm=False)] == ref_gen
        # chunked prefill into one scratch cache over several forwards: the workers keep their scratch too
        assert np.abs(m._window_logits(list(range(3, 40)), chunk=5) - ref_chunked).max() <= 1e-5
        per_rank = [m.memory_report()["weights_bytes"]] + m._workers.call(_weight_bytes)
        assert len(per_rank) == tp and all(0 < b < whole_bytes for b in per_rank), (per_rank, whole_bytes)


TINY = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            intermediate_size=128, vocab_size=256, max_model_len=64)


@pytest.mark.parametrize("name,quant,extra", [("llama-3-8b", "wint8", {}),
                                              ("ernie-4.5-21b-a3b", WINT4, {"moe_num_experts": 8,
                                                                            "moe_intermediate_size": 32})])
def test_from_config_tp_equals_one_process_and_draws_only_its_experts(name, quant, extra, monkeypatch):
    """Model.from_config(tensor_parallel_size=2): every rank draws the seed's weights on its host and keeps its cut,
    so the logits are the one-process model's; rank 0 (this process) never draws another rank's routed expert."""
    from fdlite import random_weights

    ids = np.random.default_rng(3).integers(0, 256, (2, 9))
    with Model.from_config(name, device="cpu", quantization=quant, seed=5, **TINY, **extra) as one:
        ref = one.logits(ids)
    drawn = []
    get = random_weights.RandomWeights.get
    monkeypatch.setattr(random_weights.RandomWeights, "get", lambda self, n: drawn.append(n) or get(self, n))
    with Model.from_config(name, device="cpu", quantization=quant, seed=5, tensor_parallel_size=2, **TINY,
                           **extra) as m:
        assert len(m._workers.pids) == 1 and m.config.num_attention_heads == 2
        assert np.abs(m.logits(ids) - ref).max() <= 1e-5
    experts = {int(re.search(r"experts\.(\d+)\.", n).group(1)) for n in drawn if ".experts." in n}
    assert experts == (set(range(4)) if extra else set()), sorted(experts)     # rank 0 owns experts 0..3 of 8


@pytest.mark.parametrize("prequantized", [False, True])
def test_tp_gptq_calibrated_and_prequantized_checkpoints_equal_one_process(tmp_path, monkeypatch, prequantized):
    """wint4 with GPTQ (calibration="self") under tensor_parallel_size=2: online (every rank calibrates the same way)
    and from an offline-quantized checkpoint (each rank cuts the stored codes) give the one-process logits."""
    from fdlite.offline import quantize_checkpoint

    monkeypatch.setenv("FDLITE_CACHE", str(tmp_path / "cache"))      # the self-calibration text, shared by ranks
    q = {"quantization": "wint4", "group_size": 16}
    src, kw = HF / "llama", {"quantization": q, "calibration": "self"}
    if prequantized:
        src, kw = tmp_path / "q", {}
        quantize_checkpoint(HF / "llama", src, q, calibration="self")
    ids = np.random.default_rng(0).integers(0, 256, (2, 11))
    with Model.load(src, device="cpu", **kw) as one:
        ref = one.logits(ids)
    with Model.load(src, device="cpu", tensor_parallel_size=2, **kw) as m:
        assert np.abs(m.logits(ids) - ref).max() <= 1e-5


def test_rank_build_world_1_is_the_one_process_model():
    """The per-rank build (RankPlan) with a world-1 communicator, in this process: the same random weights, the
    same logits up to float32 reassociation (the rank's MoE combines its experts in another order). The GPU twin of
    this test runs the device paths: test_gpu_rank_build_world_1_matches_one_process."""
    import multiprocessing as mp

    from fdlite.parallel.load import RankPlan

    kw = dict(device="cpu", quantization=WINT4, seed=2, **TINY, moe_num_experts=8, moe_intermediate_size=32)
    ids = np.random.default_rng(5).integers(0, 256, (2, 9))
    with Model.from_config("ernie-4.5-21b-a3b", **kw) as one:
        ref = one.logits(ids)
    comm = HostComm.create(1, mp.get_context("spawn"))
    try:
        with Model.from_config("ernie-4.5-21b-a3b", _shard=RankPlan(1, 0, comm), **kw) as m:
            assert m._workers is None
            assert np.abs(m.logits(ids) - ref).max() <= 1e-5
    finally:
        comm.close()


def _weight_bytes(model):
    """Runs in a worker (Group.call)."""
    return model.memory_report()["weights_bytes"]


def test_tp_1_is_the_one_process_path():
    with Model.load(HF / "llama", device="cpu") as a, \
            Model.load(HF / "llama", device="cpu", tensor_parallel_size=1) as b:
        assert b._workers is None and b.family is a.family
        ids = np.arange(11)[None]
        assert a.logits(ids).tobytes() == b.logits(ids).tobytes()


@pytest.mark.parametrize("bad", [0, -2, 2.5, "2", True, None])
def test_bad_tensor_parallel_size(bad):
    with pytest.raises(InputError, match=re.escape(f"tensor_parallel_size = {bad!r} must be a positive integer")):
        Model.load(HF / "llama", device="cpu", tensor_parallel_size=bad)


def test_a_plan_the_model_cannot_take_is_refused_and_leaves_no_worker(monkeypatch):
    import multiprocessing as mp

    before = {p.pid for p in mp.active_children()}
    with pytest.raises(InputError, match="num_attention_heads = 4 is not a multiple of tensor_parallel_size = 3"):
        Model.load(HF / "llama", device="cpu", tensor_parallel_size=3)
    with pytest.raises(InputError, match="kv_cache 'int8' with tensor_parallel_size = 2 needs its static"):
        Model.load(HF / "llama", device="cpu", kv_cache="int8", tensor_parallel_size=2)
    assert {p.pid for p in mp.active_children()} == before


def test_wint2_is_cut_by_its_own_layout():
    """wint2 (CCQ: [K, N] arrays, 4 codes a byte, 128-row scale bytes, per-column code and super scales) is cut
    along N on the last axis and along K in whole scale bytes, never as the per-channel int8 layout its array
    names resemble; a shard dequantizes to the matching block of the whole."""
    from fdlite.parallel.sharding import k_unit, layout
    from fdlite.quant import get as get_method

    m = get_method("wint2")()
    p = m.quantize(np.random.default_rng(0).standard_normal((64, 300)).astype(np.float32))
    assert layout(p) == ("ccq", 128) and k_unit(p) == 128
    w = m.dequantize(p)
    np.testing.assert_array_equal(m.dequantize(take_cols(p, 128, 300)), w[:, 128:])
    np.testing.assert_array_equal(m.dequantize(take_rows(p, [(8, 24), (40, 48)])), np.concatenate([w[8:24], w[40:48]]))
    with pytest.raises(InputError, match=r"wint2 weight \(64, 300\): columns \[0, 64\) are not whole 128-column"):
        take_cols(p, 0, 64)


# ------------------------------------------------------------------------------ failures and shutdown

def _bad_cut(model):
    """Runs in a worker: a K cut its wint4 o_proj (groups of 16) cannot take."""
    take_cols(model.params["layers"][0]["wo"].linear.packed, 0, 24)


def test_a_worker_error_is_raised_in_rank_0_with_its_message():
    with Model.load(HF / "llama", device="cpu", quantization=WINT4, tensor_parallel_size=2) as m:
        with pytest.raises(InputError, match=r"tensor-parallel rank 1: wint4 weight \(64, 32\): columns \[0, 24\) "
                                             r"are not whole groups of 16"):
            m._workers.call(_bad_cut)
        assert m.logits([[1, 2, 3]]).shape == (1, 3, 256)        # a call error leaves the group usable


def test_a_dead_worker_fails_the_next_step_fast_and_clearly():
    m = Model.load(HF / "llama", device="cpu", tensor_parallel_size=2)
    try:
        pid = m._workers.pids[0]
        os.kill(pid, 9)
        assert _gone([pid])
        t0 = time.time()
        with pytest.raises(CommError, match=rf"tensor-parallel rank 1 \(pid {pid}\) exited with code -9"):
            m.logits([[1, 2, 3]])
        assert time.time() - t0 < 10
        with pytest.raises(CommError, match="failed earlier"):
            m.generate([[1, 2]], SamplingParams(max_tokens=2), use_tqdm=False)
    finally:
        m.close()


def test_close_and_garbage_collection_end_every_worker():
    m = Model.load(HF / "ernie4_5_moe", device="cpu", tensor_parallel_size=4)
    pids = m._workers.pids
    assert len(pids) == 3 and all(_alive(p) for p in pids)
    m.close()
    assert _gone(pids, 2.0)
    m.close()                                                    # idempotent
    m = Model.load(HF / "llama", device="cpu", tensor_parallel_size=2)
    pids = m._workers.pids
    del m
    gc.collect()
    assert _gone(pids)


def test_workers_exit_when_rank_0_dies(tmp_path):
    script = tmp_path / "rank0.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        from fdlite import Model
        if __name__ == "__main__":
            m = Model.load({str(HF / "llama")!r}, device="cpu", tensor_parallel_size=2)
            m.logits([[1, 2, 3]])
            print(*m._workers.pids, flush=True)
            os.kill(os.getpid(), 9)                 # no close, no atexit: the workers must notice alone
    """))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == -9, out.stderr
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 1 and _gone(pids)


# ------------------------------------------------------------------------------------- GPU (world size 1)

@pytest.mark.gpu
def test_nccl_world_1_collectives_are_identity_eager_and_in_a_cuda_graph(cp):
    from fdlite.parallel import nccl

    uid = nccl.unique_id()
    assert os.environ["NCCL_NVLS_ENABLE"] == "0"
    comm = nccl.NcclComm(0, 1, uid, 0)
    try:
        x = cp.asarray(np.random.default_rng(0).standard_normal((5, 96)).astype(BF16))
        want = x.get()
        assert comm.all_reduce_sum(x) is x and x.get().tobytes() == want.tobytes()
        assert comm.all_gather(x, axis=-1).get().tobytes() == want.tobytes()
        assert comm.broadcast_object({"ids": [1, 2]}) == {"ids": [1, 2]}
        comm.barrier()
        # captured: the collectives are graph nodes; a replay after changing the input sees the new values
        stream = cp.cuda.Stream(non_blocking=True)
        out = cp.empty((1, 5, 96), BF16)
        doubled = (want.astype(np.float32) * 2).astype(BF16)
        with stream:
            stream.begin_capture()
            comm.all_reduce_sum(x)
            comm.all_gather(x, axis=0, out=out)
            graph = stream.end_capture()
            cp.copyto(x, cp.asarray(doubled))
            graph.launch(stream)
            stream.synchronize()
        assert x.get().tobytes() == doubled.tobytes() and out[0].get().tobytes() == doubled.tobytes()
    finally:
        comm.close()


@pytest.mark.gpu
def test_gpu_tp_1_unchanged_and_too_many_ranks_refused(cp):
    with Model.load(HF / "llama", device="cuda") as a, \
            Model.load(HF / "llama", device="cuda", tensor_parallel_size=1) as b:
        assert b._workers is None and b.family is a.family
        ids = np.arange(11)[None]
        assert a.logits(ids).tobytes() == b.logits(ids).tobytes()
    n = cp.cuda.runtime.getDeviceCount()
    with pytest.raises(InputError, match=rf"tensor_parallel_size = {n + 1} needs {n + 1} GPUs .* but {n} GPU"):
        Model.load(HF / "llama", device="cuda", tensor_parallel_size=n + 1)


# ------------------------------------------------------------------------------ GPU (several GPUs, issue 9)

def _need_gpus(cp, n: int):
    if cp.cuda.runtime.getDeviceCount() < n:
        pytest.skip(f"needs {n} GPUs; {cp.cuda.runtime.getDeviceCount()} visible")


@pytest.mark.gpu
@pytest.mark.parametrize("name,quant,tp", [("llama", None, 2), ("llama", WINT4, 2), ("ernie4_5_moe", WINT4, 2),
                                           ("ernie4_5_moe", None, 4)])
def test_gpu_tp_logits_and_greedy_equal_one_gpu(cp, name, quant, tp):
    """N GPUs (NCCL between processes, bf16) against one: logits within bf16 tolerance (the all-reduces sum the
    partials in another order and round each to bf16), the same greedy tokens on these fixtures."""
    _need_gpus(cp, tp)
    prompts = [[1, 2, 3, 4, 5], [9, 8, 7], list(range(20, 50))]
    sp = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    ids = np.random.default_rng(1).integers(0, 200, (2, 13))
    with Model.load(HF / name, device="cuda", quantization=quant) as one:
        ref = one.logits(ids)
        ref_gen = [o.outputs.token_ids for o in one.generate(prompts, sp, use_tqdm=False)]
    with Model.load(HF / name, device="cuda", quantization=quant, tensor_parallel_size=tp) as m:
        assert len(m._workers.pids) == tp - 1
        out = m.logits(ids)
        assert np.abs(out - ref).max() <= 3e-2 * (np.abs(ref).max() + 1), float(np.abs(out - ref).max())
        assert [o.outputs.token_ids for o in m.generate(prompts, sp, use_tqdm=False)] == ref_gen


@pytest.mark.gpu
def test_gpu_tp_from_config_runs_on_every_rank(cp):
    """Random weights drawn per rank on its host (Model.from_config, tensor_parallel_size=2), quantized, cut and
    placed on its own GPU; decode runs and each rank holds about half the weights."""
    _need_gpus(cp, 2)
    kw = dict(device="cuda", quantization="wint4", num_hidden_layers=2, max_model_len=160, max_num_seqs=4)
    with Model.from_config("llama-3-8b", tensor_parallel_size=2, **kw) as m:
        out = m.generate([[1, 2, 3]] * 4, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
                         use_tqdm=False)
        assert all(len(o.outputs.token_ids) == 8 for o in out)
        mine = m.memory_report()["weights_bytes"]
        theirs = m._workers.call(_weight_bytes)[0]
        assert 0.8 < mine / theirs < 1.25


@pytest.mark.gpu
@pytest.mark.parametrize("name,extra", [("llama-3-8b", {}), ("ernie-4.5-21b-a3b", {"moe_num_experts": 8,
                                                                                 "moe_intermediate_size": 128})])
def test_gpu_rank_build_world_1_matches_one_process(cp, name, extra):
    """One GPU is enough to run a rank's build (RankPlan: host quantize and cut, the kept experts quantized on the
    device, pieces placed and repacked on the GPU) with a world-1 NCCL communicator: its logits match the
    one-process model's, which draws the same weights on the device."""
    from fdlite.parallel import nccl
    from fdlite.parallel.load import RankPlan

    kw = dict(device="cuda", quantization=WINT4, seed=2, cuda_graphs=False, **{**TINY, "hidden_size": 128,
                                                                              "intermediate_size": 256}, **extra)
    ids = np.random.default_rng(5).integers(0, 256, (2, 9))
    with Model.from_config(name, **kw) as one:
        ref = one.logits(ids)
    comm = nccl.NcclComm(0, 1, nccl.unique_id(), 0)
    try:
        with Model.from_config(name, _shard=RankPlan(1, 0, comm), **kw) as m:
            out = m.logits(ids)
    finally:
        comm.close()
    assert np.abs(out - ref).max() <= 3e-2 * (np.abs(ref).max() + 1), float(np.abs(out - ref).max())
