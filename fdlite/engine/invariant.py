"""Batch-invariant reference numerics: a token's result never depends on what else shares its forward step.

Why: BLAS picks its kernel, blocking and K-split from the GEMM's shape. With OpenBLAS, row 0 of ``X[:M] @ W``
differs in the last bits between M = 1 (GEMV) and M >= 2, and for small K x N between many values of M; NumPy's
pairwise ``sum`` groups differently for different lengths. So the same prompt, batched with different
requests (different M, different padding of the attention grid, different prefill chunks), would produce
slightly different logits, and sometimes a different greedy token. Here every reduction a row takes part in
runs on a fixed shape, in a fixed order, whatever the batch:

* Linears (``TiledLinear``): every row is multiplied on its own, as a (1, K) GEMM: the input goes to the
  method as (M, 1, K), which NumPy's matmul runs as M separate one-row products. One row is the only tile
  that costs a single sequence nothing (a padded 16-row GEMM costs ~14x a GEMV at M = 1, measured); the price
  is the weight reuse of batched GEMMs: SmolLM2 at 32 sequences decodes 2.4x fewer tokens/s (BENCHMARKS.md;
  ``Model.load(batch_invariant=False)`` opts out). A method whose matmul only takes 2-D input gets its rows one
  call at a time. Only the engine's forward is tiled (``runner``); ``Model.logits``/``perplexity`` keep full
  GEMMs.
* Attention (``attention``, same contract as ``ops.attention``): queries are cut into tiles of ``Q_TILE`` rows,
  keys into blocks of ``KEY_BLOCK`` positions counted from position 0. Scores and P @ V are GEMMs of one fixed
  shape per (query tile, key block); the softmax denominator and the output are summed over key blocks
  left to right. Blocks a query cannot see add exact zeros, so neither the batch's longest context (the
  padding of the key axis) nor the chunk a query arrived in changes its result. The softmax max is exact.

The math is unchanged (fp32 throughout; differences from ``ops.attention`` are rounding, ~1e-7). Quantization
methods whose activation scale spans several rows (a per-tensor dynamic scale) are batch-dependent by
definition and stay so; per-token and weight-only methods are invariant. MoE routers multiply outside a
Linear and are not covered.
"""
from __future__ import annotations

import threading

import numpy as np

from ..quant.base import Linear

Q_TILE = 1          # queries per attention tile (GEMM rows = Q_TILE * heads per KV head)
KEY_BLOCK = 64      # keys per attention block
_MAX_SCORES = 1 << 24   # score elements per query-tile group (64 MB of fp32), to bound memory


_ON = threading.local()      # set while the engine's forward runs (``runner``)
_ROWS_3D: dict[type, bool] = {}   # method class -> its matmul takes (M, 1, K) input


class TiledLinear(Linear):
    """A Linear that multiplies each row alone inside the engine (see the module docstring)."""

    __slots__ = ()

    def __call__(self, x):
        if not getattr(_ON, "active", False) or self.xp is not np:
            return Linear.__call__(self, x)
        M = x.shape[0]
        kind = type(self.method)
        if _ROWS_3D.get(kind, True):
            try:
                return Linear.__call__(self, x[:, None, :]).reshape(M, -1)           # (M, 1, N) -> (M, N)
            except (ValueError, TypeError):   # e.g. an activation quantizer that unpacks (M, K)
                _ROWS_3D[kind] = False
        return np.concatenate([Linear.__call__(self, x[i:i + 1]) for i in range(M)])


def tile_linears(tree):
    """Replace every Linear in a params tree (dicts, lists, plain objects) by a TiledLinear, in place."""
    def conv(v):
        if type(v) is Linear:
            return TiledLinear(v.method, v.packed, v.bias, v.xp)
        tile_linears(v)
        return v

    if isinstance(tree, dict):
        for k, v in tree.items():
            tree[k] = conv(v)
    elif isinstance(tree, list):
        tree[:] = [conv(v) for v in tree]
    elif hasattr(tree, "__dict__") and type(tree).__module__.startswith("fdlite"):
        for k, v in vars(tree).items():
            setattr(tree, k, conv(v))
    return tree


