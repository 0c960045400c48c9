"""How one rank of a tensor-parallel group loads: the hook Model._build calls instead of the whole-model load.

``RankPlan(tp, rank, comm).build(...)``:

1. ``family.load_params`` on the *host* backend with a make_linear that quantizes each weight on the host and
   does not prepare it (a Packed repacked for a GPU kernel cannot be cut; docs/parallel.md section 3). Routed
   experts another rank owns are skipped before they are read (``make_linear.wants``; the name carries the expert
   index). The experts a GPU rank keeps are never cut: they are quantized on its device (random weights are drawn
   there already, ``Model.from_config``).
2. ``rank.rank_params`` cuts the rank's pieces (with the communicator: RowParallel, VocabEmbedding,
   VocabHead, all-reducing RankMoE) and ``Placement`` moves each finished piece to the rank's device
   (``method.prepare``: the repack for the GPU kernels happens on the shard). The whole host tree is dropped.
3. Static KV scales are cut to the rank's KV heads. A static KV format without scales is refused: its
   self-calibration would run the sharded model with another cache format, which the workers do not follow.

Quantize-then-cut gives exactly the single-process Packed bits per shard (cutting first would change a per-channel
scale). The price: each rank quantizes the whole dense part of the checkpoint on its host, and holds it until
the cut (its own experts only).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..backend import get_backend
from ..errors import InputError
from ..quant import get as get_method
from ..quant.base import Linear
from .experts import expert_ranges
from .rank import kv_options, rank_params

_EXPERT = re.compile(r"experts\.(\d+)\.")


class Placement:
    """Moves a rank's finished pieces onto its backend: Linears through method.prepare, arrays in the compute
    dtype (router arrays stay float32). On the CPU a copy, so no view keeps the whole host tree alive."""

    def __init__(self, backend):
        self.backend = backend

    def linear(self, lin: Linear) -> Linear:
        b = self.backend
        return Linear(lin.method, lin.method.prepare(lin.packed, b), self.array(lin.bias), b.xp)

    def array(self, a, fp32: bool = False):
        if a is None:
            return None
        dt = np.float32 if fp32 else self.backend.compute_dtype
        return self.backend.asarray(np.array(a, dtype=dt))


@dataclass
class RankPlan:
    """Passed to Model.load(_shard=...) by the runtime: rank ``rank`` of ``tp``, joined by ``comm``."""

    tp: int
    rank: int
    comm: object

    def build(self, family, cfg, tensors, method, backend, kv_format, options: dict | None):
        """-> (this rank's ModelConfig, its params tree on ``backend``, its KV options)."""
        host = get_backend("cpu")
        whole = family.load_params(cfg, tensors, self._make_linear(method, backend, cfg), host)
        rk = rank_params(whole, cfg, self.tp, self.rank, self.comm, Placement(backend))
        del whole
        opts = kv_options(kv_format, cfg, options or {}, rk.kv_heads)
        missing = [n for n in kv_format.scale_shapes(cfg) if opts.get(n) is None]
        if missing:
            raise InputError(f"kv_cache {kv_format.name!r} with tensor_parallel_size = {self.tp} needs its static "
                             f"scales {missing} from kv_scales= (a file from `fdlite calibrate`) or the checkpoint; "
                             "self-calibration runs on one process only")
        return rk.cfg, rk.params, opts

    def _make_linear(self, method, backend, cfg):
        """make_linear(role, name, w, bias) -> a host Linear, quantized, not prepared; None for another rank's
        routed expert. The method choice is _linear_factory's (fdlite/model.py)."""
        dense = get_method("dense")(dtype=backend.compute_dtype)
        E = cfg.raw.get("moe_num_experts")
        owned = expert_ranges(int(E), self.tp)[self.rank] if E else None

        def wants(role, name) -> bool:
            """False for another rank's routed expert: the family skips it before reading its tensors."""
            hit = _EXPERT.search(name) if owned and role in ("moe_gate_up", "moe_down") else None
            return not hit or owned[0] <= int(hit.group(1)) < owned[1]

        def make(role, name, w, bias):
            if not wants(role, name):
                return None                              # another rank's expert: never quantized here
            m = method.for_layer(role, name) or dense
            if not m.accepts(tuple(w.shape)):
                m = dense
            if backend.is_gpu and m.quantizes_on_device and _EXPERT.search(name) and role.startswith("moe_"):
                # a routed expert this rank keeps whole (never cut): quantized on the device, as one process
                # does; Placement.linear repacks it there. Bit-identical to the host formula (model.py).
                return Linear(m, m.quantize(backend.asarray(w)), bias, backend.xp)
            return Linear(m, m.quantize(w.get() if hasattr(w, "get") else np.asarray(w)), bias, np)   # to cut

        make.wants = wants
        return make
