"""mix_quant: a different method per role (spec §3.4, FastDeploy MixQuantConfig).

Keys: dense_quant_type (required: every non-MoE linear: attn_qkv, attn_o, mlp_gate_up, mlp_down, and the lm_head
when quantize_lm_head is set), moe_quant_type (routed experts, roles moe_gate_up / moe_down; defaults to
dense_quant_type so dense models need not name it), image_moe_quant_type (accepted for VL configs; no fdlite
architecture tags image experts, so it is unused). Each *_quant_type is a method name or a dict of that method's
options ({"quantization": "wint4", "group_size": 64}); "bf16"/"dense" keeps that role unquantized. Other keys
(e.g. group_size) are passed to every sub-method whose constructor takes them.
kv_cache_quant_type and the other KV keys are read by fdlite.quant_config (they choose the KV format).
There is no packed layout of its own: each linear is packed by the method of its role (Packed.method says which).
"""
from __future__ import annotations

import inspect

from ..errors import ConfigError
from .base import QuantMethod

_UNQUANTIZED = ("bf16", "dense", "none", None)


def _sub(key: str, spec, shared: dict) -> QuantMethod | None:
    from . import get  # noqa: PLC0415 - the package imports this module lazily

    if isinstance(spec, dict):
        spec = dict(spec)
        name = spec.pop("quantization", None) or spec.pop("quant_type", None)
        opts = spec
    else:
        name, opts = spec, {}
    if name in _UNQUANTIZED:
        return None
    if not isinstance(name, str) or name == "mix_quant":
        raise ConfigError(f"mix_quant: {key}={spec!r} must name a weight method (e.g. 'wint8') or be a dict with "
                          "a 'quantization' key")
    cls = get(name)
    takes = inspect.signature(cls.__init__).parameters
    extra = {k: v for k, v in shared.items() if k in takes}
    return cls(**{**extra, **opts})


class Method(QuantMethod):
    name = "mix_quant"

    def __init__(self, dense_quant_type=None, moe_quant_type=None, image_moe_quant_type=None, **shared):
        if dense_quant_type is None:
            raise ConfigError("mix_quant: the key 'dense_quant_type' is required (e.g. \"wint8\"; \"bf16\" keeps "
                              "dense linears unquantized)")
        self.spec = {"dense_quant_type": dense_quant_type, "moe_quant_type": moe_quant_type or dense_quant_type,
                     **({"image_moe_quant_type": image_moe_quant_type} if image_moe_quant_type else {}), **shared}
        self.dense = _sub("dense_quant_type", dense_quant_type, shared)
        self.moe = _sub("moe_quant_type", moe_quant_type or dense_quant_type, shared)
        used = {k for m in (self.dense, self.moe) if m is not None for k in inspect.signature(type(m).__init__)
                .parameters}
        unused = sorted(set(shared) - used)
        if unused:
            raise ConfigError(f"mix_quant: unknown key(s) {', '.join(map(repr, unused))}: no sub-method takes them")
        self.needs_calibration = any(m is not None and m.needs_calibration for m in (self.dense, self.moe))

    def config(self) -> dict:
        return {"quantization": self.name, **self.spec}

    def for_layer(self, role, name):
        if role.startswith("moe_"):
            return self.moe
        if role == "lm_head":
            return self.dense if self.quantize_lm_head else None
        return self.dense

    def quantize(self, w, what: str = "weight"):
        raise ConfigError(f"mix_quant quantizes per role: {what} must go through for_layer(role, name)")