def attention(q, k, v, q_pos, kv_len, window, scale: float, xp):
    """Batch-invariant causal GQA attention; arguments and result as ``ops.attention``:
    q (B, Tq, H, D), k/v (B, L, Hkv, D), q_pos (B, Tq), kv_len (B,) -> (B, Tq, H, D) in q's dtype."""
    B, Tq, H, D = q.shape
    L, Hkv = k.shape[1], k.shape[2]
    g, nq, nk = H // Hkv, -(-Tq // Q_TILE), -(-L // KEY_BLOCK)
    f32 = xp.float32
    qp = xp.zeros((B, nq * Q_TILE, H, D), f32)
    qp[:, :Tq] = q
    pos = np.full((B, nq * Q_TILE), -1, np.int64)            # padded queries see no key: output 0, dropped
    pos[:, :Tq] = np.asarray(q_pos if not hasattr(q_pos, "get") else q_pos.get())
    if L % KEY_BLOCK:
        kp = xp.zeros((B, nk * KEY_BLOCK, Hkv, D), f32)
        vp = xp.zeros((B, nk * KEY_BLOCK, Hkv, D), f32)
        kp[:, :L], vp[:, :L] = k, v
    else:
        kp, vp = xp.ascontiguousarray(k, f32), xp.ascontiguousarray(v, f32)
    qh = qp.reshape(B, nq, Q_TILE, Hkv, g, D).transpose(0, 1, 3, 4, 2, 5)     # (B, nq, Hkv, g, Qt, D)
    qh = xp.ascontiguousarray(qh).reshape(B, nq, 1, Hkv, g * Q_TILE, D)        # (B, nq, 1, Hkv, g*Qt, D)
    kh = kp.reshape(B, 1, nk, KEY_BLOCK, Hkv, D).transpose(0, 1, 2, 4, 5, 3)   # (B, 1, nk, Hkv, D, Kb) view
    vh = vp.reshape(B, 1, nk, KEY_BLOCK, Hkv, D).transpose(0, 1, 2, 4, 3, 5)   # (B, 1, nk, Hkv, Kb, D) view
    j = xp.arange(nk * KEY_BLOCK).reshape(1, 1, nk, 1, 1, KEY_BLOCK)
    lens = xp.asarray(kv_len).reshape(B, 1, 1, 1, 1, 1)
    step = max(1, _MAX_SCORES // max(1, B * H * Q_TILE * nk * KEY_BLOCK))     # query tiles per group
    outs = []
    for t0 in range(0, nq, step):
        t1 = min(nq, t0 + step)
        p = xp.asarray(np.tile(pos[:, t0 * Q_TILE:t1 * Q_TILE].reshape(B, t1 - t0, 1, Q_TILE), (1, 1, g, 1)))
        p = p.reshape(B, t1 - t0, 1, 1, g * Q_TILE, 1)                          # row r -> query r % Qt
        s = (qh[:, t0:t1] @ kh) * np.float32(scale)                             # (B, nt, nk, Hkv, g*Qt, Kb)
        ok = (j <= p) & (j < lens)
        if window:
            ok &= j > p - window
        s = xp.where(ok, s, np.float32(-np.inf))
        m = s.max(axis=(2, 5), keepdims=True)                                   # exact, order-free
        m = xp.where(xp.isfinite(m), m, np.float32(0))
        e = xp.exp(s - m)
        lb = e.sum(axis=-1)                                                     # (B, nt, nk, Hkv, g*Qt)
        ob = e @ vh                                                             # (B, nt, nk, Hkv, g*Qt, D)
        den, o = lb[:, :, 0], ob[:, :, 0]
        for b in range(1, nk):                                                  # fixed left-to-right order
            den, o = den + lb[:, :, b], o + ob[:, :, b]
        outs.append(o / xp.where(den > 0, den, np.float32(1))[..., None])     # (B, nt, Hkv, g*Qt, D)
    o = outs[0] if len(outs) == 1 else xp.concatenate(outs, axis=1)            # (B, nq, Hkv, g*Qt, D)
    o = o.reshape(B, nq, Hkv, g, Q_TILE, D).transpose(0, 1, 4, 2, 3, 5)        # (B, nq, Qt, Hkv, g, D)
    return o.reshape(B, nq * Q_TILE, H, D)[:, :Tq].astype(q.dtype, copy=False)


def _openblas_threads():
    """(get, set) of the OpenBLAS thread count NumPy uses, found among the loaded libraries; None if absent."""
    import ctypes  # noqa: PLC0415

    try:
        with open("/proc/self/maps") as f:
            libs = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line})
    except OSError:
        return None
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("scipy_openblas_{}_num_threads64_", "openblas_{}_num_threads64_", "openblas_{}_num_threads"):
            get, put = getattr(lib, name.format("get"), None), getattr(lib, name.format("set"), None)
            if get is not None and put is not None:
                put.argtypes = [ctypes.c_int]
                return get, put
    return None


_BLAS = _openblas_threads()


def runner(run):
    """Wrap the engine's runner: TiledLinear tiles during its forward (and only then), and OpenBLAS runs on
    one thread meanwhile. Thousands of one-row products each handing work to a second BLAS thread cost more
    in wake-ups than they gain (on a loaded 2-core machine a 480-row layer took 0.72 s instead of 0.09 s).
    The setting is process-wide: another thread's NumPy work also runs on one BLAS thread during a step."""
    def run_invariant(ids, meta):
        threads = _BLAS[0]() if _BLAS else 1
        if threads > 1:
            _BLAS[1](1)
        _ON.active = True
        try:
            return run(ids, meta)
        finally:
            _ON.active = False
            if threads > 1:
                _BLAS[1](threads)

    run_invariant.__wrapped__ = run
    return run_invariant


def apply(model) -> None:
    """Make a CPU model's engine path batch-invariant: per-row linears and invariant attention."""
    tile_linears(model.params)
    model.cache.attention = attention
    model.engine.runner = runner(model.engine.runner)


def disable(model) -> None:
    """Model.load(batch_invariant=False): full-batch GEMMs and ops.attention in the engine (faster at large
    batches, ~2.4x for SmolLM2 at 32 sequences; BENCHMARKS.md), outputs then depend on the batch in the last bits."""
    run = model.engine.runner
    model.engine.runner = getattr(run, "__wrapped__", run)
    model.cache.attention = type(model.cache).attention
