"""Online quantization where the weight lives: Grouped.quantize, pack_nibbles, mma_wq.repack and
prepare_grouped are xp-generic (numpy or cupy), and the device path must give the host path's bytes exactly.

On the CPU: (1) the xp-generic code with NumPy arrays against a frozen copy of the NumPy code it replaced
(``_legacy_*``, verbatim from before the change: the definition), bit for bit; (2) the device branches with a
strict stand-in for cupy (``_fake_cupy``: host arrays mixed into device operations raise, as in CuPy;
device -> host copies are counted), so the code a GPU runs is exercised here too. On a GPU (``-m gpu``): the
same comparison with real CuPy arrays, peak pool memory for the 8B gate_up, and the time from
Model.from_config to the first token.
"""
from __future__ import annotations

import sys
import time
import types
from unittest import mock

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fdlite import quant
from fdlite.errors import InputError
from fdlite.quant import _gpu, _grouped
from fdlite.quant._common import check_weight, pack_nibbles, unpack_nibbles
from fdlite_kernels.mma_wq import padded, repack

UNIFORM = ["wint8", "wint4", "w8a8", "w4a8", "w4afp8"]
GROUPS = [32, 64, 128, -1]
BF16 = np.dtype(ml_dtypes.bfloat16)


# --------------------------------------------------------------- the NumPy code before the change (frozen)

def _legacy_check_weight(w):
    w = w.get() if hasattr(w, "get") else np.asarray(w)
    assert w.ndim == 2 and 0 not in w.shape
    w = w.astype(np.float32, copy=False)
    assert np.isfinite(w).all()
    return w


def _legacy_round_half_away(x):
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _legacy_pack_nibbles(q):
    u = (q.astype(np.int16) & 0xF).astype(np.uint8)
    return u[:, 0::2] | (u[:, 1::2] << 4)


