"""Device selection: the one place (with fdlite_kernels and GPU-only modules) that imports cupy.

Every other module takes ``xp`` (numpy or cupy) from a :class:`Backend`, so the NumPy path is both the
reference and a fallback that really runs.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .errors import InputError

DEVICES = ("auto", "cpu", "cuda")


@functools.lru_cache(maxsize=1)
def _cupy():
    """cupy if it imports and sees a GPU, else None (never raises)."""
    try:
        import cupy  # noqa: PLC0415 - optional dependency, imported only here

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        return cupy
    except Exception:  # ImportError, CUDARuntimeError when no driver, ...
        return None


def cuda_available() -> bool:
    return _cupy() is not None


def array_module(a):
    """numpy, or cupy for a CuPy array: the module that owns ``a`` (cupy.get_array_module without importing
    cupy for a host array, so the CPU path runs where cupy is not installed)."""
    if not type(a).__module__.startswith("cupy"):
        return np
    import cupy  # noqa: PLC0415 - already loaded: ``a`` is one of its arrays

    return cupy


@dataclass(frozen=True)
class Backend:
    """Where arrays live and what dtype activations use there.

    name: "cpu" (NumPy, float32 activations, the reference) or "cuda" (CuPy, bf16 activations).
    """

    name: str
    device_id: int = 0

    @property
    def xp(self):
        return np if self.name == "cpu" else _cupy()

    @property
    def is_gpu(self) -> bool:
        return self.name == "cuda"

    @property
    def compute_dtype(self):
        if self.name == "cpu":
            return np.dtype(np.float32)
        import ml_dtypes  # noqa: PLC0415

        return np.dtype(ml_dtypes.bfloat16)

    def asarray(self, a, dtype=None):
        """Host or device array -> array on this backend (no copy when already there)."""
        if self.name == "cpu":
            return np.asarray(a if not hasattr(a, "get") else a.get(), dtype=dtype)
        cp = _cupy()
        with cp.cuda.Device(self.device_id):
            return cp.asarray(a, dtype=dtype)

    def to_host(self, a) -> np.ndarray:
        return a.get() if hasattr(a, "get") else np.asarray(a)

    def synchronize(self) -> None:
        if self.name == "cuda":
            _cupy().cuda.Device(self.device_id).synchronize()

    def free_memory(self) -> None:
        """Return cached device memory to the driver (after a model is closed)."""
        if self.name == "cuda":
            cp = _cupy()
            cp.get_default_memory_pool().free_all_blocks()
            cp.get_default_pinned_memory_pool().free_all_blocks()


def get_backend(device: str = "auto") -> Backend:
    """"auto" -> CUDA when cupy and a GPU are present, else the CPU; "cuda:1" picks a device."""
    if not isinstance(device, str):
        raise InputError(f"device must be a string, one of {DEVICES} (or 'cuda:N'), got {device!r}")
    name, _, idx = device.partition(":")
    if name not in DEVICES or (idx and (name != "cuda" or not idx.isdigit())):
        raise InputError(f"unknown device {device!r}; valid: {', '.join(DEVICES)}, or 'cuda:N'")
    if name == "auto":
        return Backend("cuda", 0) if cuda_available() else Backend("cpu")
    if name == "cpu":
        return Backend("cpu")
    cp = _cupy()
    if cp is None:
        raise InputError(
            f"device={device!r} but no usable GPU: install the CUDA extra (pip install 'fdlite[cuda12]' or "
            "'fdlite[cuda13]') on a machine with an NVIDIA GPU, or use device='cpu'"
        )
    n = cp.cuda.runtime.getDeviceCount()
    dev = int(idx or 0)
    if dev >= n:
        raise InputError(f"device={device!r} but only {n} GPU(s) are visible (cuda:0..cuda:{n - 1})")
    return Backend("cuda", dev)
