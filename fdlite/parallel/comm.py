"""Collectives between the ranks of one tensor-parallel group: the Communicator contract and its host backend.

Every rank calls the same collectives in the same order (the forward is the same code on every rank), so a
collective is identified by its position in that sequence. Two backends:

* ``HostComm`` (here): CPU ranks in separate processes on one host, through one shared-memory buffer and a
  ``multiprocessing.Barrier``. Sums are taken in rank order on every rank, so every rank gets the same bits
  and results are reproducible run to run (NCCL's ring sums in another order: the last bits differ).
* ``NcclComm`` (fdlite/parallel/nccl.py): one GPU per rank through ``cupy.cuda.nccl``; imported only there,
  so the CPU path never imports cupy.

A peer that dies or stops answering never hangs the others forever: a HostComm wait gives up after
``timeout`` seconds, and ``abort()`` (the runtime calls it when it sees a rank exit) fails every rank's
pending and later collectives at once. Both raise ``CommError``.
"""
from __future__ import annotations

import pickle
import threading
from multiprocessing import shared_memory
from typing import NamedTuple

import numpy as np

from ..errors import FdliteError

DEFAULT_SLOT_BYTES = 4 << 20      # per rank and round: larger arrays go in chunks of this many bytes
DEFAULT_TIMEOUT_S = 60.0          # longest wait for the slowest rank inside one collective


class CommError(FdliteError, RuntimeError):
    """A collective failed: a peer died, aborted the group, or did not arrive within the timeout."""