def _legacy_quantize(m, w):
    """Grouped.quantize for a uniform grid -> (quant_weight, weight_scale)."""
    w = _legacy_check_weight(w)
    N, K = w.shape
    g = m.group_of(K)
    G = -(-K // g)
    wg = np.zeros((N, G * g), np.float32)
    wg[:, :K] = w
    wg = wg.reshape(N, G, g)
    amax = np.abs(wg).max(-1, keepdims=True)
    safe = np.where(amax > 0, amax, 1.0).astype(np.float32)
    t = wg / safe * np.float32(m.qmax)
    q = np.clip(_legacy_round_half_away(t), m.qmin, m.qmax).astype(np.int8).reshape(N, G * g)
    scale = (amax[..., 0] / np.float32(m.qmax)).astype(np.float32).astype(np.float32)   # scale_of, pack
    return (_legacy_pack_nibbles(q) if m.bits == 4 else q.astype(np.int8)), scale


def _legacy_repack(q, bits):
    KT = {8: 64, 4: 128}
    N, K = q.shape
    Np, Kp = padded(N, K, bits)
    kt = KT[bits]
    qz = np.zeros((Np, Kp), np.int16)
    qz[:N, :K] = q
    v = qz.reshape(Np // 8, 8, Kp // kt, kt // 16, 16)
    idx = np.array([[2 * t, 2 * t + 1, 2 * t + 8, 2 * t + 9] for t in range(4)])
    sel = v[..., idx].transpose(0, 2, 1, 4, 3, 5)
    if bits == 8:
        return np.ascontiguousarray(sel.astype(np.int8)).view(np.uint8).reshape(-1)
    u = (sel + 8).astype(np.uint8)
    packed = np.ascontiguousarray(u[..., 0::2] | (u[..., 1::2] << 4)).reshape(-1)
    # since 2026-11-25 each 32-bit word (8 codes in element order above) holds them in the nibble order
    # 0 2 4 6 1 3 5 7 (common.cuh: u4x8_to_bf16x2): move nibble n of the old word to its new place
    old = packed.view("<u4").astype(np.uint64)
    new = np.zeros_like(old)
    for n, at in enumerate([0, 4, 1, 5, 2, 6, 3, 7]):
        new |= ((old >> (4 * n)) & 15) << (4 * at)
    return new.astype("<u4").view(np.uint8)


def _legacy_prepare(m, qw, s, N, group_size):
    """prepare_grouped's arrays -> (qp, scale). Per channel (one scale column) is one group over the padded K
    for int4 too (was group = K, which the kernels reject when K is not a multiple of 128)."""
    q = unpack_nibbles(qw, True, np) if m.bits == 4 else qw
    Np, Kk = padded(N, q.shape[1], m.bits)
    group = Kk if s.shape[1] == 1 else group_size
    scale = np.zeros((Np, Kk // group), np.float32)
    scale[:N, :s.shape[1]] = s
    return _legacy_repack(q, m.bits), scale


# ----------------------------------------------------------------------------------------------- weights

def _weights(rng, N, K, m, kind, dtype):
    """(N, K) weights of a kind: normal; with zero rows; with exact half steps (k + 0.5) * amax / qmax."""
    w = (rng.standard_normal((N, K)) * 0.02).astype(np.float32)
    if kind in ("zeros", "mixed"):
        w[rng.random(N) < 0.3] = 0.0
    if kind in ("halves", "mixed"):
        amax = np.float32(rng.choice([m.qmax, 1.0, 0.02, 3.0]))
        k = rng.integers(-m.qmax, m.qmax, (N, K)).astype(np.float32)
        halves = ((k + np.float32(0.5)) * (amax / np.float32(m.qmax))).astype(np.float32)
        halves[:, rng.integers(0, K)] = amax                     # pin the amax of one group of each row
        rows = rng.random(N) < 0.7
        w[rows] = halves[rows]
    return w.astype(dtype)


def _method(name, group):
    return quant.get(name)(group_size=group)


# ------------------------------------------------------------------------ (1) xp = numpy against the legacy

@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(UNIFORM), group=st.sampled_from(GROUPS), N=st.integers(1, 40),
       K=st.integers(1, 300), kind=st.sampled_from(["normal", "zeros", "halves", "mixed"]),
       dtype=st.sampled_from([np.float32, BF16]), slab=st.sampled_from([1, 500, _grouped.SLAB]),
       seed=st.integers(0, 2**31 - 1))
def test_quantize_numpy_equals_legacy_bit_for_bit(name, group, N, K, kind, dtype, slab, seed):
    """slab: rows per rounding step (1 row, a few rows, the whole weight) must not change a bit."""
    m = _method(name, group)
    w = _weights(np.random.default_rng(seed), N, K, m, kind, dtype)
    with mock.patch.object(_grouped, "SLAB", slab):
        p = m.quantize(w)
    qw, s = _legacy_quantize(m, w)
    assert p.arrays["quant_weight"].dtype == qw.dtype and p.arrays["weight_scale"].dtype == np.float32
    np.testing.assert_array_equal(p.arrays["quant_weight"], qw)
    assert p.arrays["weight_scale"].tobytes() == s.tobytes()         # bitwise (0.0 vs -0.0 would differ)


def test_exact_halves_round_away_from_zero():
    """t = w / amax * 7 lands exactly on k + 0.5 here; Paddle's lroundf takes it away from zero (np.round
    would not), and the float32 quirk at 0.5 - ulp (0.49999997 + 0.5 rounds to 1.0 in float32) is part of the
    definition: a float64 intermediate would give 0 there."""
    m = _method("wint4", -1)
    below_half = np.nextafter(np.float32(0.5), np.float32(0))
    w = np.array([[7.0, 2.5, -2.5, 0.5, -0.5, 6.5, -6.5, below_half]], np.float32)
    q = unpack_nibbles(m.quantize(w).arrays["quant_weight"], True)
    assert q[0].tolist() == [7, 3, -3, 1, -1, 7, -7, 1]
    np.testing.assert_array_equal(m.quantize(w).arrays["quant_weight"], _legacy_quantize(m, w)[0])


@pytest.mark.parametrize("name", UNIFORM)
def test_codes_stay_float32(name, monkeypatch):
    """No float64 promotion between w / amax * qmax and the rounding (float64 would round 0.5 - ulp to 0)."""
    seen = []
    real = _grouped.round_half_away
    monkeypatch.setattr(_grouped, "round_half_away", lambda x, xp: seen.append(x.dtype) or real(x, xp))
    p = _method(name, 64).quantize(np.random.default_rng(0).standard_normal((5, 200)).astype(BF16))
    assert seen == [np.float32] and p.arrays["weight_scale"].dtype == np.float32


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(1, 300), bits=st.sampled_from([8, 4]), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([np.int8, np.int64]))
def test_repack_numpy_equals_legacy(n, k, bits, seed, dtype):
    lo, hi = (-127, 128) if bits == 8 else (-8, 8)
    q = np.random.default_rng(seed).integers(lo, hi, (n, k)).astype(dtype)
    qp = repack(q, bits)
    assert qp.dtype == np.uint8 and qp.tobytes() == _legacy_repack(q, bits).tobytes()


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 20), half_k=st.integers(1, 20), seed=st.integers(0, 2**16))
def test_pack_nibbles_equals_legacy(n, half_k, seed):
    q = np.random.default_rng(seed).integers(-8, 16, (n, 2 * half_k)).astype(np.int8)
    p = pack_nibbles(q)
    assert p.dtype == np.uint8 and p.tobytes() == _legacy_pack_nibbles(q).tobytes()


