"""Shared launcher checks: every error quotes the numbers at fault."""
from __future__ import annotations

import functools

import ml_dtypes
import numpy as np

BF16 = np.dtype(ml_dtypes.bfloat16)


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def expect(a, name: str, dtype, ndim: int) -> None:
    check(hasattr(a, "data") and hasattr(a, "device"), f"{name}: expected a cupy array, got {type(a).__name__}")
    check(a.dtype == np.dtype(dtype), f"{name}: dtype {a.dtype}, expected {np.dtype(dtype)}")
    check(a.ndim == ndim, f"{name}: {a.ndim}-D with shape {a.shape}, expected {ndim}-D")
    check(a.flags.c_contiguous, f"{name}: shape {a.shape} strides {a.strides} is not C-contiguous")


def mmax(M: int) -> int:
    for m in (1, 4, 8, 16):
        if M <= m:
            return m
    raise ValueError(f"decode GEMV takes M <= 16 rows, got M = {M} (use the prefill GEMM)")


def grid_for(N: int, warps: int = 8, rows: int = 4) -> int:
    # enough blocks to cover every row once, capped so each SM gets a few resident blocks
    return max(1, min(-(-N // (warps * rows)), 132 * 16))


@functools.lru_cache(maxsize=None)
def _null(device_id: int):
    import cupy as cp  # noqa: PLC0415

    with cp.cuda.Device(device_id):
        return cp.zeros(1, np.float32)       # stands for an absent pointer argument; never read


COUNTERS = 1 << 16     # arrival counters per (device, stream): mma_sk's output tiles, attention's (row, kv head)
_counters: dict = {}


def counters():
    """Zeroed int32 counters for the current device and stream (two streams' launches must not share them).
    Kernels that count arrivals in them leave them zero again, so the next launch, or graph replay, reuses them;
    kernels of one stream run one after the other (a PDL launch touches them only after pdl_wait)."""
    import cupy as cp  # noqa: PLC0415

    key = (cp.cuda.Device().id, cp.cuda.get_current_stream().ptr)
    if key not in _counters:
        # from the default pool even inside a CUDA-graph runner's private allocator: they outlive any one model
        # (a later stream may reuse this handle), and a runner's pool is freed with it
        with cp.cuda.using_allocator(cp.get_default_memory_pool().malloc):
            _counters[key] = cp.zeros(COUNTERS, np.int32)
    return _counters[key]


@functools.lru_cache(maxsize=None)
def sms(device_id: int) -> int:
    """The device's multiprocessor count (grid sizing: mma_sk's split plan, attention's splits)."""
    import cupy as cp  # noqa: PLC0415

    return cp.cuda.Device(device_id).attributes["MultiProcessorCount"]


@functools.lru_cache(maxsize=None)
def smem_optin(device_id: int) -> int:
    """Bytes of shared memory a block may opt into on the device (H100: 227 KiB, A100: 163, sm_89: 99)."""
    import cupy as cp  # noqa: PLC0415

    return cp.cuda.Device(device_id).attributes["MaxSharedMemoryPerBlockOptin"]


def ptr(a):
    """a, or for None a valid never-read device pointer (kernels take every pointer argument)."""
    import cupy as cp  # noqa: PLC0415

    return _null(cp.cuda.Device().id) if a is None else a


# --- programmatic dependent launch (PDL) ------------------------------------------------------------------
# A kernel launched with PDL may start while the kernel before it on the stream is still running: its blocks
# are scheduled once every block of that kernel has run `griddepcontrol.launch_dependents` (common.cuh:
# pdl_launch), and its own `griddepcontrol.wait` (pdl_wait) blocks until that kernel has finished and its
# writes are visible. A decode step is ~10 short kernels per layer; with PDL each one's launch and ramp-up (and
# a GEMV's first weight loads, which depend on nothing) overlap the tail of the one before. Only kernels that
# call pdl_wait before touching anything an earlier kernel writes (or reads) may be launched this way: the
# launchers pass pdl=True for exactly those. CuPy has no launch attributes, so these go through the driver's
# cuLaunchKernelEx; stream capture records them as programmatic edges of the CUDA graph.
# FDLITE_PDL=0 turns it off (every kernel then launches the plain way, and pdl_wait returns at once).

_CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 6


def _pdl_types():
    import ctypes  # noqa: PLC0415

    class Value(ctypes.Union):
        _fields_ = [("pad", ctypes.c_char * 64), ("allowed", ctypes.c_int)]

    class Attribute(ctypes.Structure):
        _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", Value)]

    class Config(ctypes.Structure):
        _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3), ("shared", ctypes.c_uint),
                    ("stream", ctypes.c_void_p), ("attrs", ctypes.POINTER(Attribute)), ("nattrs", ctypes.c_uint)]

    return Attribute, Config


@functools.lru_cache(maxsize=None)
def _driver():
    """(cuLaunchKernelEx, Config, the PDL attribute) or None where the driver lacks it."""
    import ctypes  # noqa: PLC0415

    try:
        lib = ctypes.CDLL("libcuda.so.1")
        fn = lib.cuLaunchKernelEx
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    Attribute, Config = _pdl_types()
    attr = Attribute()
    attr.id = _CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
    attr.value.allowed = 1
    return fn, Config, attr


@functools.lru_cache(maxsize=None)
def _pdl_device(device_id: int) -> bool:
    import cupy as cp  # noqa: PLC0415

    return int(cp.cuda.Device(device_id).compute_capability) >= 90 and _driver() is not None


def pdl_enabled() -> bool:
    """Whether launch(..., pdl=True) uses PDL here: sm_90 or newer, a driver with cuLaunchKernelEx, and
    FDLITE_PDL not "0"."""
    import os  # noqa: PLC0415

    import cupy as cp  # noqa: PLC0415

    return os.environ.get("FDLITE_PDL", "1") != "0" and _pdl_device(cp.cuda.Device().id)


def _c_args(args):
    import ctypes  # noqa: PLC0415

    out = []
    for i, a in enumerate(args):
        if hasattr(a, "data") and hasattr(a.data, "ptr"):
            out.append(ctypes.c_void_p(a.data.ptr))
        elif isinstance(a, np.int32):
            out.append(ctypes.c_int32(int(a)))
        elif isinstance(a, np.uint32):
            out.append(ctypes.c_uint32(int(a)))
        elif isinstance(a, np.int64):
            out.append(ctypes.c_int64(int(a)))
        elif isinstance(a, np.uint64):
            out.append(ctypes.c_uint64(int(a)))
        elif isinstance(a, np.float32):
            out.append(ctypes.c_float(float(a)))
        else:
            raise TypeError(f"kernel argument {i} is a {type(a).__name__}: launch() takes cupy arrays and NumPy "
                            f"int32 / uint32 / int64 / uint64 / float32 scalars")
    return out


def launch(fn, grid, block, args, shared_mem: int = 0, pdl: bool = False) -> None:
    """fn(grid, block, args, shared_mem=...) for a compiled cupy Function, with PDL when ``pdl`` and
    pdl_enabled() (the kernel must call pdl_wait first, see above)."""
    if not (pdl and pdl_enabled()):
        fn(grid, block, args, shared_mem=shared_mem)
        return
    import ctypes  # noqa: PLC0415

    import cupy as cp  # noqa: PLC0415

    cu_launch, Config, attr = _driver()
    grid, block = tuple(grid) + (1,) * (3 - len(grid)), tuple(block) + (1,) * (3 - len(block))
    vals = _c_args(args)
    params = (ctypes.c_void_p * max(len(vals), 1))(*[ctypes.addressof(v) for v in vals])
    cfg = Config((ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), shared_mem,
                 cp.cuda.get_current_stream().ptr, ctypes.pointer(attr), 1)
    func = fn.kernel if hasattr(fn, "kernel") else fn        # RawKernel (RawModule.get_function) -> its Function
    rc = cu_launch(ctypes.addressof(cfg), func.ptr, params, None)
    if rc != 0:
        raise RuntimeError(f"cuLaunchKernelEx failed with CUresult {rc} (grid {grid}, block {block}, "
                           f"{shared_mem} bytes of shared memory); FDLITE_PDL=0 launches without PDL")
