"""Host-side parts of fdlite_kernels (no GPU): source loading with #line markers and the weight repacks that
define what each lane of a kernel reads."""
import sys
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fdlite_kernels
from fdlite_kernels.gemv_wint4 import pack_int4
from fdlite_kernels.mma_wq import KT, padded, repack


class _Arr:
    """A stand-in device array for the launchers' host-side checks: shape, dtype, a 256-byte aligned pointer."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)
        self.data, self.device, self.size = types.SimpleNamespace(ptr=256), 0, int(np.prod(shape))
        self.flags, self.strides = types.SimpleNamespace(c_contiguous=True), ()

    def __getitem__(self, sl):
        return self


def _stand_in_cupy(monkeypatch):
    """cupy replaced by a module whose empty() makes _Arr and whose device is an sm_90 with id 0: a launcher runs
    its checks and plans, and the test's patched ``launch`` records what it would launch."""
    cuda = types.SimpleNamespace(Device=lambda *a: types.SimpleNamespace(
        id=0, compute_capability="90", attributes={"MaxSharedMemoryPerBlockOptin": 232448}))
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(empty=lambda shape, dtype=None: _Arr(shape, dtype),
                                                                   cuda=cuda))


def test_source_inlines_includes_with_line_markers():
    src = fdlite_kernels.source("mma_wq")
    assert src.startswith('#line 1 "mma_wq.cu"')
    assert '#line 1 "common.cuh"' in src and '#include "common.cuh"' not in src
    assert "f32_to_bf16" in src
    with pytest.raises(FileNotFoundError, match="no nope.cu"):
        fdlite_kernels.source("nope")
    assert fdlite_kernels._LOCAL_INCLUDE.match('#include "x.cuh"   // why').group(1) == "x.cuh"
    assert fdlite_kernels._LOCAL_INCLUDE.match('  #include "x.cuh"').group(1) == "x.cuh"
    assert fdlite_kernels._LOCAL_INCLUDE.match("#include <cuda_fp16.h>") is None
    for cu in fdlite_kernels._HERE.iterdir():             # every kernel file reaches NVRTC with no local include left
        if cu.name.endswith(".cu"):
            src = fdlite_kernels.source(cu.name[:-3])
            assert '#include "' not in src, cu.name
    assert '#line 1 "gemv_rows_codes.cuh"' in fdlite_kernels.source("gemv_rows")


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(1, 300), bits=st.sampled_from([8, 4]), seed=st.integers(0, 2**16))
def test_repack_puts_each_mma_fragment_in_its_lane(n, k, bits, seed):
    """Emulate the kernel's reads: lane 4g+t of tile (nt, kt), step j holds row 8nt+g at k = KT kt + 16j +
    {2t, 2t+1, 2t+8, 2t+9} (zero outside the matrix)."""
    rng = np.random.default_rng(seed)
    lo, hi = (-127, 128) if bits == 8 else (-8, 8)
    q = rng.integers(lo, hi, (n, k))
    qp = repack(q, bits)
    Np, Kp = padded(n, k, bits)
    kt_n = Kp // KT[bits]
    assert qp.dtype == np.uint8 and qp.size == Np * Kp * bits // 8
    tiles = qp.reshape(-1, 32, 16)
    qz = np.zeros((Np, Kp), np.int64)
    qz[:n, :k] = q
    for nt in range(Np // 8):
        for kt in range(kt_n):
            tile = tiles[nt * kt_n + kt]
            for lane in range(32):
                g, t = lane >> 2, lane & 3
                for j in range(KT[bits] // 16):
                    cols = kt * KT[bits] + 16 * j + np.array([2 * t, 2 * t + 1, 2 * t + 8, 2 * t + 9])
                    want = qz[8 * nt + g, cols]
                    if bits == 8:
                        got = tile[lane, 4 * j:4 * j + 4].view(np.int8)
                    else:                   # word j // 2: nibbles e0 e2 e4 e6 | e1 e3 e5 e7, step j = e 4 (j & 1) + 0..3
                        w = int(tile[lane, 4 * (j // 2):4 * (j // 2) + 4].view(np.uint32)[0])
                        nib = [(w >> (4 * n)) & 15 for n in range(8)]
                        e = [nib[0], nib[4], nib[1], nib[5], nib[2], nib[6], nib[3], nib[7]]   # element order
                        got = np.array(e[4 * (j & 1):4 * (j & 1) + 4]) - 8
                    assert np.array_equal(got, want)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 8), k2=st.integers(1, 16), seed=st.integers(0, 2**16))
def test_pack_int4_round_trip(n, k2, seed):
    q = np.random.default_rng(seed).integers(-8, 8, (n, 2 * k2))
    p = pack_int4(q)
    back = np.stack([(p & 15), (p >> 4)], -1).reshape(n, -1).astype(np.int64) - 8
    assert np.array_equal(back, q)


@given(st.integers(1, 64), st.integers(1, 2000), st.integers(1, 120), st.sampled_from([8, 4]),
       st.sampled_from([None, 1, 2, 4]), st.one_of(st.none(), st.integers(1, 40)))
@settings(max_examples=300, deadline=None)
def test_mma_sk_plan_covers_k_exactly(M, n16, ktiles, bits, mt, splits):
    """mma_sk's launch plan: every K tile in exactly one split, no empty split, block shapes the .cu compiles."""
    from fdlite_kernels.mma_sk import plan

    Np, K = 16 * n16, ktiles * KT[bits]
    if splits is not None and splits > ktiles:
        with pytest.raises(ValueError, match="must be in"):
            plan(M, Np, K, bits, mt, splits)
        return
    mt_, s, per, warps = plan(M, Np, K, bits, mt, splits)
    assert mt_ in (1, 2, 4) and warps in (4, 8) and (mt is None or mt_ == mt)
    assert s * per >= ktiles and (s - 1) * per < ktiles          # the last split is non-empty
    assert splits is None or s <= splits


def test_mma_sk_plan_on_the_8b_shapes():
    """The measured choices (BENCHMARKS.md): unsplit tall blocks for gate_up, K splits for the narrow shapes."""
    from fdlite_kernels.mma_sk import plan

    assert plan(32, 28672, 4096, 4)[:2] == (2, 1)
    assert plan(64, 28672, 4096, 4) == (4, 1, 32, 4)
    assert plan(1, 4096, 14336, 4)[:2] == (1, 8)
    assert plan(64, 6144, 4096, 4)[:2] == (2, 4)


def _kernel_params(name: str, kernel: str) -> list[str]:
    """The parameter types of a __global__ kernel in fdlite_kernels/<name>.cu (names dropped)."""
    import re

    src = fdlite_kernels.source(name)
    sig = re.search(r"__global__ void __launch_bounds__\((?:[^()]|\([^()]*\))*\)\s+" + kernel + r"\((.*?)\) \{", src,
                    re.S).group(1)
    return [" ".join(p.split()[:-1]) for p in sig.split(",")]


def test_mma_sk_launches_pass_what_the_kernel_takes(monkeypatch):
    """Every mma_sk entry point (plain, dense, fp8, the MoE gather) builds its argument tuple in one place
    (mma_sk.launch): its length and scalar types follow the kernel's signature. Runs the launchers against a
    stand-in cupy that records the launch instead of running it."""
    import sys
    import types

    import ml_dtypes

    from fdlite_kernels import mma_sk

    calls = []

    class Arr:
        def __init__(self, shape, dtype):
            self.shape, self.dtype, self.ndim, self.data, self.device = shape, np.dtype(dtype), len(shape), 0, 0
            self.size = int(np.prod(shape))
            self.flags, self.strides = types.SimpleNamespace(c_contiguous=True), ()

    import contextlib

    cuda = types.SimpleNamespace(Device=lambda *a: types.SimpleNamespace(id=0, compute_capability="90"),
                                 get_current_stream=lambda: types.SimpleNamespace(ptr=7),
                                 using_allocator=lambda alloc: contextlib.nullcontext())
    fake = types.SimpleNamespace(empty=lambda shape, dtype=None: Arr(shape, dtype), zeros=lambda n, d: Arr((n,), d),
                                 cuda=cuda, get_default_memory_pool=lambda: types.SimpleNamespace(malloc=None))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(mma_sk, "kernel", lambda *key: lambda grid, block, args, shared_mem: calls.append(
        (key, grid, block, args, shared_mem)))
    monkeypatch.setattr(mma_sk, "sms", lambda dev: 132)
    monkeypatch.setattr("fdlite_kernels.moe.sms", lambda dev: 132)
    monkeypatch.setattr("fdlite_kernels._launch.ptr", lambda a: Arr((1,), np.float32) if a is None else a)
    monkeypatch.setattr("fdlite_kernels.gemv_block_fp8.act_quant_fp8",
                        lambda x: (Arr(x.shape, np.uint8), Arr((x.shape[0], x.shape[1] // 128), np.float32)))
    bf16 = np.dtype(ml_dtypes.bfloat16)
    M, N, K = 32, 1000, 1024
    mma_sk.mma_sk(Arr((M, K), bf16), Arr((1008 * K // 2,), np.uint8), Arr((1008, K // 128), np.float32), N, 4, 128)
    mma_sk.mma_sk_bf16(Arr((M, K), bf16), Arr((N, K), bf16))
    mma_sk.mma_sk_fp8(Arr((M, K), bf16), Arr((N, K), np.uint8), Arr((8, K // 128), np.float32))
    from fdlite_kernels.moe import ExpertStack, Plan, _moe_sk

    stack = ExpertStack("packed", N, K, {"qp": Arr((4, 1008 * K // 2), np.uint8),
                                         "scale": Arr((4, 1008, K // 128), np.float32)}, 4, 128)
    _moe_sk(Arr((M, K), bf16), stack, Plan(Arr((M * 2 + 9,), np.int32), M, 2, 4), 2, Arr((2 * M, N), bf16))
    params = _kernel_params("mma_sk", "mma_sk")
    assert len(calls) == 4
    for key, grid, block, args, smem in calls:
        assert len(args) == len(params) and block == (32 * key[4],) and smem == mma_sk.smem_bytes(key[1], key[2])
        for a, p in zip(args, params):
            want = {"int": np.int32, "long long": np.int64}.get(p)
            assert (isinstance(a, want) if want else isinstance(a, Arr)), (p, a)
    assert [c[0][1] for c in calls] == [4, 16, mma_sk.FP8, 4] and calls[3][0][5] is True
    assert calls[3][1] == (8, 4 * 2, 4) and calls[3][3][13:16] == (4, 2, 2)     # 4 slots x 2 row tiles, 4 splits


@given(st.integers(1, 64), st.integers(1, 40))
@settings(max_examples=200, deadline=None)
def test_gemv_packed_scale_groups_hold_one_scale(g16, ktiles):
    """gemv_packed.cu applies one int4 scale per GS k16 steps of a tile, read at (kt * 128 + 16 * GS * s) / group:
    for every group that divides K, each step of such a chunk lies in that scale's group."""
    from fdlite_kernels.gemv_packed import steps_per_scale

    group, K = 16 * g16, 128 * ktiles
    if K % group:
        return
    gs = steps_per_scale(4, group)
    assert 8 % gs == 0
    for kt in range(ktiles):
        for s in range(8 // gs):
            idx = (kt * 128 + 16 * gs * s) // group
            assert all((kt * 128 + 16 * j) // group == idx for j in range(gs * s, gs * (s + 1)))


def test_gemv_packed_plan_is_a_compilable_block_shape():
    """The plan's (rows, warps, minb, depth) for the 8B projections and odd shapes is one the launcher accepts: at
    most 64 resident warps asked per SM, a ring that fits a block's shared memory."""
    from fdlite_kernels.gemv_packed import MINB, ROWS, WARPS, plan, smem_bytes

    for bits in (8, 4):
        for Np, K in [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (16, 128), (128256, 4096)]:
            for M in (1, 4, 16):
                rows, warps, minb, depth = plan(Np, K, bits, M)
                assert rows in ROWS and warps in WARPS and minb in MINB and warps * minb <= 64
                assert depth == 0 or smem_bytes(bits, 128, rows, warps, depth) <= 227 * 1024
    assert plan(28672, 4096, 4) == (1, 4, 1, 0) and plan(4096, 14336, 8) == (1, 8, 1, 0)
    assert plan(6144, 4096, 8, 1) == (1, 4, 1, 0) and plan(4096, 4096, 8, 8) == (1, 8, 1, 0)


def test_fastdiv_multiplier_is_exact():
    """common.cuh's FastDiv (n / d as (mulhi(n, m) + n) >> s, m = floor(2^32 (2^s - d) / d) + 1, s = ceil(log2 d)),
    computed here with the kernels' 32-bit arithmetic, equals n // d for every d < 5000, the powers of two and random
    d, at n = 0, around every sampled multiple of d and up to 2^31 - 1; the kernels use it for k // group."""
    rng = np.random.default_rng(7)
    ds = list(range(1, 5000)) + [1 << k for k in range(31)] + [int(v) for v in rng.integers(1, 2**31 - 1, 300)]
    for d in ds:
        s = (d - 1).bit_length()                                       # 32 - __clz(d - 1)
        m = ((((1 << s) - d) << 32) // d + 1)
        assert m < 1 << 32
        step = max(1, ((2**31 - 1) // d) // 300)
        q = np.arange(0, (2**31 - 1) // d + 1, step, dtype=np.uint64) * np.uint64(d)
        n = np.concatenate([q, q[1:] - np.uint64(1), q + np.uint64(1), np.arange(0, 4096, dtype=np.uint64),
                            np.array([2**31 - 1], np.uint64)])
        n = n[n < 2**31]
        t = (n * np.uint64(m)) >> np.uint64(32)                       # __umulhi
        assert ((t + n) < 2**32).all()
        assert ((t + n) >> np.uint64(s) == n // np.uint64(d)).all(), d


def test_pdl_launch_structs_match_cuda_h():
    """The ctypes mirrors of CUlaunchAttribute and CUlaunchConfig have cuda.h's sizes and offsets (a wrong
    layout would hand the driver garbage grid sizes or attributes)."""
    import ctypes

    from fdlite_kernels._launch import _pdl_types

    Attribute, Config = _pdl_types()
    assert ctypes.sizeof(Attribute) == 72 and Attribute.value.offset == 8
    assert ctypes.sizeof(Config) == 56
    assert (Config.shared.offset, Config.stream.offset, Config.attrs.offset, Config.nattrs.offset) == (24, 32, 40, 48)


def test_pdl_launch_arguments_are_marshalled_or_refused():
    import ctypes

    from fdlite_kernels._launch import _c_args

    class Fake:                                  # what launch() reads of a cupy array
        class data:
            ptr = 0x7F0000001000

    vals = _c_args((Fake(), np.int32(-3), np.float32(0.5), np.int64(1 << 40)))
    assert [type(v) for v in vals] == [ctypes.c_void_p, ctypes.c_int32, ctypes.c_float, ctypes.c_int64]
    assert (vals[0].value, vals[1].value, vals[2].value, vals[3].value) == (0x7F0000001000, -3, 0.5, 1 << 40)
    with pytest.raises(TypeError, match="argument 1 is a int"):
        _c_args((Fake(), 7))


def test_attention_min_chunk_splits_only_while_the_gpu_is_not_full():
    from fdlite_kernels.kv_cache import CHUNKS, min_chunk, split_chunk

    assert min_chunk(1, 8, 512) == 32                      # batch-1 decode: 8 pairs x 16 splits
    assert min_chunk(2, 8, 512) == 32 and min_chunk(8, 8, 512) == 64
    assert min_chunk(32, 8, 512) == 256 and min_chunk(32, 8, 4096) == 256
    assert min_chunk(4096, 8, 300) == CHUNKS[-1]           # a long prefill chunk: never above 256 (TABMAX)
    for rows in (1, 3, 32, 500):
        for visible in (1, 64, 700, 5000):
            c = min_chunk(rows, 8, visible)
            assert c in CHUNKS and (c == CHUNKS[0] or rows * 8 * -(-visible // (c // 2)) > 4 * 132)
            assert split_chunk(visible) * 16 >= min(visible, CHUNKS[-1] * 16)


def _row_chunk(visible, S, cmin, cmax):
    """paged_attention.cu's row_chunk, on the host."""
    c = cmin
    while c < cmax and c * S < visible:
        c *= 2
    return c


def test_paged_attention_grid_covers_every_row_split(monkeypatch):
    """The launcher's grid against the kernels' arithmetic (a stand-in cupy records the launch): for every row's
    context up to max_len, row_chunk's splits fit the S the partials are sized for, and paged_attn_tc's CTAs
    (grid x, each looping over splits x, x + grid x, ...) reach them all; the CUDA-core kernel gets one CTA per
    split. Batch 32 with max_len 264 no longer launches 9 CTAs a row for at most 2 busy ones."""
    import ml_dtypes

    from fdlite_kernels import kv_cache

    _stand_in_cupy(monkeypatch)
    calls = []
    monkeypatch.setattr(kv_cache, "load", lambda *a, **k: types.SimpleNamespace(get_function=lambda name: name))
    monkeypatch.setattr(kv_cache, "launch", lambda fn, grid, block, args, shared_mem, pdl: calls.append(
        (fn, grid, block, args, shared_mem)))
    monkeypatch.setattr(kv_cache, "sms", lambda dev: 132)
    monkeypatch.setattr(kv_cache, "counters", lambda: _Arr((1 << 16,), np.int32))
    monkeypatch.setattr(kv_cache, "ptr", lambda a: _Arr((1,), np.float32) if a is None else a)
    bf16 = np.dtype(ml_dtypes.bfloat16)
    for N, nh, nkv, D, max_len, window in [(1, 32, 8, 128, 264, None), (32, 32, 8, 128, 264, None),
                                           (32, 32, 8, 128, 4096, None), (8, 32, 8, 128, 8192, None),
                                           (5, 64, 4, 128, 700, None), (3, 8, 2, 256, 3000, 40),
                                           (2, 16, 16, 64, 130000, None)]:
        cache = {"fmt": 0, "k": _Arr((10, nkv, 16, D), bf16), "v": _Arr((10, nkv, 16, D), bf16)}
        for tc in ((False, True) if D in kv_cache.TC_HEAD_DIMS else (False,)):
            kv_cache.paged_attention(_Arr((N, nh, D), bf16), cache, _Arr((N, 4), np.int32), _Arr((N,), np.int32),
                                     _Arr((N,), np.int32), window=window, scale=0.1, max_len=max_len,
                                     tensor_cores=tc)
            name, grid, block, args, smem = calls[-1]
            assert name.startswith("paged_attn_tc<" if tc else "paged_attn<") and grid[1:] == (nkv, N)
            cmin, cmax, S = int(args[-8]), int(args[-7]), int(args[-6])
            visible = min(max_len, window) if window else max_len
            assert cmin >= 32 and cmax >= 32
            for v in {1, 2, 17, 64, 255, 256, 257, 1000, visible // 2, visible - 1, visible}:
                if 1 <= v <= visible:
                    ck = _row_chunk(v, S, cmin, cmax)
                    assert ck <= 256 and -(-v // ck) <= S, (N, max_len, v, ck, S)
            assert 1 <= grid[0] <= S and (tc or grid[0] == S)
            if tc:
                assert grid[0] == min(S, -(-4 * 132 // (N * nkv)))
            assert smem == (4 * block[0] // 32 * next(g for g in kv_cache.GMAX if g >= nh // nkv) * D if tc
                            else 4 * (nh // nkv) * D)
    tc32 = [c for c in calls if c[0].startswith("paged_attn_tc<0, 4, 128") and c[1][2] == 32]
    assert tc32[0][1][0] == 2                              # batch 32, max_len 264: 2 CTAs a row (was 9)


def test_gemv_xs_launch_passes_what_the_kernel_takes(monkeypatch):
    """gemv_xs's launcher (plan, chunk size, shared memory, argument tuple) against a stand-in cupy that records
    the launch: the arguments follow the kernel's signature, the grid covers every row pair, the block is the
    plan's P x S warps and the shared memory holds two x chunks and the slices' sums."""
    import ml_dtypes

    from fdlite_kernels import gemv_xs

    _stand_in_cupy(monkeypatch)
    calls = []
    monkeypatch.setattr(gemv_xs, "kernel", lambda dev, name: name)
    monkeypatch.setattr(gemv_xs, "launch", lambda fn, grid, block, args, shared_mem, pdl: calls.append(
        (fn, grid, block, args, shared_mem, pdl)))
    monkeypatch.setattr(gemv_xs, "sms", lambda dev: 132)
    monkeypatch.setattr(gemv_xs, "counters", lambda: _Arr((1 << 16,), np.int32))
    bf16 = np.dtype(ml_dtypes.bfloat16)
    params = _kernel_params("gemv_xs", "gemv_xs")
    for M, N, K, bits, warps, kib, gate in [(16, 6144, 4096, 4, 16, 32, False), (32, 28672, 4096, 8, 8, 64, False),
                                            (9, 1000, 1024, 4, 16, 16, False), (24, 4096, 14336, 4, 16, 64, False),
                                            (32, 4096, 14336, 8, 16, 64, False), (16, 28672, 4096, 4, 16, 64, True),
                                            (20, 2048, 14336, 8, 16, 64, True)]:
        Np = -(-N // 16) * 16
        scale = _Arr((Np, 1 if bits == 8 else K // 128), np.float32)
        y = gemv_xs.gemv_xs(_Arr((M, K), bf16), _Arr((Np * K * bits // 8,), np.uint8), scale, N, bits,
                            K if bits == 8 else 128, warps=warps, chunk_kib=kib, gate=gate)
        assert y.shape == (M, N // 2 if gate else N)     # the fused SwiGLU writes silu(gate) * up: I columns
        name, grid, block, args, shared_mem, pdl = calls[-1]
        assert args[3] is y
        ktiles = K // (64 if bits == 8 else 128)
        if K >= gemv_xs.LONG_K:                  # K split over blocks: a workspace and the split counters
            P, S, ks = gemv_xs.split_plan(Np // 16, ktiles, 132, warps)
            per = -(-ktiles // ks)
            assert args[-3] == per and args[-2].shape == (-(-ktiles // per), M, N) and args[-1].dtype == np.int32
        else:
            (P, S), per = gemv_xs.plan(Np // 16, 132, warps), ktiles
            assert args[-3] == per
        nb = 2 if M <= 16 else 4
        assert name == f"gemv_xs<{bits}, {nb}, {1 if bits == 8 else 8}, {'true' if gate else 'false'}>" and pdl
        assert grid == (-(-(Np // 16) // P), -(-ktiles // per)) and block == (32 * P * S,) and P * S <= warps
        assert shared_mem == max(2 * kib * 1024, P * S * nb * 4 * 32 * 4) <= gemv_xs.MAX_SMEM
        assert args[-4] == gemv_xs.chunk_cols(nb, kib) and args[-4] % (64 if bits == 8 else 128) == 0
        assert len(args) == len(params)
        for a, p in zip(args, params):
            assert isinstance(a, np.int32) if p == "int" else isinstance(a, _Arr), (p, a)
    assert gemv_xs.split_plan(256, 112, 132) == (8, 2, 4) and gemv_xs.split_plan(256, 224, 132) == (8, 2, 4)
    assert gemv_xs.plan(384, 132) == (3, 5) and gemv_xs.plan(1792, 132) == (14, 1) and gemv_xs.plan(256, 132) == (2, 8)


def test_gate_up_swiglu_routes_to_the_decode_gemvs(monkeypatch):
    """mma_wq.gemm_packed_swiglu: gemv_packed (gate) to GEMV_MAX_M rows, gemv_xs (gate) to XS_MAX_M, None past
    them or for an I that is not whole n8 tiles; gemv_packed's gated launch names the GATE instantiation, covers
    I / 8 output tiles and writes an [M, I] result (a stand-in cupy records it)."""
    import ml_dtypes

    from fdlite_kernels import gemv_packed, gemv_xs, mma_wq

    _stand_in_cupy(monkeypatch)
    calls = []
    monkeypatch.setattr(gemv_packed, "kernel", lambda dev, name, smem: name)
    monkeypatch.setattr(gemv_packed, "launch", lambda fn, grid, block, args, shared_mem, pdl: calls.append(
        ("packed", fn, grid, args)))
    monkeypatch.setattr(gemv_xs, "gemv_xs", lambda *a, **k: calls.append(("xs", k)) or "xs")
    bf16 = np.dtype(ml_dtypes.bfloat16)
    N, K = 28672, 4096
    qp, scale = _Arr((N * K // 2,), np.uint8), _Arr((N, K // 128), np.float32)
    params = _kernel_params("gemv_packed", "gemv_packed")
    for M in (1, 5, 8):
        y = mma_wq.gemm_packed_swiglu(_Arr((M, K), bf16), qp, scale, N, 4, 128)
        _, name, grid, args = calls[-1]
        assert y.shape == (M, N // 2) and args[3] is y and len(args) == len(params)
        assert name.endswith(", true>") and grid == (N // 16,)          # I / 8 gate-up tile pairs, one a block
    assert mma_wq.gemm_packed_swiglu(_Arr((9, K), bf16), qp, scale, N, 4, 128) == "xs" and calls[-1][1]["gate"]
    assert mma_wq.gemm_packed_swiglu(_Arr((32, K), bf16), qp, scale, N, 4, 128) == "xs"
    n = len(calls)
    assert mma_wq.gemm_packed_swiglu(_Arr((33, K), bf16), qp, scale, N, 4, 128) is None
    assert mma_wq.gemm_packed_swiglu(_Arr((1, 128), bf16), _Arr((48 * 64,), np.uint8), _Arr((48, 1), np.float32),
                                     40, 4, 128) is None               # I = 20
    assert len(calls) == n
    with pytest.raises(ValueError, match="I a multiple of 8, got N = 40"):
        gemv_packed.gemv_packed(_Arr((1, 128), bf16), _Arr((48 * 64,), np.uint8), _Arr((48, 1), np.float32), 40, 4, 128,
                                gate=True)


def test_gemv_rows_launch_passes_what_the_kernel_takes(monkeypatch):
    """gemv_rows' launchers against a stand-in cupy that records the launch: the arguments follow the kernel's
    signature, bf16 launches a block per row pairs, fp8 at most the resident blocks (each quantizes x once, then
    loops over pairs) with x's codes and scales in dynamic shared memory, both with PDL."""
    import ml_dtypes

    from fdlite_kernels import gemv_rows

    _stand_in_cupy(monkeypatch)
    calls = []
    monkeypatch.setattr(gemv_rows, "kernel", lambda dev, name: gemv_rows.Compiled(
        types.SimpleNamespace(name=name), 128, 227 * 1024 - 8192))
    monkeypatch.setattr(gemv_rows, "launch", lambda fn, grid, block, args, shared_mem, pdl: calls.append(
        (fn.name, grid, block, args, shared_mem, pdl)))
    monkeypatch.setattr(gemv_rows, "sms", lambda dev: 132)
    monkeypatch.setattr("fdlite_kernels._launch.ptr", lambda a: _Arr((1,), np.float32) if a is None else a)
    bf16 = np.dtype(ml_dtypes.bfloat16)
    params = _kernel_params("gemv_rows", "gemv_rows")
    for M, N, K in [(1, 28672, 4096), (8, 4096, 14336), (3, 1000, 1024), (1, 40, 256)]:
        y = gemv_rows.gemv_rows_bf16(_Arr((M, K), bf16), _Arr((N, K), bf16))
        name, grid, block, args, smem, pdl = calls[-1]
        rows, warps = gemv_rows.plan(N, K, False)
        assert name == f"gemv_rows<0, {rows}, {warps}>" and grid == (-(-N // 16),) and smem == 0 and pdl
        assert block == (32 * warps,) and args[3] is y and y.shape == (M, N)
        y = gemv_rows.gemv_rows_fp8(_Arr((M, K), bf16), _Arr((N, K), np.uint8), _Arr((-(-N // 128), K // 128),
                                                                                       np.float32), pre=False)
        name, grid, block, args, smem, pdl = calls[-1]
        rows, warps = gemv_rows.plan(N, K, True, M)
        assert name == f"gemv_rows<1, {rows}, {warps}>" and smem == M * (K + 64) + 4 * M * K // 128 and pdl
        resident = gemv_rows.resident_blocks(128, warps, smem + warps * rows * 512)
        assert grid == (min(-(-N // 16), 132 * resident),) and args[3] is y
        y = gemv_rows.gemv_rows_fp8_channel(_Arr((M, K), bf16), _Arr((N, K), np.uint8), _Arr((N, 1), np.float32),
                                            pre=False)
        assert calls[-1][0] == f"gemv_rows<2, {rows}, {warps}>" and calls[-1][1] == grid and calls[-1][4] == smem
        y = gemv_rows.gemv_rows_int8(_Arr((M, K), bf16), _Arr((N, K), np.int8), _Arr((N,), np.float32), pre=False)
        assert calls[-1][0] == f"gemv_rows<3, {rows}, {warps}>" and calls[-1][1] == grid and calls[-1][4] == smem
        y = gemv_rows.gemv_rows_w4a8(_Arr((M, K), bf16), _Arr((N, K // 2), np.uint8), _Arr((N, K // 128), np.float32),
                                     pre=False)
        w4_smem = M * (K + 64) + 8 * M * K // 128
        assert calls[-1][0] == "gemv_rows<4, 1, 8>" and calls[-1][4] == w4_smem       # 16 warps would spill
        assert calls[-1][1] == (min(-(-N // 16), 132 * gemv_rows.resident_blocks(128, 8, w4_smem + 8 * 512)),)
        w4_grid = calls[-1][1]
        y = gemv_rows.gemv_rows_w4afp8(_Arr((M, K), bf16), _Arr((N, K // 2), np.uint8),
                                       _Arr((N, K // 128), np.float32), pre=False)
        assert calls[-1][0] == "gemv_rows<5, 1, 8>" and calls[-1][4] == w4_smem and calls[-1][1] == w4_grid
        y = gemv_rows.gemv_rows_nf4(_Arr((M, K), bf16), _Arr((N, K // 2), np.uint8), _Arr((N, K // 64), np.float32))
        rows, warps = gemv_rows.nf4_plan(N, K)
        assert calls[-1][0] == f"gemv_rows<6, {rows}, {warps}>" and calls[-1][4] == 0       # x from L2, no prologue
        assert calls[-1][1] == (-(-N // (16 * rows)),) and calls[-1][3][3] is y
        for _, _, _, args, _, _ in calls[-7:]:
            assert len(args) == len(params)
            for a, p in zip(args, params):
                assert isinstance(a, np.int32) if p == "int" else isinstance(a, _Arr), (p, a)
    assert calls[0][1] == (1792,) and calls[1][1] == (264,)         # gate_up: 1792 pairs, fp8 2 blocks x 132 SMs
    # pre: x quantized once (one block per token, x's codes in quantize_x's layout), then a block per row pairs
    n = len(calls)
    y = gemv_rows.gemv_rows_w4afp8(_Arr((3, 4096), bf16), _Arr((6144, 2048), np.uint8), _Arr((6144, 32), np.float32))
    (qn, qg, qb, qa, qs, qp), (gn, gg, gb, ga, gs, gp) = calls[n:]
    assert qn == f"gemv_rows_quant_x<5, {gemv_rows.QUANT_WARPS}>" and qg == (3,) and qs == 0 and qp
    assert qa[1].shape == (gemv_rows.smem_bytes(3, 4096, True, True),) and qa[2:4] == (3, 4096)
    assert len(qa) == len(_kernel_params("gemv_rows", "gemv_rows_quant_x")) and qa[5] == 0           # no static
    assert gn == "gemv_rows<5, 1, 8, true>" and gg == (384,) and gs == 0 and ga[0] is qa[1] and ga[3] is y
    assert gemv_rows.PRE_MIN_M == 2
    gemv_rows.gemv_rows_int8(_Arr((1, 4096), bf16), _Arr((6144, 4096), np.int8), _Arr((6144, 1), np.float32))
    assert calls[-1][0] == "gemv_rows<3, 1, 8>"                          # one row: the block's own prologue
    with pytest.raises(ValueError, match=r"ws shape \(40, 8\), expected \(40, 4\): an absmax per row and group of 64"):
        gemv_rows.gemv_rows_nf4(_Arr((1, 256), bf16), _Arr((40, 128), np.uint8), _Arr((40, 8), np.float32))
    with pytest.raises(ValueError, match="K = 200 must be a positive multiple of 256"):
        gemv_rows.gemv_rows_w4afp8(_Arr((1, 200), bf16), _Arr((40, 100), np.uint8), _Arr((40, 2), np.float32))
    odd = _Arr((40, 4), np.float32)
    odd.data = types.SimpleNamespace(ptr=260)
    with pytest.raises(ValueError, match=r"ws \(address 0x104\) must be 16-byte aligned"):
        gemv_rows.gemv_rows_nf4(_Arr((1, 256), bf16), _Arr((40, 128), np.uint8), odd)
    with pytest.raises(ValueError, match=r"ws shape \(8, 2\), expected \(1000, 1\) or \(1000,\)"):
        gemv_rows.gemv_rows_fp8_channel(_Arr((1, 1024), bf16), _Arr((1000, 1024), np.uint8), _Arr((8, 2), np.float32))
    assert gemv_rows.plan(4096, 4096, True, 1) == (1, 8) and gemv_rows.plan(4096, 4096, True, 2) == (1, 16)
    assert gemv_rows.resident_blocks(128, 4, 2048) == 4 and gemv_rows.resident_blocks(96, 8, 0) == 2
    assert gemv_rows.resident_blocks(64, 4, 120 * 1024) == 1
    with pytest.raises(ValueError, match="need 2433536 bytes of shared memory"):
        gemv_rows.gemv_rows_fp8(_Arr((8, 294912), bf16), _Arr((16, 294912), np.uint8), _Arr((1, 2304), np.float32),
                                pre=False)
    gemv_rows.gemv_rows_fp8(_Arr((8, 294912), bf16), _Arr((16, 294912), np.uint8), _Arr((1, 2304), np.float32))
    assert calls[-1][0] == "gemv_rows<1, 1, 8, true>"          # pre: x's codes in global memory, no such limit
    # 9-16 rows: two token fragments, (1, 8); the byte modes with pre, the int4 ones not at all
    gemv_rows.gemv_rows_bf16(_Arr((12, 4096), bf16), _Arr((6144, 4096), bf16))
    assert calls[-1][0] == "gemv_rows<0, 1, 8, false, 2>" and calls[-1][1] == (384,)
    gemv_rows.gemv_rows_nf4(_Arr((16, 4096), bf16), _Arr((6144, 2048), np.uint8), _Arr((6144, 64), np.float32))
    assert calls[-1][0] == "gemv_rows<6, 1, 8, false, 2>"
    gemv_rows.gemv_rows_int8(_Arr((16, 4096), bf16), _Arr((6144, 4096), np.int8), _Arr((6144, 1), np.float32))
    assert calls[-2][0] == "gemv_rows_quant_x<3, 16>" and calls[-2][1] == (16,)
    assert calls[-1][0] == "gemv_rows<3, 1, 8, true, 2>" and calls[-1][4] == 0
    with pytest.raises(ValueError, match="12 rows \\(two token fragments\\) take pre=True"):
        gemv_rows.gemv_rows_fp8(_Arr((12, 4096), bf16), _Arr((6144, 4096), np.uint8), _Arr((48, 32), np.float32),
                                pre=False)
    with pytest.raises(ValueError, match="1..8 rows here, got M = 12"):
        gemv_rows.gemv_rows_w4a8(_Arr((12, 4096), bf16), _Arr((6144, 2048), np.uint8), _Arr((6144, 32), np.float32))
    with pytest.raises(ValueError, match="must be one of \\(\\(1, 8\\),\\) for 12 rows"):
        gemv_rows.gemv_rows_bf16(_Arr((12, 4096), bf16), _Arr((6144, 4096), bf16), rows=1, warps=4)


def test_dense_and_block_fp8_decode_route_to_gemv_rows(monkeypatch):
    """fdlite.quant._gpu sends 1..16 rows of a dense bf16 linear (K % 64 == 0, a vocabulary too), of
    block_wise_fp8 and of wfp8afp8 (K % 128 == 0, sm_89+) to gemv_rows; more rows, another K or an unaligned view
    do not."""
    import ml_dtypes

    from fdlite.quant import _gpu, get
    from fdlite.quant.base import Packed
    from fdlite_kernels import gemv_rows

    _stand_in_cupy(monkeypatch)
    seen = []
    monkeypatch.setattr(gemv_rows, "gemv_rows_bf16", lambda x, w: seen.append(("bf16", x.shape)) or "rows")
    monkeypatch.setattr(gemv_rows, "gemv_rows_fp8", lambda x, q, ws: seen.append(("fp8", x.shape)) or "rows")
    monkeypatch.setattr("fdlite_kernels.mma_wq.mma_bf16", lambda x, w: "mma")
    monkeypatch.setattr("fdlite_kernels.gemv_bf16.gemv_bf16", lambda x, w: "gemv")
    monkeypatch.setattr("fdlite_kernels.mma_sk.mma_sk_fp8", lambda x, q, ws: "sk")
    stream = types.SimpleNamespace(is_capturing=lambda: False)
    xp = types.SimpleNamespace(ascontiguousarray=lambda a: a, cuda=types.SimpleNamespace(
        get_current_stream=lambda: stream, Device=lambda *a: types.SimpleNamespace(compute_capability="90")))
    bf16 = np.dtype(ml_dtypes.bfloat16)
    for M in (1, 8, 16):
        assert _gpu.matmul_dense(_Arr((M, 4096), bf16), _Arr((6144, 4096), bf16), xp) == "rows"
    assert _gpu.matmul_dense(_Arr((1, 4096), bf16), _Arr((128256, 4096), bf16), xp) == "rows"
    assert _gpu.matmul_dense(_Arr((1, 4000), bf16), _Arr((128256, 4000), bf16), xp) == "gemv"  # K % 64 != 0
    assert _gpu.matmul_dense(_Arr((1, 96), bf16), _Arr((64, 96), bf16), xp) == "mma"      # K % 64 != 0
    assert _gpu.matmul_dense(_Arr((17, 4096), bf16), _Arr((6144, 4096), bf16), xp) is None  # cuBLAS
    odd = _Arr((1, 4096), bf16)
    odd.data = types.SimpleNamespace(ptr=264)
    assert _gpu.matmul_dense(odd, _Arr((6144, 4096), bf16), xp) == "mma"
    assert seen == [("bf16", (1, 4096)), ("bf16", (8, 4096)), ("bf16", (16, 4096)), ("bf16", (1, 4096))]
    method = get("block_wise_fp8")()
    monkeypatch.setattr(_gpu, "_bf16_padded", lambda x, K, xp: x)
    p = types.SimpleNamespace(arrays={"quant_weight": _Arr((6144, 4096), np.uint8),
                                      "weight_scale_inv": _Arr((48, 32), np.float32)})
    assert _gpu.matmul_block_fp8(method, _Arr((16, 4096), bf16), p, xp) == "rows"
    assert _gpu.matmul_block_fp8(method, _Arr((17, 4096), bf16), p, xp) == "sk"
    assert seen[-1] == ("fp8", (16, 4096))
    monkeypatch.setattr(gemv_rows, "gemv_rows_fp8_channel",
                        lambda x, q, ws, out=None: seen.append(("channel", x.shape)) or "rows")
    p = types.SimpleNamespace(arrays={"quant_weight": _Arr((6144, 4096), np.uint8),
                                      "weight_scale": _Arr((6144, 1), np.float32)})
    assert _gpu.matmul_fp8_channel(_Arr((8, 4096), bf16), p, xp) == "rows" and seen[-1] == ("channel", (8, 4096))
    xp.empty = lambda shape, dtype=None: _Arr(shape, dtype)
    y = _gpu.matmul_fp8_channel(_Arr((20, 4096), bf16), p, xp)                    # 16 + 4 rows, two launches
    assert y.shape == (20, 6144) and seen[-2:] == [("channel", (20, 4096))] * 2   # (_Arr slices are itself)
    assert seen[-3] != ("channel", (20, 4096))
    # from Q8_MIN_M rows (block_wise_fp8: Q8_FP8_MIN_M) the prefill GEMM, any number of rows, one launch
    for fn in ("mma_q8_fp8", "mma_q8_fp8_channel", "mma_q8_int8", "mma_q8_w4a8", "mma_q8_w4afp8"):
        monkeypatch.setattr(f"fdlite_kernels.mma_q8.{fn}", lambda x, q, ws, fn=fn: seen.append((fn, x.shape)) or "q8")
    assert (_gpu.Q8_MIN_M, _gpu.Q8_INT4_MIN_M, _gpu.Q8_FP8_MIN_M) == (33, 49, 64)
    assert _gpu.matmul_fp8_channel(_Arr((32, 4096), bf16), p, xp).shape == (32, 6144)     # gemv_rows, 2 x 16
    for M in (33, 65, 4096):
        assert _gpu.matmul_fp8_channel(_Arr((M, 4096), bf16), p, xp) == "q8"
        assert seen[-1] == ("mma_q8_fp8_channel", (M, 4096))
    assert _gpu.matmul_fp8_channel(_Arr((65, 4000), bf16), p, xp) is None           # K % 128: the reference formula
    pb = types.SimpleNamespace(arrays={"quant_weight": _Arr((6144, 4096), np.uint8),
                                       "weight_scale_inv": _Arr((48, 32), np.float32)})
    assert _gpu.matmul_block_fp8(method, _Arr((63, 4096), bf16), pb, xp) == "sk"
    for M in (64, 300, 8192):
        assert _gpu.matmul_block_fp8(method, _Arr((M, 4096), bf16), pb, xp) == "q8"
        assert seen[-1] == ("mma_q8_fp8", (M, 4096))
    monkeypatch.setattr(gemv_rows, "gemv_rows_int8",
                        lambda x, q, ws, out=None: seen.append(("int8", x.shape)) or "rows")
    p8 = Packed("w8a8", (6144, 4096), {"quant_weight": _Arr((6144, 4096), np.int8),
                                        "weight_scale": _Arr((6144, 1), np.float32)}, {})
    assert _gpu.matmul_w8a8(_Arr((3, 4096), bf16), p8, xp) == "rows" and seen[-1] == ("int8", (3, 4096))
    assert _gpu.matmul_w8a8(_Arr((100, 4096), bf16), p8, xp) == "q8" and seen[-1] == ("mma_q8_int8", (100, 4096))
    static = Packed("w8a8", (6144, 4096), {**p8.arrays, "activation_scale": np.array([2.0], np.float32)}, {})
    grouped = Packed("w8a8", (6144, 4096), {"quant_weight": _Arr((6144, 4096), np.int8),
                                            "weight_scale": _Arr((6144, 32), np.float32)}, {})
    assert _gpu.matmul_w8a8(_Arr((3, 4096), bf16), static, xp) is None           # static, not prepared: the reference
    prepared = _gpu.with_static_scale(static, types.SimpleNamespace(asarray=lambda a: a))
    assert prepared.arrays["act_static"].dtype == np.float32 and prepared.arrays["act_static"].shape == (1,)
    monkeypatch.setattr(gemv_rows, "gemv_rows_int8", lambda x, q, ws, out=None, static=None: seen.append(
        ("int8 static", x.shape, static)) or "rows")
    st = prepared.arrays["act_static"]
    assert _gpu.matmul_w8a8(_Arr((3, 4096), bf16), prepared, xp) == "rows" and seen[-1] == ("int8 static", (3, 4096), st)
    monkeypatch.setattr("fdlite_kernels.mma_q8.mma_q8_int8", lambda x, q, ws, static=None: seen.append(
        ("q8 static", x.shape, static)) or "q8")
    assert _gpu.matmul_w8a8(_Arr((300, 4096), bf16), prepared, xp) == "q8" and seen[-1] == ("q8 static", (300, 4096), st)
    monkeypatch.setattr(gemv_rows, "gemv_rows_int8",
                        lambda x, q, ws, out=None: seen.append(("int8", x.shape)) or "rows")
    assert _gpu.matmul_w8a8(_Arr((3, 4096), bf16), grouped, xp) is None          # group-wise weights
    monkeypatch.setattr(gemv_rows, "gemv_rows_w4a8",
                        lambda x, q, ws, out=None: seen.append(("w4a8", x.shape)) or "rows")
    p4 = Packed("w4a8", (6144, 4000), {"quant_weight": _Arr((6144, 2048), np.uint8),
                                        "weight_scale": _Arr((6144, 32), np.float32)}, {"group_size": 128})
    assert _gpu.matmul_w4a8(_Arr((2, 4000), bf16), p4, xp) == "rows" and seen[-1] == ("w4a8", (2, 4000))
    assert _gpu.matmul_w4a8(_Arr((49, 4000), bf16), p4, xp) == "q8" and seen[-1] == ("mma_q8_w4a8", (49, 4000))
    assert _gpu.matmul_w4a8(_Arr((48, 4000), bf16), p4, xp).shape == (48, 6144)               # gemv_rows, 6 x 8
    p4c = Packed("w4a8", (6144, 4096), {"quant_weight": _Arr((6144, 2048), np.uint8),
                                         "weight_scale": _Arr((6144, 1), np.float32)}, {"group_size": 4096})
    assert _gpu.matmul_w4a8(_Arr((2, 4096), bf16), p4c, xp) is None              # per channel: the reference
    # the methods reach them through Grouped.matmul's device_matmul hook (on a device, never on NumPy)
    for name, fn in (("w8a8", "matmul_w8a8"), ("w4a8", "matmul_w4a8")):
        monkeypatch.setattr(_gpu, fn, lambda x, p, xp, name=name: f"{name} kernel")
        assert get(name)().matmul(_Arr((2, 4096), bf16), p8, xp) == f"{name} kernel"
    assert get("wint8")().device_matmul is None
    assert _gpu.matmul_fp8_channel(_Arr((1, 576), bf16), p, xp) is None
    monkeypatch.setattr(gemv_rows, "gemv_rows_w4afp8",
                        lambda x, q, ws, out=None: seen.append(("w4afp8", x.shape)) or "rows")
    pf = Packed("w4afp8", (6144, 4000), p4.arrays, {"group_size": 128})
    assert _gpu.matmul_w4afp8(_Arr((2, 4000), bf16), pf, xp) == "rows" and seen[-1] == ("w4afp8", (2, 4000))
    assert _gpu.matmul_w4afp8(_Arr((512, 4000), bf16), pf, xp) == "q8" and seen[-1] == ("mma_q8_w4afp8", (512, 4000))
    assert _gpu.matmul_w4afp8(_Arr((2, 4096), bf16), Packed("w4afp8", (6144, 4096), p4c.arrays, {"group_size": 4096}),
                              xp) is None                                        # per channel: the reference
    monkeypatch.setattr(gemv_rows, "gemv_rows_nf4", lambda x, q, ws, out=None: seen.append(("nf4", x.shape)) or "rows")
    pn = Packed("nf4", (6144, 4096), {"quant_weight": _Arr((6144, 2048), np.uint8),
                                      "weight_scale": _Arr((6144, 64), np.float32)}, {"group_size": 64})
    assert _gpu.matmul_nf4(_Arr((1, 4096), bf16), pn, xp) is None                # codes as stored: the reference
    pn.meta["gpu"] = "rows_nf4"
    assert _gpu.matmul_nf4(_Arr((1, 4096), bf16), pn, xp) == "rows" and seen[-1] == ("nf4", (1, 4096))
    monkeypatch.setattr("fdlite_kernels.mma_nf4.mma_nf4", lambda x, q, ws: seen.append(("mma_nf4", x.shape)) or "q")
    assert _gpu.NF4_MIN_M == 65 and _gpu.matmul_nf4(_Arr((64, 4096), bf16), pn, xp).shape == (64, 6144)
    assert _gpu.matmul_nf4(_Arr((65, 4096), bf16), pn, xp) == "q" and seen[-1] == ("mma_nf4", (65, 4096))
    assert _gpu.matmul_nf4(_Arr((5000, 4096), bf16), pn, xp) == "q" and seen[-1] == ("mma_nf4", (5000, 4096))
    assert _gpu.nf4_rows_supported(get("nf4")(), pn) and not _gpu.nf4_rows_supported(get("nf4")(activation="int8"), pn)
    assert get("w4afp8")().device_matmul == "matmul_w4afp8" and get("nf4")().device_matmul == "matmul_nf4"


@pytest.mark.parametrize("K", [512, 1000])
def test_nf4_prepare_for_gemv_rows_keeps_the_math(K):
    """nf4.Method.prepare on a GPU backend permutes the codes into gemv_rows' order once (a K padded to 1024 too);
    dequantize and the reference matmul read them back unchanged. On NumPy arrays: the same xp-generic code."""
    from fdlite.quant import get

    rng = np.random.default_rng(K)
    m = get("nf4")()
    p = m.quantize(rng.standard_normal((48, K)).astype(np.float32))
    gpu = types.SimpleNamespace(is_gpu=True, asarray=lambda a: a)
    d = m.prepare(p, gpu)
    assert d.meta["gpu"] == "rows_nf4" and not np.array_equal(d.arrays["quant_weight"], p.arrays["quant_weight"])
    assert np.array_equal(m.dequantize(d), m.dequantize(p))
    x = rng.standard_normal((3, K)).astype(np.float32)
    assert np.array_equal(m.matmul(x, d, np), m.matmul(x, p, np))
    assert "gpu" not in m.prepare(p, types.SimpleNamespace(is_gpu=False, asarray=lambda a: a)).meta
    assert "gpu" not in get("nf4")(activation="int8").prepare(p, gpu).meta
    assert "gpu" not in get("nf4")(group_size=128).prepare(get("nf4")(group_size=128).quantize(
        rng.standard_normal((48, K)).astype(np.float32)), gpu).meta


@given(st.integers(1, 40), st.integers(1, 400), st.sampled_from([4, 8]), st.integers(8, 160))
@settings(max_examples=200, deadline=None)
def test_gemv_wint2_tc_splits_cover_k_exactly(nb, k4, warps, n_sms):
    """tc_splits: the splits' group ranges [z gpb, min(G, (z + 1) gpb)) cover the 64-row groups once, none empty."""
    from fdlite_kernels.gemv_wint2 import tc_splits

    N, K = 64 * nb, 4 * k4
    S, gpb = tc_splits(N, K, n_sms, warps)
    G = -(-K // 64)
    assert S >= 1 and gpb >= 1 and (S - 1) * gpb < G <= S * gpb


def test_gemv_wint2_tc_launch_and_route(monkeypatch):
    """gemv_wint2_tc's launch against the kernel's signature (a stand-in cupy records it): grid (N / 64, splits),
    the workspace and counters only when K is split; matmul_wint2 takes it for N % 64 == 0 and K % 4 == 0 when
    prepare found the codewords in range, 16 rows a launch, else gemv_wint2 by 4 rows; prepare's range check."""
    import ml_dtypes

    from fdlite.quant import _gpu, get
    from fdlite.quant.base import Packed
    from fdlite_kernels import gemv_wint2

    _stand_in_cupy(monkeypatch)
    calls = []
    monkeypatch.setattr(gemv_wint2, "load", lambda name, name_expressions: types.SimpleNamespace(
        get_function=lambda n: n))
    monkeypatch.setattr(gemv_wint2, "launch", lambda fn, grid, block, args, pdl: calls.append((fn, grid, block, args)))
    monkeypatch.setattr(gemv_wint2, "sms", lambda dev: 132)
    monkeypatch.setattr(gemv_wint2, "counters", lambda: _Arr((1 << 16,), np.int32))
    sys.modules["cupy"].empty = lambda shape, dtype=None: _Arr(shape, dtype)
    bf16 = np.dtype(ml_dtypes.bfloat16)
    params = _kernel_params("gemv_wint2", "gemv_wint2_tc")
    for M, N, K in [(1, 4096, 4096), (16, 28672, 4096), (9, 4096, 14336)]:
        Kp = -(-K // 128) * 128
        w = (_Arr((Kp // 4, N), np.uint8), _Arr((Kp // 128, N), np.uint8), _Arr((N,), bf16),
             _Arr((N,), np.float32), _Arr((N,), np.float32))
        y = gemv_wint2.gemv_wint2_tc(_Arr((M, K), bf16), *w)
        fn, grid, block, args = calls[-1]
        wp = gemv_wint2.tc_warps(M)
        S, gpb = gemv_wint2.tc_splits(N, K, 132, wp)
        assert fn == f"gemv_wint2_tc<{wp}, {'true' if M > 8 else 'false'}, {gemv_wint2.TC_DEPTH}>"
        assert grid == (N // 64, S) and block == (32 * wp,)
        assert args[6] is y and args[-1] == gpb and len(args) == len(params) == 13
        for a, p in zip(args, params):
            assert isinstance(a, np.int32) if p == "int" else isinstance(a, _Arr), (p, a)
        assert (args[7] is y) == (S == 1) and (args[7].shape == (S, M, N) if S > 1 else True)
    with pytest.raises(ValueError, match="N % 64 == 0 and K % 4 == 0, got N = 96"):
        gemv_wint2.gemv_wint2_tc(_Arr((1, 256), bf16), _Arr((64, 96), np.uint8), _Arr((2, 96), np.uint8),
                                 _Arr((96,), bf16), _Arr((96,), np.float32), _Arr((96,), np.float32))
    seen = []
    monkeypatch.setattr(gemv_wint2, "gemv_wint2_tc", lambda x, *w, out=None: seen.append(("tc", x.shape)) or "tc")
    monkeypatch.setattr(gemv_wint2, "gemv_wint2", lambda x, *w, out=None: seen.append(("cuda", x.shape)) or "cuda")
    monkeypatch.setattr(_gpu, "_bf16_padded", lambda x, K, xp: x)
    xp = types.SimpleNamespace(empty=lambda shape, dtype=None: _Arr(shape, dtype), cuda=types.SimpleNamespace(
        Device=lambda *a: types.SimpleNamespace(compute_capability="90")))
    arrays = {"quant_weight": _Arr((1024, 4096), np.uint8), "weight_scale": _Arr((32, 4096), np.uint8)}
    arrays.update({k: None for k in ("super_scales", "code_scale", "code_zp")})
    p = Packed("wint2", (4096, 4096), arrays, {"codewords_in_range": True})
    assert _gpu.matmul_wint2(_Arr((16, 4096), bf16), p, xp) == "tc"
    y = _gpu.matmul_wint2(_Arr((40, 4096), bf16), p, xp)
    assert y.shape == (40, 4096) and seen[-3:] == [("tc", (40, 4096))] * 3          # 16 + 16 + 8 rows
    p.meta["codewords_in_range"] = False
    assert _gpu.matmul_wint2(_Arr((3, 4096), bf16), p, xp) == "cuda"
    # prepare: the range of b * code_scale + code_zp + 0.5 over b = 0..255
    method = get("wint2")()
    base = {"quant_weight": np.zeros((32, 64), np.uint8), "weight_scale": np.zeros((1, 64), np.uint8),
            "super_scales": np.ones(64, bf16)}
    np_backend = types.SimpleNamespace(asarray=lambda a: a)
    for cs, cz, ok in [(120.0, 1084.0, True), (-0.3, 100.0, True), (-1.0, 100.0, False), (40000.0, 0.0, False)]:
        q = Packed("wint2", (64, 128), {**base, "code_scale": np.full(64, cs, np.float32),
                                        "code_zp": np.full(64, cz, np.float32)}, {})
        assert method.prepare(q, np_backend).meta["codewords_in_range"] is ok, (cs, cz)


# ------------------------------------------------- gemv_rows' 4-bit lookups, emulated from the .cu's own constants

def _cu_constants(names, name="gemv_rows"):
    import re

    src = fdlite_kernels.source(name)
    return {n: int(re.search(rf"#define {n} (0x[0-9A-Fa-f]+)u", src).group(1), 16) for n in names}


def _prmt(a, b, sel):
    """PTX prmt.b32 (default mode) on uint64 arrays: selector nibble n picks byte (bits 0..2) of {b, a} for result
    byte n, or with bit 3 set replicates that byte's sign bit."""
    a, b, sel = (np.asarray(v, np.int64) for v in (a, b, sel))
    out = np.zeros(np.broadcast(a, b, sel).shape, np.int64)
    for n in range(4):
        s = (sel >> (4 * n)) & 0xF
        idx = s & 7
        src = np.where(idx < 4, a >> (8 * (idx & 3)), b >> (8 * (idx & 3))) & 0xFF
        byte = np.where(s & 8, np.where(src & 0x80, 0xFF, 0), src)
        out |= byte << (8 * n)
    return out & 0xFFFFFFFF


def _nibbles(w):
    return [(w >> (4 * n)) & 0xF for n in range(8)]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=64))
def test_gemv_rows_w4afp8_lookup_gives_e4m3_of_q_plus_8(words):
    """gemv_rows.cu's w4_e4m3x4, step by step on the .cu's tables: each nibble (two's complement q) becomes the
    e4m3fn bits of q + 8, in k order (nibbles 0..3 from the word, 4..7 from the word >> 16)."""
    import ml_dtypes

    c = _cu_constants(["E4M3_U0", "E4M3_U1", "E4M3_U2", "E4M3_U3"])
    w = np.array(words, np.int64)
    u = w ^ 0x88888888
    look = lambda raw, uu: _prmt(c["E4M3_U0"], c["E4M3_U1"], uu) | _prmt(c["E4M3_U2"], c["E4M3_U3"], raw)
    got = [look(w, u), look(w >> 16, u >> 16)]
    e4m3 = np.arange(16, dtype=np.float32).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
    for n, q in enumerate(_nibbles(w)):
        want = e4m3[q ^ 8]                   # u = q + 8 for the two's-complement nibble
        assert np.array_equal((got[n // 4] >> (8 * (n % 4))) & 0xFF, want), n


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=64))
def test_gemv_rows_nf4_lookup_gives_the_levels_bf16_bits(words):
    """gemv_rows.cu's nf4_bf16x8 on the .cu's tables: code n of a word becomes the bf16 bits (round to nearest even)
    of NF4_LEVELS[code] in half n % 2 of register n // 2, the bit-3 masks spread by prmt's sign replication."""
    import ml_dtypes

    from fdlite.quant.nf4 import NF4_LEVELS

    c = _cu_constants([f"NF4_{t}{i}" for t in "HL" for i in range(4)])
    T = c
    w = np.array(words, np.int64)
    w4 = (w << 4) & 0xFFFFFFFF
    whi = w >> 16
    sel, sel7 = [w, whi], [w & 0x7777, whi & 0x7777]
    hi = [_prmt(w4, w, 0xD9C8), _prmt(w4, w, 0xFBEA)]

    def lut16(h, t):
        lo, up = _prmt(T[f"NF4_{t}0"], T[f"NF4_{t}1"], sel[h]), _prmt(T[f"NF4_{t}2"], T[f"NF4_{t}3"], sel7[h])
        return (up & hi[h]) | (lo & ~hi[h] & 0xFFFFFFFF)

    r = []
    for h in range(2):
        hb, lb = lut16(h, "H"), lut16(h, "L")
        r += [_prmt(lb, hb, 0x5140), _prmt(lb, hb, 0x7362)]
    bits = NF4_LEVELS.astype(ml_dtypes.bfloat16).view(np.uint16)
    for n, code in enumerate(_nibbles(w)):
        assert np.array_equal((r[n // 2] >> (16 * (n % 2))) & 0xFFFF, bits[code]), n


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(1, 4), st.integers(0, 2**16))
def test_nf4_interleave_puts_each_group_in_its_lanes(n, tiles, seed):
    """gemv_rows' nf4 order: lane t's 16 bytes of half c of a tile hold, in word i (s = i // 2, p = i % 2), the
    codes of k = 128 c + 64 s + 16 t + 8 p + 0..7, so words 0, 1 are group 2c and 2, 3 group 2c + 1 of the
    tile's four groups of 64; deinterleave inverts it."""
    from fdlite_kernels.gemv_rows import nf4_deinterleave, nf4_interleave

    B = 128 * tiles
    q = np.random.default_rng(seed).integers(0, 256, (n, B), dtype=np.uint8)
    r = nf4_interleave(q)
    assert r.flags.c_contiguous and np.array_equal(nf4_deinterleave(r), q)
    for kt in range(tiles):
        for c in range(2):
            for t in range(4):
                for i in range(4):
                    s, p = i // 2, i % 2
                    got = r[:, 128 * kt + 64 * c + 16 * t + 4 * i:][:, :4]
                    k0 = 256 * kt + 128 * c + 64 * s + 16 * t + 8 * p          # the word's first k
                    assert np.array_equal(got, q[:, k0 // 2:k0 // 2 + 4])
    with pytest.raises(ValueError, match="codes of 64 bytes a row"):
        nf4_interleave(q[:, :64])


# ------------------------------------------------- mma_q8 (the prefill GEMM): its 4-bit expansions and launches

@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=64))
def test_mma_q8_int4_expansions_give_the_signed_codes(words):
    """mma_q8.cu's w4_e4m3s and w4_s8x4, step by step on the .cu's constants and prmt's / __vsub4's semantics: half
    h of a packed word gives, byte by byte, e4m3fn(q) of nibbles 4h..4h+3 (w4afp8: x's codes in k order) or the int8 q
    of the even (h = 0) or odd (h = 1) nibbles (w4a8: x's codes stored evens-then-odds), q the two's-complement
    nibble."""
    import ml_dtypes

    c = _cu_constants(["E4M3_U0", "E4M3_U1", "E4M3_N0", "E4M3_N1"], "mma_q8")
    w = np.array(words, np.int64)
    q = [((v ^ 8) - 8) for v in _nibbles(w)]                                    # -8..7
    e4m3 = lambda v: np.asarray(v, np.float32).astype(ml_dtypes.float8_e4m3fn).view(np.uint8).astype(np.int64)
    for h in (0, 1):
        s = w >> 16 if h else w & 0xFFFFFFFF
        hi = _prmt((s << 4) & 0xFFFFFFFF, s, 0xD9C8)
        got = _prmt(c["E4M3_U0"], c["E4M3_U1"], s) | (_prmt(c["E4M3_N0"], c["E4M3_N1"], s & 0x7777) & hi)
        for n in range(4):
            assert np.array_equal((got >> (8 * n)) & 0xFF, e4m3(q[4 * h + n])), (h, n)
        v = ((w >> 4) if h else w) & 0x0F0F0F0F
        v ^= 0x08080808
        sub = sum(((((v >> (8 * n)) & 0xFF) - 8) & 0xFF) << (8 * n) for n in range(4))   # __vsub4: bytewise
        for n in range(4):
            assert np.array_equal(((sub >> (8 * n)) & 0xFF).astype(np.uint8).view(np.int8), np.asarray(q[2 * n + h],
                                                                                                       np.int8)), (h, n)


def test_mma_q8_launch_passes_what_the_kernel_takes(monkeypatch):
    """Each mma_q8 launcher quantizes x once (gemv_rows_quant_x, a block per token) and launches a block per 128 rows
    x 128 columns with the kernel's arguments, the pipeline depth that fits the device's shared memory, and PDL."""
    import ml_dtypes

    from fdlite_kernels import gemv_rows, mma_q8

    _stand_in_cupy(monkeypatch)
    calls = []
    monkeypatch.setattr(gemv_rows, "kernel", lambda dev, name: gemv_rows.Compiled(
        types.SimpleNamespace(name=name), 128, 0))
    record = lambda fn, grid, block, args, shared_mem, pdl: calls.append((fn.name, grid, block, args, shared_mem, pdl))
    monkeypatch.setattr(gemv_rows, "launch", record)
    monkeypatch.setattr(mma_q8, "launch", record)
    monkeypatch.setattr(mma_q8, "kernel", lambda dev, mode, stages, unroll: types.SimpleNamespace(
        name=(mode, stages, unroll)))
    monkeypatch.setattr(mma_q8, "wgmma_kernel", lambda dev, mode, stages, inflight: types.SimpleNamespace(
        name=("wgmma", mode, stages, inflight)))
    monkeypatch.setattr("fdlite_kernels._launch.ptr", lambda a: _Arr((1,), np.float32) if a is None else a)
    bf16 = np.dtype(ml_dtypes.bfloat16)
    params = _kernel_params("mma_q8", "mma_q8")
    M, N, K = 300, 1000, 1024
    runs = [(mma_q8.mma_q8_fp8, _Arr((N, K), np.uint8), _Arr((8, 8), np.float32), 1),
            (mma_q8.mma_q8_fp8_channel, _Arr((N, K), np.uint8), _Arr((N, 1), np.float32), 2),
            (mma_q8.mma_q8_int8, _Arr((N, K), np.int8), _Arr((N,), np.float32), 3),
            (mma_q8.mma_q8_w4a8, _Arr((N, K // 2), np.uint8), _Arr((N, 8), np.float32), 4),
            (mma_q8.mma_q8_w4afp8, _Arr((N, K // 2), np.uint8), _Arr((N, 8), np.float32), 5)]
    for fn, q, ws, mode in runs:
        y = fn(_Arr((M, K), bf16), q, ws)
        (qn, qg, _, qa, _, qp), (kn, kg, kb, ka, ks, kp) = calls[-2:]
        assert qn == f"gemv_rows_quant_x<{mode}, {gemv_rows.QUANT_WARPS}>" and qg == (M,) and qp
        assert qa[1].shape == (gemv_rows.smem_bytes(M, K, True, mode in (4, 5)),)
        wg = mode in mma_q8.WGMMA_MODES                    # sm_90 (the stand-in device): the 8-bit weights on wgmma
        st = mma_q8.WGMMA_STAGES.get(mode, 4)                 # w8a8, wfp8afp8: 4 stages, one wgmma group in flight
        assert kn == (("wgmma", mode, st, mode in (2, 3)) if wg else (mode, 4, mma_q8.UNROLL[mode])) and kg == (3, 8)
        assert ks == (mma_q8.wgmma_smem_bytes(st) if wg else mma_q8.smem_bytes(mode, 4)) <= 227 * 1024 and kp
        assert kb == (256,)
        assert ka[0] is qa[1] and ka[3] is y and y.shape == (M, N) and len(ka) == len(params)
        assert len(_kernel_params("wgmma_q8", "wgmma_q8")) == len(params)
        for a, p in zip(ka, params):
            assert isinstance(a, np.int32) if p == "int" else isinstance(a, _Arr), (p, a)
        assert ka[4:] == (M, N, K)
    assert mma_q8.smem_bytes(1, 4) == 4 * (16384 + 16384 + 1024) and mma_q8.smem_bytes(2, 3) == 3 * 32768
    assert mma_q8.smem_bytes(4, 4) == 4 * (16384 + 8192 + 1024)
    # a device with 99 KiB a block (sm_89) gets three stages of the 8-bit tiles
    assert mma_q8.wgmma_smem_bytes(4) == 4 * 33792 + 1024
    monkeypatch.setattr(mma_q8, "smem_optin", lambda dev: 101376)
    mma_q8.mma_q8_fp8(_Arr((M, K), bf16), runs[0][1], runs[0][2], wgmma=False)
    assert calls[-1][0] == (1, 3, True) and calls[-1][4] == 3 * 33792
    with pytest.raises(ValueError, match="4 stages take 135168 bytes of shared memory, over this device's 101376"):
        mma_q8.mma_q8_fp8(_Arr((M, K), bf16), runs[0][1], runs[0][2], stages=4, wgmma=False)
    with pytest.raises(ValueError, match="wgmma_q8 takes the 8-bit-weight modes on sm_90 \\(mode 4"):
        mma_q8._run(_Arr((M, K), bf16), runs[3][1], runs[3][2], N, K, 4, None, None, None, wgmma=True)
    with pytest.raises(ValueError, match=r"ws shape \(1000, 4\), expected \(1000, 8\)"):
        mma_q8.mma_q8_w4a8(_Arr((M, K), bf16), runs[3][1], _Arr((N, 4), np.float32))
    # a static activation scale rides to gemv_rows_quant_x (its last argument), for the int8 modes only
    st = _Arr((1,), np.float32)
    mma_q8.mma_q8_w4a8(_Arr((M, K), bf16), runs[3][1], runs[3][2], static=st)
    assert calls[-2][0] == f"gemv_rows_quant_x<4, {gemv_rows.QUANT_WARPS}>" and calls[-2][3][4:] == (st, 1)
    mma_q8.mma_q8_w4a8(_Arr((M, K), bf16), runs[3][1], runs[3][2])
    assert calls[-2][3][5] == 0                                            # dynamic: the flag off, the pointer unread
    with pytest.raises(ValueError, match="a static activation scale is for the int8 modes"):
        gemv_rows.quantized_x(_Arr((M, K), bf16), 5, st)
    with pytest.raises(ValueError, match=r"static: shape \(2,\), expected \(1,\)"):
        mma_q8.mma_q8_int8(_Arr((M, K), bf16), runs[2][1], runs[2][2], static=_Arr((2,), np.float32), wgmma=False)
    assert gemv_rows.static_scale(np.array([3.5], np.float32)).tolist() == [np.float32(3.5 / 127.0)]
    with pytest.raises(ValueError, match="activation_scale = 0.0: a static activation abs-max must be finite and > 0"):
        gemv_rows.static_scale(np.zeros(1, np.float32))


def test_mma_nf4_launch_passes_what_the_kernel_takes(monkeypatch):
    """mma_nf4 launches a block per 128 rows x 128 columns with the kernel's arguments and PDL, 3 stages by default (4
    refused where a block may not have 164 KiB), and refuses bad shapes with their numbers."""
    import ml_dtypes

    from fdlite_kernels import mma_nf4

    _stand_in_cupy(monkeypatch)
    calls = []
    monkeypatch.setattr(mma_nf4, "launch", lambda fn, grid, block, args, shared_mem, pdl: calls.append(
        (fn, grid, block, args, shared_mem, pdl)))
    monkeypatch.setattr(mma_nf4, "kernel", lambda dev, stages, wm: ("mma_nf4", stages, wm))
    bf16 = np.dtype(ml_dtypes.bfloat16)
    y = mma_nf4.mma_nf4(_Arr((300, 4096), bf16), _Arr((1000, 2048), np.uint8), _Arr((1000, 64), np.float32))
    fn, grid, block, args, smem, pdl = calls[-1]
    assert fn == ("mma_nf4", 3, mma_nf4.WM) and grid == (3, 8) and block == (256,) and smem == 3 * 41984 and pdl
    params = _kernel_params("mma_nf4", "mma_nf4")
    assert len(args) == len(params) and args[3] is y and args[4:] == (300, 1000, 4096)
    for a, p in zip(args, params):
        assert isinstance(a, np.int32) if p == "int" else isinstance(a, _Arr), (p, a)
    monkeypatch.setattr(mma_nf4, "smem_optin", lambda dev: 166912)
    with pytest.raises(ValueError, match="4 stages take 167936 bytes of shared memory, over this device's 166912"):
        mma_nf4.mma_nf4(_Arr((3, 256), bf16), _Arr((8, 128), np.uint8), _Arr((8, 4), np.float32), stages=4)
    with pytest.raises(ValueError, match="K = 200 must be a positive multiple of 256"):
        mma_nf4.mma_nf4(_Arr((3, 200), bf16), _Arr((8, 100), np.uint8), _Arr((8, 4), np.float32))
    with pytest.raises(ValueError, match=r"ws shape \(8, 2\), expected \(8, 4\)"):
        mma_nf4.mma_nf4(_Arr((3, 256), bf16), _Arr((8, 128), np.uint8), _Arr((8, 2), np.float32))