class _HostBackend:
    """What prepare needs of a GPU Backend; arrays stay where they are (the repack itself is under test)."""
    is_gpu, name = True, "cuda"

    @staticmethod
    def asarray(a, dtype=None):
        return a


@settings(max_examples=30, deadline=None)
@given(bits_group=st.sampled_from([(8, -1), (4, 32), (4, 64), (4, 128), (4, -1)]), N=st.integers(1, 40),
       K=st.integers(1, 300), seed=st.integers(0, 2**31 - 1))
def test_prepare_grouped_numpy_equals_legacy(bits_group, N, K, seed):
    bits, group = bits_group
    m = _method("wint8" if bits == 8 else "wint4", group)
    p = m.quantize(_weights(np.random.default_rng(seed), N, K, m, "mixed", np.float32))
    if not _gpu.grouped_supported(m, p):
        return                                  # a group that does not divide the 128-padded K: reference path
    r = _gpu.prepare_grouped(m, p, _HostBackend())
    a = p.arrays
    qp, scale = _legacy_prepare(m, a["quant_weight"], a["weight_scale"], N, p.meta["group_size"])
    assert r.arrays["qp"].tobytes() == qp.tobytes() and r.arrays["scale"].tobytes() == scale.tobytes()


# -------------------------------------------------- (2) the device branches, with a strict stand-in for cupy

class FakeDevArray(np.lib.mixins.NDArrayOperatorsMixin):
    """A "device" array: wraps a NumPy array; like cupy, it refuses implicit conversion to NumPy and
    operations that mix in host arrays; it counts .get() (device -> host copies)."""
    gets = 0

    def __init__(self, a):
        self.a = np.asarray(a)

    def get(self):
        FakeDevArray.gets += 1
        return self.a.copy()

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed (FakeDevArray, as cupy)")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if "out" in kwargs:
            kwargs["out"] = tuple(_dev_in(o) for o in kwargs["out"])
        out = getattr(ufunc, method)(*(_dev_in(x) for x in inputs), **kwargs)
        return _dev_out(out)

    def __array_function__(self, func, types_, args, kwargs):
        return _dev_out(func(*_dev_in(args), **_dev_in(kwargs)))

    def __getattr__(self, name):
        if name.startswith("__"):                 # __array_interface__ & co. would hand NumPy the host buffer
            raise AttributeError(name)
        attr = getattr(self.a, name)
        if not callable(attr):                    # shape, dtype, ndim, flags, nbytes, ...; .T stays on the device
            return _dev_out(attr) if isinstance(attr, np.ndarray) else attr
        return lambda *args, **kwargs: _dev_out(attr(*_dev_in(args), **_dev_in(kwargs)))

    def __getitem__(self, key):
        return _dev_out(self.a[_dev_in(key)])

    def __setitem__(self, key, value):
        self.a[_dev_in(key)] = _dev_in(value)

    def __iter__(self):
        return (FakeDevArray(x) for x in self.a)

    def __len__(self):
        return len(self.a)

    def __bool__(self):
        return bool(self.a)

    def __int__(self):
        return int(self.a)

    def __float__(self):
        return float(self.a)


FakeDevArray.__module__ = "cupy._fake"          # what fdlite.backend.array_module and mma_wq.repack look at


