"""NcclComm: the Communicator (fdlite/parallel/comm.py) over NCCL, one GPU per rank, through ``cupy.cuda.nccl``.

GPU-only module: cupy is imported inside the functions, so importing fdlite.parallel never needs it.

* ``NCCL_NVLS_ENABLE=0`` is set before NCCL reads its environment (the first ``get_unique_id`` or
  communicator in the process): NVLink multicast stays off on the shared machines.
* Rank 0 makes the id (``unique_id()``) and sends it to the workers over the spawn pipe; every rank then
  builds ``NcclCommunicator(world, uid, rank)`` on its device (the call blocks until all ranks joined).
* Every collective is enqueued on the *current* stream and returns without a host sync, so it may sit in a
  captured CUDA graph (NCCL >= 2.9 supports capture): ``all_reduce_sum`` works in place; ``all_gather``
  writes into ``out=`` when given (a capture must not allocate new memory from the driver).
"""
from __future__ import annotations

import os
import pickle

import numpy as np

from .comm import CommError, Communicator


def _nccl():
    os.environ["NCCL_NVLS_ENABLE"] = "0"        # before NCCL initialises: multicast off (see module doc)
    from cupy.cuda import nccl  # noqa: PLC0415 - GPU only

    return nccl


def unique_id() -> tuple:
    """Rank 0: a new NCCL id (a tuple of 128 ints, picklable: it travels over the spawn pipe)."""
    return _nccl().get_unique_id()


def _dtype_code(nccl, dtype) -> int:
    import ml_dtypes  # noqa: PLC0415

    table = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float16): nccl.NCCL_FLOAT16,
             np.dtype(ml_dtypes.bfloat16): getattr(nccl, "NCCL_BFLOAT16", 9),     # ncclBfloat16 = 9
             np.dtype(np.int32): nccl.NCCL_INT32, np.dtype(np.int64): nccl.NCCL_INT64,
             np.dtype(np.uint8): nccl.NCCL_UINT8, np.dtype(np.float64): nccl.NCCL_FLOAT64}
    code = table.get(np.dtype(dtype))
    if code is None:
        raise CommError(f"NCCL collectives take {sorted(str(d) for d in table)}, got dtype {dtype}")
    return code


class NcclComm(Communicator):
    """One rank of an NCCL group; arrays are CuPy arrays on this rank's device."""

    def __init__(self, rank: int, world: int, uid: tuple, device_id: int):
        import cupy  # noqa: PLC0415 - GPU only

        self._nccl, self._cp = _nccl(), cupy
        self.rank, self.world, self.device_id = rank, world, device_id
        cupy.cuda.Device(device_id).use()
        self._comm = self._nccl.NcclCommunicator(world, uid, rank)      # blocks until every rank joined

    def _stream(self) -> int:
        return self._cp.cuda.get_current_stream().ptr

    def _check(self, a):
        if not a.flags.c_contiguous:
            raise CommError(f"NCCL needs C-contiguous arrays, got shape {a.shape} strides {a.strides}")
        return _dtype_code(self._nccl, a.dtype)

    def all_reduce_sum(self, a):
        """In place on a (C-contiguous CuPy array): the sum over ranks."""
        code = self._check(a)
        self._comm.allReduce(a.data.ptr, a.data.ptr, a.size, code, self._nccl.NCCL_SUM, self._stream())
        return a

    def all_gather(self, a, axis: int = 0, out=None):
        """Equal-shaped a from every rank concatenated along axis. out: (world, *a.shape) preallocated
        (graph capture); the result along another axis than 0 is a copy made from it."""
        code = self._check(a)
        cp = self._cp
        buf = out if out is not None else cp.empty((self.world,) + a.shape, a.dtype)    # (world, *a.shape)
        if buf.shape != (self.world,) + a.shape or buf.dtype != a.dtype or not buf.flags.c_contiguous:
            raise CommError(f"all_gather out must be a contiguous {(self.world,) + a.shape} {a.dtype} array, "
                            f"got {buf.shape} {buf.dtype}")
        self._comm.allGather(a.data.ptr, buf.data.ptr, a.size, code, self._stream())
        if a.ndim == 0:
            return buf
        axis = axis % a.ndim
        if axis == 0:
            return buf.reshape((self.world * a.shape[0],) + a.shape[1:])
        return cp.concatenate([buf[r] for r in range(self.world)], axis=axis)

    def broadcast(self, a, root: int = 0):
        code = self._check(a)
        self._comm.bcast(a.data.ptr, a.size, code, root, self._stream())
        return a

    def broadcast_object(self, obj, root: int = 0):
        cp = self._cp
        data = np.frombuffer(pickle.dumps(obj), np.uint8) if self.rank == root else None
        n = self.broadcast(cp.asarray([0 if data is None else data.size], np.int64), root)
        buf = cp.asarray(data) if data is not None else cp.empty(int(n.get()[0]), np.uint8)
        buf = self.broadcast(buf, root)
        return obj if self.rank == root else pickle.loads(buf.get().tobytes())

    def barrier(self) -> None:
        self.all_reduce_sum(self._cp.zeros(1, np.int32))
        self._cp.cuda.get_current_stream().synchronize()

    def abort(self) -> None:
        """ncclCommAbort: pending collectives on every rank return with an error instead of waiting."""
        if self._comm is not None:
            self._comm.abort()

    def close(self) -> None:
        if self._comm is not None:
            self._comm.destroy()
            self._comm = None
