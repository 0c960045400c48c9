"""Tensor parallelism on one host, rank 0's side: ``Model.load(..., tensor_parallel_size=N)`` lands here.

    caller (rank 0)                                   workers 1..N-1 (multiprocessing "spawn", never fork)
    ---------------                                   ---------------------------------------------------
    communicator: HostComm (CPU) / NCCL id (GPU)
    spawn N-1 workers (pipe, rank, path, kwargs) -->  join the communicator, Model.load(..., _shard=RankPlan)
    Model.load(..., _shard=RankPlan(N, 0, comm))      send "ready" (or the error)
    wait for every "ready"
    scheduler + sampler; each forward:
      Leader.forward: send ("step", ids, StepMeta, -> run the same family.forward on their shards
      cache) to every worker, then run the forward    (collectives inside the pieces: fdlite/parallel/layers.py)

Steps go over the pipes, not through a collective: an idle worker blocks on its pipe with no timeout, while
a collective gives up after a timeout. Rank 0's ``model.config`` is rank 0's shard config (its heads, I / N):
the forward and the per-rank KV cache read it. ``model._workers`` is the Group.

Failure and shutdown (no orphans, no hangs): a watcher thread aborts the communicator when a worker exits
unexpectedly, so rank 0's pending collective fails at once; the error rank 0 raises is the worker's own
(type and message, prefixed with its rank) when it sent one. A worker exits when rank 0 closes the Model, when
the Model is garbage-collected (weakref.finalize), or when rank 0 dies (its pipe hits EOF and a watchdog thread
sees the parent's sentinel). Workers are daemonic: they are also terminated when rank 0 exits normally.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
import weakref
from dataclasses import replace
from multiprocessing.connection import wait as wait_any

import numpy as np

from ..backend import get_backend
from ..engine import invariant
from ..errors import FdliteError, InputError
from .comm import CommError, HostComm
from .load import RankPlan

log = logging.getLogger("fdlite")

READY_TIMEOUT_S = 1800.0      # a worker's checkpoint load (a 300B one quantized on its host is slow)
JOIN_TIMEOUT_S = 10.0         # how long close() waits for a worker before terminating it


def load(cls, path, tp, kwargs: dict, builder: str = "load"):
    """Model.load (or Model.from_config: builder) with tensor_parallel_size=tp > 1; kwargs: its other keyword
    arguments. Every rank calls the same builder with them and its RankPlan."""
    if type(tp) is not int or tp < 1:
        raise InputError(f"tensor_parallel_size = {tp!r} must be a positive integer (1 = one process)")
    kinds = (str, os.PathLike) if builder == "load" else (str, dict)
    if not isinstance(path, kinds):
        what = "loads from a path or preset name" if builder == "load" else "builds from a preset name or config dict"
        raise InputError(f"tensor_parallel_size = {tp} {what} that every rank reads, got a {type(path).__name__}")
    backend = get_backend(kwargs["device"])
    ctx = mp.get_context("spawn")
    kwargs = dict(kwargs)
    if backend.is_gpu:
        from . import nccl  # noqa: PLC0415 - GPU only

        n, first = backend.xp.cuda.runtime.getDeviceCount(), backend.device_id
        if first + tp > n:
            raise InputError(f"tensor_parallel_size = {tp} needs {tp} GPUs (cuda:{first}..cuda:{first + tp - 1}) "
                             f"but {n} GPU(s) are visible")
        if kwargs.get("cuda_graphs"):
            log.info("fdlite: CUDA graphs are off with tensor_parallel_size = %d (collectives in graphs: not built)",
                     tp)
        kwargs["cuda_graphs"] = False
        uid, comm0 = nccl.unique_id(), None
        specs = [("nccl", uid, first + r) for r in range(tp)]
        devices = [f"cuda:{first + r}" for r in range(tp)]
    else:
        comm0 = HostComm.create(tp, ctx)
        specs, devices = [("host", comm0.spec, None)] * tp, ["cpu"] * tp
    group = Group(ctx, tp, comm0)
    try:
        group.start(path, kwargs, specs, devices, builder)
        if comm0 is None:
            from .nccl import NcclComm  # noqa: PLC0415

            group.comm = NcclComm(0, tp, uid, first)       # returns once every worker joined
        model = getattr(cls, builder)(path, **{**kwargs, "device": devices[0]}, _shard=RankPlan(tp, 0, group.comm))
        group.wait_ready()
    except BaseException:
        group.close()
        raise
    model.family = Leader(model.family, group, model)
    model._workers = group
    weakref.finalize(model, group.close)
    return model


def _portable(e: BaseException):
    """An exception that survives pickling (its own when it does)."""
    import pickle  # noqa: PLC0415

    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001 - any unpicklable exception becomes its text
        return RuntimeError(f"{type(e).__name__}: {e}")


def raised_by(rank: int, exc: BaseException, tb: str) -> BaseException:
    """A worker's exception as rank 0 raises it: fdlite errors keep their type, others become RuntimeError
    with the worker's traceback."""
    if isinstance(exc, FdliteError):
        try:
            return type(exc)(f"tensor-parallel rank {rank}: {exc}")
        except TypeError:
            pass
    return RuntimeError(f"tensor-parallel rank {rank} failed: {type(exc).__name__}: {exc}\n{tb}")