def _dev_in(x):
    """Unwrap device arrays; a host ndarray here is a host/device mix, which cupy refuses."""
    if isinstance(x, FakeDevArray):
        return x.a
    if isinstance(x, np.ndarray):
        raise TypeError(f"host array of shape {x.shape} mixed into a device operation")
    if isinstance(x, (tuple, list)):
        return type(x)(_dev_in(v) for v in x)
    if isinstance(x, dict):
        return {k: _dev_in(v) for k, v in x.items()}
    return x


def _dev_out(x):
    if isinstance(x, (np.ndarray, np.generic)) and not isinstance(x, np.dtype):
        return FakeDevArray(x)                    # cupy returns 0-d arrays where NumPy returns scalars
    if isinstance(x, tuple):
        return tuple(_dev_out(v) for v in x)
    return x


def _fake_cupy():
    """A module that answers as cupy: NumPy's functions on device arrays; asarray/array upload host arrays."""
    mod = types.ModuleType("cupy")
    mod.__file__ = "<fake cupy: tests/test_quant_device_path.py>"

    def wrap(fn, uploads):
        def call(*args, **kwargs):
            if uploads and args and isinstance(args[0], np.ndarray):
                args = (FakeDevArray(args[0]),) + args[1:]        # the one explicit upload cupy allows
            return _dev_out(fn(*_dev_in(args), **_dev_in(kwargs)))
        return call

    def getattr_(name):
        attr = getattr(np, name)
        if isinstance(attr, type) or not callable(attr):
            return attr                          # cupy.float32 is numpy.float32, dtypes are numpy's
        return wrap(attr, uploads=name in ("asarray", "array"))

    mod.__getattr__ = getattr_
    return mod


class _FakeGpuBackend:
    """The members of fdlite.backend.Backend that loading touches, on the fake device."""
    is_gpu, name, compute_dtype = True, "cuda", BF16

    def __init__(self, xp):
        self.xp = xp
        self.uploads = 0

    def asarray(self, a, dtype=None):
        self.uploads += isinstance(a, np.ndarray)
        return self.xp.asarray(a, dtype=dtype)


@pytest.fixture
def fake_cp(monkeypatch):
    mod = _fake_cupy()
    monkeypatch.setitem(sys.modules, "cupy", mod)
    FakeDevArray.gets = 0
    return mod


def test_fake_cupy_is_strict(fake_cp):
    """The stand-in refuses what cupy refuses, so a passing device-path test means something."""
    d = fake_cp.zeros((2, 3), np.float32)
    with pytest.raises(TypeError):
        np.asarray(d)
    with pytest.raises(TypeError):
        d + np.ones((2, 3), np.float32)
    with pytest.raises(TypeError):
        d[:, :1] = np.ones((2, 1), np.float32)
    assert isinstance(d * np.float32(2), FakeDevArray) and (d * np.float32(2)).dtype == np.float32


@pytest.mark.parametrize("name, group", [(n, g) for n in UNIFORM for g in GROUPS])
def test_device_quantize_stays_on_device_and_matches(fake_cp, name, group):
    m = _method(name, group)
    w = _weights(np.random.default_rng(7), 37, 300, m, "mixed", BF16)         # K = 300: partial last group
    p = m.quantize(fake_cp.asarray(w))
    assert FakeDevArray.gets == 0
    assert all(isinstance(a, FakeDevArray) for a in p.arrays.values())
    qw, s = _legacy_quantize(m, w)
    assert p.arrays["quant_weight"].get().tobytes() == qw.tobytes()
    assert p.arrays["weight_scale"].get().tobytes() == s.tobytes()


@pytest.mark.parametrize("bits, group", [(8, -1), (4, 32), (4, 64), (4, 128)])
def test_device_prepare_repacks_on_device(fake_cp, bits, group):
    m = _method("wint8" if bits == 8 else "wint4", group)
    w = _weights(np.random.default_rng(3), 50, 256 + 32, m, "mixed", BF16)
    backend = _FakeGpuBackend(fake_cp)
    r = m.prepare(m.quantize(fake_cp.asarray(w)), backend)
    assert r.meta["gpu"] == "mma_wq" and FakeDevArray.gets == 0 and backend.uploads == 0
    hp = m.quantize(w)
    qp, scale = _legacy_prepare(m, hp.arrays["quant_weight"], hp.arrays["weight_scale"], 50,
                                hp.meta["group_size"])
    assert r.arrays["qp"].get().tobytes() == qp.tobytes()
    assert r.arrays["scale"].get().tobytes() == scale.tobytes()


