"""The engine's GPU runner: decode steps replayed from CUDA graphs, one graph per batch-size bucket.

A decode step (every sequence brings one token) of B sequences runs the graph of the smallest bucket >= B
(1, 2, 4, 8, ..., up to max_num_seqs); rows past B are padding that writes into a scratch KV block no sequence
owns (the cache holds one block more than the block manager hands out) and whose logits are dropped. Prefill
and mixed steps run eagerly. Each launch costs the host one 4-byte-per-entry input copy and one graph launch
instead of ~10 CuPy launches per layer.

What a captured step needs, and how it gets it:
- fixed input addresses: ids, positions, slots, sequence rows and block tables live in one static int32 buffer
  per bucket (``StepMeta.device`` points into it), refilled by one host-to-device copy before each launch from
  a pinned host buffer (a true async copy) whose padding rows are rewritten only after a larger batch;
- no host work inside the forward: RoPE reads the device table by position (``Rope.step``), attention sizes
  its split grid for max_model_len, logits of every row are kept (decode wants them all);
- memory that outlives the capture: every allocation made while warming up or capturing comes from a memory
  pool owned by this runner (the graphs' private arena; graphs run one at a time on one stream, so they may
  share it), and the graph's output array stays referenced;
- capturable kernels only: fdlite's own kernels (MoE layers included: fdlite/moe_gpu.py) and CuPy elementwise
  ops. A step that needs anything else (cuBLAS through CuPy, the host-side expert counts of the grouped MoE
  fallback for expert kinds moe.cu lacks, dynamic RoPE) fails to capture; the runner logs why once and runs
  every step eagerly from then on.

Everything runs on the runner's stream; the logits it returns are made visible to the caller's stream with an
event, so the sampler may read them at once.
"""
from __future__ import annotations

import logging

import numpy as np

from ..kv.base import StepMeta

log = logging.getLogger("fdlite")

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _Graph:
    # host: the static inputs on the host, inputs: its views by name, real: rows [0, real) of host hold the last
    # step's inputs (the rest is padding), copied: recorded after the last copy from host, outs: logits[:B] by B
    __slots__ = ("bucket", "graph", "host", "inputs", "real", "copied", "static", "views", "meta", "logits",
                 "outs")


def _host_buffer(xp, n: int) -> np.ndarray:
    """n zeroed int32, page-locked where CUDA is: a copy from pageable memory is staged by the driver through
    its own pinned buffer, on the host's time, before the call returns. NumPy memory without CUDA."""
    alloc = getattr(getattr(xp, "cuda", None), "alloc_pinned_memory", None)
    if alloc is None:
        return np.zeros(n, np.int32)
    a = np.frombuffer(alloc(n * 4), np.int32, n)        # the array keeps the pinned allocation alive
    a[:] = 0
    return a