class Group:
    """Rank 0's handle on workers 1..tp-1: their processes and pipes, the communicator, step broadcast,
    failure reports and shutdown."""

    def __init__(self, ctx, tp: int, comm):
        self.ctx, self.tp, self.comm = ctx, tp, comm
        self.procs, self.conns = [], []
        self.lock = threading.RLock()        # one step (or call) at a time: the collectives pair up in order
        self.error: BaseException | None = None
        self.closed = False
        self._tokens: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()    # cache object -> int
        self._last_token = 0
        self._stop_r, self._stop_w = ctx.Pipe(duplex=False)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def start(self, path, kwargs, specs, devices, builder: str = "load") -> None:
        from .worker import main  # noqa: PLC0415

        for r in range(1, self.tp):
            mine, theirs = self.ctx.Pipe()
            p = self.ctx.Process(target=main, name=f"fdlite-tp-rank{r}", daemon=True,
                                 args=(r, self.tp, str(path) if isinstance(path, os.PathLike) else path,
                                       {**kwargs, "device": devices[r]}, specs[r], theirs, builder))
            p.start()
            theirs.close()                   # only the worker holds its end: its death is our EOF
            self.procs.append(p)
            self.conns.append(mine)
        threading.Thread(target=self._watch, name="fdlite-tp-watch", daemon=True).start()

    def _watch(self) -> None:
        """Abort the communicator when a worker exits while the group is open (rank 0 stops waiting)."""
        wait_any([p.sentinel for p in self.procs] + [self._stop_r])
        if not self.closed and self.comm is not None:
            self.comm.abort()

    # --- replies -------------------------------------------------------------------------------------
    def _reply(self, i: int, timeout: float):
        """The next message of worker i+1, or raise when it exits or stays silent past timeout."""
        conn, p = self.conns[i], self.procs[i]
        ready = wait_any([conn, p.sentinel], timeout)
        if conn in ready:
            try:
                return conn.recv()
            except (EOFError, OSError):
                pass
        p.join(1.0)
        if p.exitcode is not None:
            raise CommError(f"tensor-parallel rank {i + 1} (pid {p.pid}) exited with code {p.exitcode}")
        raise CommError(f"tensor-parallel rank {i + 1} (pid {p.pid}) did not answer within {timeout:g} s")

    def _check(self, msg, i: int):
        if msg[0] == "error":
            raise raised_by(i + 1, msg[1], msg[2])
        return msg[1]

    def wait_ready(self) -> None:
        for i in range(len(self.procs)):
            try:
                msg = self._reply(i, READY_TIMEOUT_S)
            except CommError as e:          # it died before it could report: usually the spawn bootstrap
                raise CommError(f"{e} before it reported (see its stderr). Workers start with 'spawn', which "
                                "imports the main script again: a script that loads the model must do so under "
                                "`if __name__ == '__main__':`") from None
            self._check(msg, i)

    def _fail(self, cause: BaseException) -> BaseException:
        """The group is unusable from now on: return the error to raise, the workers' own report when one came
        (a root cause before a CommError of a rank that was only released by the abort)."""
        if self.comm is not None:
            self.comm.abort()
        reports = []
        for i, conn in enumerate(self.conns):
            try:
                if conn.poll(2.0):
                    msg = conn.recv()
                    if msg[0] == "error":
                        reports.append((isinstance(msg[1], CommError), i, raised_by(i + 1, msg[1], msg[2])))
            except (EOFError, OSError):
                continue
        self.error = min(reports, key=lambda t: t[:2])[2] if reports else (self._dead() or cause)
        return self.error

    def _dead(self) -> CommError | None:
        """Which worker exited, when one did (after a kill there is no report to read)."""
        for i, p in enumerate(self.procs):
            p.join(0.5 if p.is_alive() else 0)
            if p.exitcode is not None:
                return CommError(f"tensor-parallel rank {i + 1} (pid {p.pid}) exited with code {p.exitcode}")
        return None

    def _usable(self) -> None:
        if self.closed:
            raise CommError("this tensor-parallel group is closed")
        if self.error is not None:
            raise CommError(f"this tensor-parallel group failed earlier ({self.error}); load the model again")

    # --- work ----------------------------------------------------------------------------------------
    def _token(self, cache) -> int:
        """A number naming a cache object for the workers (they keep one cache per number they see)."""
        tok = self._tokens.get(cache)
        if tok is None:
            self._last_token += 1
            tok = self._tokens[cache] = self._last_token
        return tok

    def step(self, run, ids, meta, cache, main: bool):
        """Send the step to every worker, then ``run()`` rank 0's forward; -> its result."""
        with self.lock:
            self._usable()
            host_ids = ids.get() if hasattr(ids, "get") else np.asarray(ids)
            msg = ("step", host_ids, replace(meta, device=None), self._token(cache), main, cache.num_blocks,
                   cache.block_size, bool(getattr(invariant._ON, "active", False)),
                   cache.attention is invariant.attention)
            try:
                for conn in self.conns:
                    conn.send(msg)
                return run()
            except CommError as e:
                raise self._fail(e) from None
            except (OSError, EOFError) as e:
                raise self._fail(CommError(f"a tensor-parallel worker is gone ({e})")) from None
            except BaseException:
                self._fail(CommError("rank 0 failed mid-step"))      # the workers must not wait for rank 0
                raise

    def call(self, fn, *args) -> list:
        """Run fn(worker_model, *args) on every worker (no collectives inside fn) -> their results, rank order.
        A worker's exception is raised here with its message; the group stays usable."""
        with self.lock:
            self._usable()
            for conn in self.conns:
                conn.send(("call", fn, args))
            replies = [self._reply(i, READY_TIMEOUT_S) for i in range(len(self.conns))]
            return [self._check(m, i) for i, m in enumerate(replies)]

    def close(self) -> None:
        """Stop the workers (asked, then terminated if they do not exit) and free the communicator. Idempotent."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
        self._stop_w.send(None)
        for conn in self.conns:
            try:
                conn.send(("close",))
            except (OSError, ValueError):
                pass
        for p in self.procs:
            p.join(JOIN_TIMEOUT_S)
            if p.is_alive():
                p.terminate()
                p.join(2.0)
            if p.is_alive():
                p.kill()
                p.join()
        for conn in self.conns + [self._stop_r, self._stop_w]:
            conn.close()
        if self.comm is not None:
            self.comm.close()


class Leader:
    """Rank 0's stand-in for the model family (model.family): each forward first sends the step to the
    workers; everything else is the family's."""

    def __init__(self, family, group: Group, model):
        self.family, self.group, self._model = family, group, weakref.ref(model)

    def __getattr__(self, name):
        return getattr(self.family, name)

    def forward(self, params, cfg, ids, meta, cache, rope, xp):
        model = self._model()
        main = model is not None and cache is model.cache
        return self.group.step(lambda: self.family.forward(params, cfg, ids, meta, cache, rope, xp), ids, meta,
                               cache, main)