def test_device_check_weight_validates_without_leaving_the_device(fake_cp):
    w = np.zeros((4, 6), np.float32)
    w[2, 3], w[3, 0] = np.nan, np.inf
    with pytest.raises(InputError, match=r"\(4, 6\) holds 2 NaN/Inf values \(first at \[2, 3\] = nan\)"):
        check_weight(fake_cp.asarray(w), on_device=True)
    with pytest.raises(InputError, match=r"got shape \(4, 6, 1\)"):
        check_weight(fake_cp.asarray(w[..., None]), on_device=True)
    assert FakeDevArray.gets == 0
    out = check_weight(fake_cp.asarray(np.ones((2, 2), BF16)), on_device=True)
    assert isinstance(out, FakeDevArray) and out.dtype == np.float32 and FakeDevArray.gets == 0
    host = check_weight(fake_cp.asarray(np.ones((2, 2), BF16)))             # GPTQ / fp8 / wint2: to the host
    assert isinstance(host, np.ndarray) and FakeDevArray.gets == 1


@pytest.mark.parametrize("name", ["nf4", "block_wise_fp8", "wfp8afp8"])
def test_host_only_methods_still_take_device_weights(fake_cp, name):
    w = np.random.default_rng(1).standard_normal((16, 256)).astype(BF16)
    m = quant.get(name)()
    p = m.quantize(fake_cp.asarray(w))
    ref = m.quantize(w)
    assert FakeDevArray.gets == 1 and not m.quantizes_on_device
    for k, a in ref.arrays.items():
        assert np.asarray(p.arrays[k]).tobytes() == a.tobytes()


def test_linear_factory_uploads_host_weights_for_device_quantization(fake_cp):
    """Model.load on the GPU: a checkpoint's host tensor is uploaded, then quantized and repacked there;
    methods that quantize on the host (GPTQ-bound, nf4, dense) get the host tensor as before."""
    from fdlite.model import _linear_factory  # noqa: PLC0415
    from fdlite.quant_config import Bound  # noqa: PLC0415

    w = np.random.default_rng(4).standard_normal((64, 256)).astype(BF16)
    backend = _FakeGpuBackend(fake_cp)
    lin = _linear_factory(_method("wint4", 128), backend)("attn_o", "o_proj", w, None)
    assert backend.uploads == 1 and FakeDevArray.gets == 0
    assert isinstance(lin.packed.arrays["qp"], FakeDevArray) and lin.packed.meta["gpu"] == "mma_wq"
    assert Bound(_method("wint4", 128), "x").quantizes_on_device
    assert not Bound(_method("wint4", 128), "x", hessian=np.eye(256)).quantizes_on_device
    assert not quant.get("nf4")().quantizes_on_device and not quant.get("dense")().quantizes_on_device
    backend = _FakeGpuBackend(fake_cp)
    _linear_factory(quant.get("nf4")(), backend)("attn_o", "o_proj", w, None)
    assert FakeDevArray.gets == 0 and backend.uploads == 2           # quant_weight and scale, after quantize


# --------------------------------------------------------------------------------------------- (3) on a GPU

@pytest.mark.gpu
@pytest.mark.parametrize("name, group", [("wint8", -1), ("wint4", 128), ("wint4", 64), ("wint4", -1),
                                         ("w4afp8", 128), ("w8a8", -1), ("wint8", 32)])
@pytest.mark.parametrize("dtype", [BF16, np.float32])               # float32 keeps the exact half steps
def test_gpu_quantize_and_repack_bit_identical_to_host(cp, name, group, dtype, monkeypatch):
    from fdlite.backend import get_backend  # noqa: PLC0415

    m = _method(name, group)
    rng = np.random.default_rng(11)
    w = _weights(rng, 1000, 4096 + 64, m, "mixed", dtype)         # K not a multiple of 128: a partial group
    w[5] = 0.0
    wd = cp.asarray(w)
    seen = []                   # w / amax * qmax as the rounding sees it: float32 on CuPy too (no promotion)
    real = _grouped.round_half_away
    monkeypatch.setattr(_grouped, "round_half_away", lambda x, xp: seen.append((xp.__name__, x.dtype)) or
                        real(x, xp))
    dev, host = m.quantize(wd), m.quantize(wd.get())
    assert {d for _, d in seen} == {np.dtype(np.float32)} and {x for x, _ in seen} == {"cupy", "numpy"}
    assert all(isinstance(a, cp.ndarray) for a in dev.arrays.values())
    for k in host.arrays:
        assert dev.arrays[k].dtype == host.arrays[k].dtype
        assert dev.arrays[k].get().tobytes() == host.arrays[k].tobytes(), k
    qw, s = _legacy_quantize(m, w)
    assert host.arrays["quant_weight"].tobytes() == qw.tobytes()
    assert host.arrays["weight_scale"].tobytes() == s.tobytes()
    backend = get_backend("cuda")
    rd, rh = m.prepare(dev, backend), m.prepare(host, backend)      # kernel layout (repacked) or as quantized
    assert rd.meta == rh.meta and sorted(rd.arrays) == sorted(rh.arrays)
    for k in rh.arrays:
        assert rd.arrays[k].get().tobytes() == rh.arrays[k].get().tobytes(), k