class GraphRunner:
    """runner(ids (N,), meta) -> logits (S, V) float32 on the GPU (the engine's runner on a GPU model)."""

    def __init__(self, model, enabled: bool = True, host_logits: bool = False):
        self.model = model
        self.host_logits = host_logits      # False: logits stay on the GPU for the engine's GPU sampler
        self.xp = xp = model.backend.xp
        cfg = model.config
        self.block_size = model.cache.block_size
        self.max_len = model.max_model_len
        self.max_blocks = -(-self.max_len // self.block_size)
        self._cache, self.scratch = None, None
        cap = model.engine.max_num_seqs if model.engine is not None else BUCKETS[-1]
        self.buckets = [b for b in BUCKETS if b < cap] + [next((b for b in BUCKETS if b >= cap), BUCKETS[-1])]
        self.graphs: dict[int, _Graph] = {}
        self.reason = None if enabled else "disabled (cuda_graphs=False)"
        if cfg.rope.type == "dynamic":
            self.reason = "dynamic RoPE scaling depends on each step's sequence lengths"
        self.stream = xp.cuda.Stream(non_blocking=True)
        # reused for every step's two stream handoffs: Stream.record() would create (and free) a timing event
        self._entered, self._left = xp.cuda.Event(disable_timing=True), xp.cuda.Event(disable_timing=True)
        self.pool = xp.cuda.MemoryPool()
        self.num_replays = self.num_eager = 0
        self.replayed = False               # the last __call__ ran a captured graph (the overlap starts only then)

    @property
    def enabled(self) -> bool:
        return self.reason is None

    # --- the runner ----------------------------------------------------------------------------------
    def __call__(self, ids: np.ndarray, meta: StepMeta):
        xp = self.xp
        self._entered.record(xp.cuda.get_current_stream())
        self.stream.wait_event(self._entered)                           # after whatever the caller queued
        B = meta.batch
        decode = len(ids) == B
        self._bind()
        g = self._graph_for(B) if decode else None
        if g is not None:
            out = self._replay(g, ids, meta)
            self.replayed = True
            return self._handoff(out)
        self.num_eager += 1
        self.replayed = False
        with self.stream:
            out = self._forward(xp.asarray(ids), meta)
        return self._handoff(out)

    def launch_decode(self, tokens, meta: StepMeta):
        """A decode step whose token ids are already on the GPU (``tokens``: the gpu_sampler.Pending of the step
        before, one id per row in row order in ``tokens.dev``), launched without waiting for them: the engine's
        overlapped decode (Engine.step). Returns the logits as ``__call__`` does, or None when no graph serves the
        step (the engine then goes back to plain steps)."""
        self._bind()
        g = self._graph_for(meta.batch) if meta.batch == len(tokens.dev) else None
        if g is None:
            return None
        self._entered.record(self.xp.cuda.get_current_stream())
        self.stream.wait_event(self._entered)                           # after whatever the caller queued
        self.stream.wait_event(tokens.event)    # and after the sampling that made the ids, on whichever stream it ran
        return self._handoff(self._replay(g, 0, meta, ids_dev=tokens.dev))

    def wait(self) -> None:
        """Block until everything launched on the runner's stream has finished."""
        self.stream.synchronize()

    def _bind(self) -> None:
        """Graphs hold the cache's addresses: a swapped cache (KV calibration runs on a temporary one) drops
        them. Padding rows need the scratch block past the block manager's range."""
        m = self.model
        if m.cache is not self._cache:
            self.stream.synchronize()       # no copy may still read the pinned host buffers dropped here
            self.graphs.clear()
            self._cache = m.cache
            spare = m.cache.num_blocks > m.engine.blocks.num_blocks
            self.scratch = m.cache.num_blocks - 1 if spare else None

    def _handoff(self, out):
        self._left.record(self.stream)
        self.xp.cuda.get_current_stream().wait_event(self._left)
        return out.get() if self.host_logits else out

    def _forward(self, ids_dev, meta):
        m = self.model
        return m.family.forward(m.params, m.config, ids_dev, meta, m.cache, m.rope, self.xp).astype(np.float32)

    # --- graphs --------------------------------------------------------------------------------------
    def _layout(self, bucket: int) -> dict[str, slice]:
        b, mb = bucket, self.max_blocks
        ends = np.cumsum([b, b, b, b, b * mb])
        names = ("ids", "positions", "slots", "rows", "block_tables")
        return {n: slice(int(e - w), int(e)) for n, e, w in zip(names, ends, (b, b, b, b, b * mb))}

    def _init_host(self, g: _Graph) -> None:
        """g.host (every row padding) and its views g.inputs; fed to the device by _fill and one copy a step."""
        lay = self._layout(g.bucket)
        g.host = _host_buffer(self.xp, lay["block_tables"].stop)
        g.inputs = {n: g.host[s] for n, s in lay.items()}
        g.inputs["block_tables"] = g.inputs["block_tables"].reshape(g.bucket, self.max_blocks)
        g.real = g.bucket
        self._fill(g, None, None)

    def _fill(self, g: _Graph, ids, meta: StepMeta | None) -> None:
        """Host side of the static inputs: real rows first, padding rows on the scratch block. Only rows that held
        the last step's inputs become padding again: a steady decode step writes just its own B rows."""
        h, B = g.inputs, 0 if meta is None else meta.batch
        if B < g.real:
            pad = slice(B, g.real)
            h["ids"][pad] = 0
            h["positions"][pad] = 0
            h["slots"][pad] = self.scratch * self.block_size
            h["rows"][pad] = np.arange(B, g.real)
            h["block_tables"][pad] = self.scratch
        g.real = B
        if B:
            h["ids"][:B] = ids
            h["positions"][:B] = meta.positions
            h["slots"][:B] = meta.slots
            nb = meta.block_tables.shape[1]
            h["block_tables"][:B, :nb] = meta.block_tables
            h["block_tables"][:B, nb:] = self.scratch

    def _capture(self, bucket: int) -> _Graph | None:
        xp = self.xp
        g = _Graph()
        g.bucket = bucket
        lay = self._layout(bucket)
        self._init_host(g)
        g.copied, g.outs = xp.cuda.Event(disable_timing=True), {}
        with self.stream:   # zeroed on the runner's stream: on another one the memset could land after the copy below
            g.static = xp.zeros(g.host.size, np.int32)        # default pool: lives as long as the runner
        v = {n: g.static[s] for n, s in lay.items()}
        v["block_tables"] = v["block_tables"].reshape(bucket, self.max_blocks)
        g.views = v
        g.meta = StepMeta.build([(0, 1, [self.scratch])] * bucket, self.block_size)
        g.meta.device = {"positions": v["positions"], "slots": v["slots"], "rows": v["rows"],
                         "block_tables": v["block_tables"], "max_len": self.max_len}
        try:
            with xp.cuda.using_allocator(self.pool.malloc), self.stream:
                g.static.set(g.host, stream=self.stream)
                self._forward(v["ids"], g.meta)                  # warm-up: compiles kernels, fills the pool
                self.stream.synchronize()
                self.stream.begin_capture()
                try:
                    g.logits = self._forward(v["ids"], g.meta)
                finally:
                    g.graph = self.stream.end_capture()
        except Exception as e:   # noqa: BLE001 - any capture failure means: run this model eagerly
            self.reason = f"capture failed ({type(e).__name__}: {e})"
            log.warning("fdlite: CUDA-graph decode off, steps run eagerly: %s", self.reason)
            self.stream.synchronize()
            return None
        self.graphs[bucket] = g
        log.info("fdlite: captured the decode step for batch bucket %d", bucket)
        return g

    def _graph_for(self, B: int) -> _Graph | None:
        """The graph of B's bucket (captured on first use), or None when graphs cannot serve B rows."""
        if not (self.enabled and B <= self.buckets[-1] and self.scratch is not None):
            return None
        bucket = next(b for b in self.buckets if b >= B)
        return self.graphs.get(bucket) or self._capture(bucket)

    def _replay(self, g: _Graph, ids, meta: StepMeta, ids_dev=None):
        """Refill g's static inputs (ids from the host, or from ids_dev on the device) and launch it."""
        g.copied.synchronize()          # the copy out of g.host is async: the last one must be done before a refill
        self._fill(g, ids, meta)
        g.static.set(g.host, stream=self.stream)
        B = meta.batch
        if ids_dev is not None:
            with self.stream:
                g.views["ids"][:B] = ids_dev                         # over the host copy's placeholder ids
        g.copied.record(self.stream)
        g.graph.launch(self.stream)
        self.num_replays += 1
        if B not in g.outs:             # the view is fixed (static logits): slice once per batch size
            g.outs[B] = g.logits[:B]
        return g.outs[B]
