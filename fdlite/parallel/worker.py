"""A tensor-parallel worker process (ranks 1..N-1; fdlite/parallel/runtime.py starts them with "spawn").

``main``: join the communicator, load this rank's shards (Model.load with a RankPlan: the same loader and
the same family forward as rank 0 and as one process), report "ready", then serve rank 0's messages in order:

    ("step", ids, meta, token, main, num_blocks, block_size, tiled, invariant_attention)
        run the family's forward on this rank's shards; its logits are dropped (rank 0 samples). ``token``
        names rank 0's cache; this rank keeps its own cache of that size (the engine's and one scratch).
    ("call", fn, args)  reply fn(model, *args) (introspection; tests)
    ("close",)          close the model and exit

An exception in a step is fatal: the worker aborts the communicator (rank 0 stops waiting), sends the error
and exits with code 1. The worker also exits when rank 0 is gone: its pipe reaches EOF, and a watchdog thread
on the parent's sentinel ends the process even if it is stuck elsewhere.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import threading
import traceback
from multiprocessing.connection import wait as wait_any


def _watch_parent() -> None:
    parent = mp.parent_process()
    if parent is None:
        return

    def watch():
        wait_any([parent.sentinel])
        os._exit(3)                                          # rank 0 died: never outlive it

    threading.Thread(target=watch, name="fdlite-tp-parent", daemon=True).start()


def _join(rank: int, tp: int, spec):
    kind, arg, device = spec
    if kind == "nccl":
        from .nccl import NcclComm  # noqa: PLC0415 - GPU only

        return NcclComm(rank, tp, arg, device)
    from ..engine.invariant import _BLAS  # noqa: PLC0415
    from .comm import HostComm  # noqa: PLC0415

    if _BLAS:                       # N ranks share the host's cores: no rank oversubscribes them
        _BLAS[1](max(1, (os.cpu_count() or 1) // tp))
    return HostComm.attach(arg, rank)


def _report(conn, e: BaseException) -> None:
    from .runtime import _portable  # noqa: PLC0415

    try:
        conn.send(("error", _portable(e), traceback.format_exc()))
    except (OSError, ValueError):
        pass


def main(rank: int, tp: int, path, kwargs: dict, spec, conn, builder: str = "load") -> None:
    _watch_parent()
    comm = model = None
    try:
        comm = _join(rank, tp, spec)
        from ..model import Model  # noqa: PLC0415
        from .load import RankPlan  # noqa: PLC0415

        model = getattr(Model, builder)(path, **kwargs, _shard=RankPlan(tp, rank, comm))   # load / from_config
        conn.send(("ready", rank))
        code = _serve(model, comm, conn)
    except BaseException as e:  # noqa: BLE001 - every failure goes to rank 0
        _report(conn, e)
        code = 1
    finally:
        if model is not None:
            model.close()
        if comm is not None:
            comm.close()
    sys.exit(code)


def _serve(model, comm, conn) -> int:
    caches: dict = {}               # "main" / "scratch" -> (token, cache)
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return 0            # rank 0 is gone
            if msg[0] == "close":
                return 0
            if msg[0] == "call":
                try:
                    conn.send(("result", msg[1](model, *msg[2])))
                except BaseException as e:  # noqa: BLE001 - reported, the worker lives on
                    _report(conn, e)
                continue
            try:
                _step(model, caches, *msg[1:])
            except BaseException as e:  # noqa: BLE001 - fatal: release rank 0, then report
                comm.abort()
                _report(conn, e)
                return 1
    finally:
        for _, cache in caches.values():
            if cache is not model.cache:
                cache.close()


def _cache(model, caches: dict, token: int, main: bool, num_blocks: int, block_size: int):
    """This rank's cache for rank 0's cache ``token``: the engine's (adopted from Model.load when its size
    matches rank 0's) or the latest scratch one (Model.logits / perplexity)."""
    slot = "main" if main else "scratch"
    tok, cache = caches.get(slot) or ((None, model.cache) if main else (None, None))
    if tok == token:
        return cache
    fresh = tok is None and cache is not None and (cache.num_blocks, cache.block_size) == (num_blocks, block_size)
    if not fresh:
        if cache is not None:
            cache.close()
        cache = model._kv_format(model.config, num_blocks, block_size, model.backend, **model._kv_options)
        if main:
            model.cache = cache
    caches[slot] = (token, cache)
    return cache


def _step(model, caches, ids, meta, token, main, num_blocks, block_size, tiled, invariant_attention) -> None:
    from ..engine import invariant  # noqa: PLC0415

    cache = _cache(model, caches, token, main, num_blocks, block_size)
    if invariant_attention:         # the attention rank 0's cache runs (batch-invariant on the CPU engine)
        cache.attention = invariant.attention
    else:
        vars(cache).pop("attention", None)
    xp = model.backend.xp
    invariant._ON.active = tiled    # rank 0's engine tiles its Linears during this step: so does this rank
    try:
        model.family.forward(model.params, model.config, xp.asarray(ids), meta, cache, model.rope, xp)
    finally:
        invariant._ON.active = False