@pytest.mark.gpu
@pytest.mark.parametrize("name, group", [("wint8", -1), ("wint4", 128)])
def test_gpu_random_weight_drawn_on_device(cp, name, group):
    """As Model.from_config draws them (fdlite/random_weights.py): normal * std on the device, then bf16."""
    from fdlite.backend import get_backend  # noqa: PLC0415

    a = cp.random.default_rng(3).standard_normal((6144, 4096), dtype=cp.float32)
    a *= np.float32(0.02)
    wd = a.astype(BF16)
    m, backend = _method(name, group), get_backend("cuda")
    rd, rh = m.prepare(m.quantize(wd), backend), m.prepare(m.quantize(wd.get()), backend)
    for k in rh.arrays:
        assert rd.arrays[k].get().tobytes() == rh.arrays[k].get().tobytes(), k


@pytest.mark.gpu
def test_gpu_big_weight_peak_memory(cp):
    """The 8B gate_up (28672 x 4096, bf16) quantizes and repacks within ~2 float32 copies of itself: the
    float32 weight plus slab-sized temporaries (fdlite.quant._grouped.SLAB), then the int16 repack buffers."""
    from fdlite.backend import get_backend  # noqa: PLC0415

    pool = cp.get_default_memory_pool()
    w = (cp.random.default_rng(0).standard_normal((28672, 4096), dtype=cp.float32) * 0.02).astype(BF16)
    pool.free_all_blocks()
    base = pool.used_bytes()
    m = _method("wint4", 128)
    packed = m.prepare(m.quantize(w), get_backend("cuda"))
    cp.cuda.Device().synchronize()
    f32 = w.size * 4
    peak = pool.total_bytes() - base                   # blocks the pool had to hold at the worst moment
    print(f"gate_up wint4: pool peak {peak / 2**30:.2f} GiB = {peak / f32:.1f} float32 copies")
    assert peak <= 3 * f32 and isinstance(packed.arrays["qp"], cp.ndarray)


@pytest.mark.gpu
def test_gpu_from_config_quantizes_on_device_fast(cp, monkeypatch):
    """A 2-layer Llama-3-8B shape, wint4 and wint8: every linear is quantized on the device, and load -> first
    token stays under the 30 s the full 8B must reach (the host path took ~6 s per layer). The first load also
    pays CuPy's and the kernels' compiles on a cold cache."""
    from fdlite import Model, SamplingParams  # noqa: PLC0415

    where = []
    real = _grouped.Grouped.codes
    monkeypatch.setattr(_grouped.Grouped, "codes",
                        lambda self, v, amax: where.append(type(v).__module__) or real(self, v, amax))
    for q in ("wint4", "wint8", "wint4"):
        t0 = time.perf_counter()
        m = Model.from_config("llama-3-8b", device="cuda", quantization=q, num_hidden_layers=2,
                              max_model_len=256, max_num_seqs=1)
        t1 = time.perf_counter()
        out = m.generate([list(range(1, 17))], SamplingParams(temperature=0, max_tokens=1, ignore_eos=True),
                         use_tqdm=False)
        m.backend.synchronize()
        t2 = time.perf_counter()
        m.close()
        print(f"{q}: from_config {t1 - t0:.1f} s, first token {t2 - t1:.1f} s")
        assert len(out[0].outputs.token_ids) == 1
        assert where and all(mod.startswith("cupy") for mod in where), sorted(set(where))
        assert t2 - t0 < 30.0, f"{q}: load -> first token took {t2 - t0:.1f} s for 2 layers"
        where.clear()
    assert t1 - t0 < 10.0, f"warm from_config took {t1 - t0:.1f} s for 2 layers"