class Communicator:
    """The collectives the tensor-parallel forward needs. ``rank`` in [0, ``world``).

    all_reduce_sum(a) -> a summed over ranks (in place when a is a writable contiguous array; use the return)
    all_gather(a, axis) -> the ranks' equal-shaped arrays concatenated along axis, in rank order
    broadcast(a, root) -> root's array on every rank (same shape and dtype everywhere; in place when it can)
    broadcast_object(obj, root) -> root's picklable object on every rank
    barrier(), abort() (fail every rank's pending and next collectives), close()
    """

    rank: int = 0
    world: int = 1

    def all_reduce_sum(self, a):
        raise NotImplementedError

    def all_gather(self, a, axis: int = 0):
        raise NotImplementedError

    def broadcast(self, a, root: int = 0):
        raise NotImplementedError

    def broadcast_object(self, obj, root: int = 0):
        raise NotImplementedError

    def barrier(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class HostCommSpec(NamedTuple):
    """What a spawned rank needs to join (picklable at spawn: the Barrier travels with the Process)."""

    name: str              # the shared-memory block
    world: int
    slot_bytes: int
    barrier: object        # multiprocessing Barrier(world)
    timeout: float


class HostComm(Communicator):
    """Host collectives over shared memory. Layout: two halves x world slots x slot_bytes.

    One round: every rank writes its bytes into its slot of half (round % 2), waits on the barrier, reads
    every slot. The next round writes the other half; the round after that may rewrite this half only once
    everybody passed the next barrier, i.e. finished reading: one barrier per round is enough."""

    def __init__(self, spec: HostCommSpec, rank: int, shm: shared_memory.SharedMemory, owner: bool):
        if not 0 <= rank < spec.world:
            raise ValueError(f"rank {rank} outside [0, {spec.world})")
        self.rank, self.world, self.spec = rank, spec.world, spec
        self._shm, self._owner = shm, owner
        self._buf = np.ndarray((2, spec.world, spec.slot_bytes), np.uint8, shm.buf)   # (half, rank, bytes)
        self._round = 0
        self._lock = threading.Lock()       # one collective at a time per rank object
        self._closed = False

    @classmethod
    def create(cls, world: int, ctx, slot_bytes: int = DEFAULT_SLOT_BYTES,
               timeout: float = DEFAULT_TIMEOUT_S) -> "HostComm":
        """Rank 0: make the buffer and the barrier (ctx: the multiprocessing context the ranks start from)."""
        slot_bytes = max(64, slot_bytes // 8 * 8)           # every slot starts 8-byte aligned
        shm = shared_memory.SharedMemory(create=True, size=2 * world * slot_bytes)
        spec = HostCommSpec(shm.name, world, slot_bytes, ctx.Barrier(world), float(timeout))
        return cls(spec, 0, shm, owner=True)

    @classmethod
    def attach(cls, spec: HostCommSpec, rank: int) -> "HostComm":
        """Ranks 1..world-1: join the buffer rank 0 made."""
        return cls(spec, rank, shared_memory.SharedMemory(name=spec.name), owner=False)

    # --- one round -----------------------------------------------------------------------------------
    def _exchange(self, payload: np.ndarray | None) -> np.ndarray:
        """Write payload (uint8, <= slot_bytes) into this rank's slot, wait for all -> (world, slot_bytes)."""
        if self._closed:
            raise CommError(f"rank {self.rank}: this communicator is closed")
        half = self._buf[self._round % 2]
        if payload is not None:
            half[self.rank, :payload.size] = payload
        try:
            self.spec.barrier.wait(self.spec.timeout)
        except threading.BrokenBarrierError:
            raise CommError(f"rank {self.rank}: collective round {self._round} failed: a rank aborted the group, "
                            f"exited, or did not arrive within {self.spec.timeout:g} s") from None
        self._round += 1
        return half

    def _chunks(self, nbytes: int, itemsize: int):
        step = self.spec.slot_bytes // itemsize * itemsize
        return [(s, min(nbytes, s + step)) for s in range(0, nbytes, step)]

    # --- collectives ---------------------------------------------------------------------------------
    def all_reduce_sum(self, a):
        """a: any shape, float32 / bfloat16 / ints -> the sum over ranks, added in rank order (the same bits
        on every rank). Written into a when it is writable and C-contiguous."""
        a = np.asarray(a)
        src = np.ascontiguousarray(a).reshape(-1)
        raw, out = src.view(np.uint8), np.empty_like(src)
        with self._lock:
            for s, e in self._chunks(raw.size, a.itemsize):
                parts = self._exchange(raw[s:e])[:, :e - s].view(a.dtype)           # (world, n)
                acc = parts[0].copy()
                for r in range(1, self.world):
                    np.add(acc, parts[r], out=acc)
                out[s // a.itemsize:e // a.itemsize] = acc
        if a.flags.writeable and a.flags.c_contiguous:
            a.reshape(-1)[:] = out
            return a
        return out.reshape(a.shape)

    def all_gather(self, a, axis: int = 0):
        """Every rank's a (the same shape on every rank) concatenated along axis, in rank order."""
        a = np.ascontiguousarray(a)
        raw = a.reshape(-1).view(np.uint8)
        got = np.empty((self.world, raw.size), np.uint8)                            # (world, bytes)
        with self._lock:
            for s, e in self._chunks(raw.size, a.itemsize):
                got[:, s:e] = self._exchange(raw[s:e])[:, :e - s]
        parts = got.view(a.dtype).reshape((self.world,) + a.shape)                   # (world, *a.shape)
        return np.concatenate(list(parts), axis=axis) if a.ndim else parts

    def broadcast(self, a, root: int = 0):
        """root's a on every rank (every rank passes an array of the same shape and dtype)."""
        a = np.asarray(a)
        dst = a if a.flags.writeable and a.flags.c_contiguous else a.copy()
        raw = dst.reshape(-1).view(np.uint8)
        with self._lock:
            for s, e in self._chunks(raw.size, 1):
                half = self._exchange(raw[s:e] if self.rank == root else None)
                if self.rank != root:
                    raw[s:e] = half[root, :e - s]
        return dst

    def broadcast_object(self, obj, root: int = 0):
        """root's picklable obj on every rank (two or more rounds: the length, then the bytes)."""
        data = np.frombuffer(pickle.dumps(obj), np.uint8) if self.rank == root else None
        n = self.broadcast(np.array([0 if data is None else data.size], np.int64), root)
        buf = self.broadcast(data if data is not None else np.empty(int(n[0]), np.uint8), root)
        return obj if self.rank == root else pickle.loads(buf.tobytes())

    def barrier(self) -> None:
        with self._lock:
            self._exchange(None)

    def abort(self) -> None:
        """Break the barrier: every rank waiting in (or later entering) a collective gets CommError."""
        self.spec.barrier.abort()

    def close(self) -> None:
        """Detach (rank 0 also removes the block). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._buf = None                    # the view must go before the mapping can close
        self._shm.close()
        if self._owner:
            try:
                self._shm.unlink()
            except FileNotFoundError:
                pass