@settings(max_examples=40, deadline=None)
@given(group=st.sampled_from([-1, 32, 48, 64, 96, 128]), N=st.integers(1, 40), K=st.integers(2, 700),
       seed=st.integers(0, 2**31 - 1))
def test_prepared_int4_means_the_method(group, N, K, seed):
    """What the kernels compute from prepare_grouped's arrays, y = x @ (q * scale[n, k // group]).T over the
    padded K, equals the method's own matmul; shapes the kernels cannot take are refused (reference path)."""
    from fdlite.moe_gpu import unpack_codes

    m = _method("wint4", group)
    rng = np.random.default_rng(seed)
    p = m.quantize(_weights(rng, N, K, m, "mixed", np.float32))
    G = p.arrays["weight_scale"].shape[1]
    Kq = G * p.meta["group_size"]
    ok = _gpu.grouped_supported(m, p)
    assert ok == (G == 1 or (group % 16 == 0 and (-(-Kq // 128) * 128) % group == 0))
    if not ok:
        return
    r = _gpu.prepare_grouped(m, p, _HostBackend())
    Kk, g = r.meta["K_pad"], r.meta["group"]
    assert Kk % 128 == 0 and Kk % g == 0 and r.arrays["scale"].shape[1] == Kk // g
    q = unpack_codes(r.arrays["qp"], N, Kk, 4)[:N].astype(np.float64)                  # (N, Kk)
    w = q * np.repeat(r.arrays["scale"][:N].astype(np.float64), g, axis=1)
    x = rng.standard_normal((3, K)).astype(np.float32)
    want = m.matmul(x, p, np).astype(np.float64)
    got = np.pad(x, ((0, 0), (0, Kk - K))).astype(np.float64) @ w.T
    assert np.allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(want).max())))


def test_wint2_quantizes_on_device_bit_identical_to_the_host(fake_cp):
    """wint2's encoder (scale search over 7 widths and 3 local scales, nearest of 256 codewords) runs on the
    device array module without a host copy, and gives the host's bytes (same float32 arithmetic here; on a GPU
    cuBLAS may break near-ties between codewords differently: test_gpu_model checks the GPU result's quality)."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((24, 300)).astype(BF16)                          # K = 300: padded to 384
    w[3, :64] = 0                                                            # a dead group: local scale 0
    w[5, 7] = 40                                                             # an outlier widens its group's scale
    m = quant.get("wint2")()
    assert m.quantizes_on_device                         # on by default since the H100 run
    p = m.quantize(fake_cp.asarray(w))
    assert FakeDevArray.gets == 0
    assert all(isinstance(a, FakeDevArray) for a in p.arrays.values())
    ref = m.quantize(w)
    for k, a in ref.arrays.items():
        assert p.arrays[k].dtype == a.dtype and p.arrays[k].get().tobytes() == a.tobytes(), k
    h = m.quantize(fake_cp.asarray(w), hessian=np.eye(300, dtype=np.float32))   # GPTQ order: on the host
    assert all(isinstance(a, np.ndarray) for a in h.arrays.values())


@pytest.mark.gpu
def test_wint2_device_quantization_on_the_gpu():
    """On a real GPU the codeword distances come from cuBLAS, so near-ties may resolve differently from the host:
    the codes agree almost everywhere and the reconstruction error is the host's."""
    cp = pytest.importorskip("cupy")
    rng = np.random.default_rng(9)
    w = rng.standard_normal((256, 1024)).astype(np.float32)
    m = quant.get("wint2")()
    dev, host = m.quantize(cp.asarray(w)), m.quantize(w)
    assert all(isinstance(a, cp.ndarray) for a in dev.arrays.values())
    same = (dev.arrays["quant_weight"].get() == host.arrays["quant_weight"]).mean()
    err_dev = np.linalg.norm(m.dequantize(dev, cp).get() - w) / np.linalg.norm(w)
    err_host = np.linalg.norm(m.dequantize(host) - w) / np.linalg.norm(w)
    assert same > 0.99 and err_dev < err_host * 1.01 + 1e-6, (same, err_dev, err_host)
