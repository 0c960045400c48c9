"""The ``quantization=`` argument: a method name, a dict or its JSON string, FastDeploy's ``quantization_config``
(HF ``quant_method``), or the WxAyCz naming scheme; -> (method name, params) and then the method object.

Accepted forms (spec §2, §3):
    "wint4"                                        a method file under fdlite/quant/
    {"quantization": "wint4", "group_size": -1}    or the same as a JSON string (FastDeploy's parse_quantization)
    {"quant_method": "fp8", "weight_block_size": [128, 128]}     HF / DeepSeek fp8 -> block_wise_fp8
    {"quantization": "mix_quant", "dense_quant_type": "wint8", "moe_quant_type": "wint4",
     "kv_cache_quant_type": "int8"}                              spec §3.4
    "W8A8C8", "W4A16C16", "Wfp8Afp8", "W4Afp8", "WNF4A8C8"       weights W, activations A, KV cache C;
                                                                  a bare number is an integer type, 16 = bf16
Keys that describe the checkpoint or the KV cache rather than the weight method (is_quantized,
kv_cache_quant_type, is_channel_wise, has_zero_point, is_permuted, ...) are kept in params for the loader and
removed by ``make_method``.
"""
from __future__ import annotations

import json
import logging
import re

from .errors import ConfigError, InputError
from .quant import get as get_method
from .quant.base import QuantMethod

log = logging.getLogger("fdlite")

# W part -> weight kind; A part -> activation kind; (W, A) -> (method, params)
_SCHEME_METHODS = {
    ("8", "16"): ("wint8", {}), ("4", "16"): ("wint4", {}), ("2", "16"): ("wint2", {}),
    ("8", "8"): ("w8a8", {}), ("4", "8"): ("w4a8", {}), ("4", "fp8"): ("w4afp8", {}),
    ("fp8", "fp8"): ("wfp8afp8", {}), ("fp8", "16"): ("block_wise_fp8", {"activation": "bf16"}),
    ("nf4", "16"): ("nf4", {}), ("nf4", "8"): ("nf4", {"activation": "int8"}),
}
_SCHEME_KV = {"16": "bf16", "8": "int8", "4": "int4_zp", "fp8": "float8_e4m3fn"}
_SCHEME = re.compile(r"^W(fp8|nf4|\d+)A(fp8|\d+)(?:C(fp8|\d+))?$", re.IGNORECASE)

# Keys of a quantization_config that are not options of the weight method.
CHECKPOINT_KEYS = ("is_quantized", "is_moe_quantized", "kv_cache_quant_type", "is_channel_wise",
                   "has_zero_point", "is_permuted", "hadamard_block_size", "calibration")
# Keys fdlite adds for the loader (never written to a checkpoint).
LOADER_KEYS = ("quantize_lm_head", "_hessians", "_packed")


def parse_scheme(s: str) -> dict | None:
    """'W4A8C8' -> {"quantization": "w4a8", "kv_cache_quant_type": "int8"}; None if ``s`` is no scheme."""
    m = _SCHEME.match(s.strip())
    if not m:
        return None
    w, a, c = (g.lower() if g else None for g in m.groups())
    if (w, a) not in _SCHEME_METHODS:
        valid = ", ".join(f"W{w_}A{a_}" for w_, a_ in _SCHEME_METHODS)
        raise InputError(f"quantization scheme {s!r}: weights W{w} with activations A{a} is not a method fdlite "
                         f"has; valid W/A parts: {valid} (then optionally C16, C8, C4 or Cfp8)")
    name, params = _SCHEME_METHODS[(w, a)]
    out = {"quantization": name, **params}
    if c is not None:
        if c not in _SCHEME_KV:
            raise InputError(f"quantization scheme {s!r}: KV cache C{c} is not one of C16, C8, C4, Cfp8")
        out["kv_cache_quant_type"] = _SCHEME_KV[c]
    return out


def parse(q) -> tuple[str, dict]:
    """None | name | scheme | dict | JSON string -> (method name, params). Unknown names fail here."""
    if q is None:
        return "dense", {}
    if isinstance(q, str) and q.lstrip().startswith("{"):
        try:
            q = json.loads(q)
        except json.JSONDecodeError as e:
            raise InputError(f"quantization {q!r} is not valid JSON ({e})") from None
    if isinstance(q, str):
        q = parse_scheme(q) or {"quantization": q}
    if not isinstance(q, dict):
        raise InputError(f"quantization must be a name, a dict, a JSON string or a WxAyCz scheme, got "
                         f"{type(q).__name__}")
    params = dict(q)
    name = params.pop("quantization", None)
    hf = params.pop("quant_method", None)
    if name is None and hf is not None:
        name = _from_hf(hf, params)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"quantization config {q!r} needs a 'quantization' (or 'quant_method') key naming the "
                          "method")
    get_method(name)          # an unknown name fails before any file is read, listing the valid ones
    return name, params


def _from_hf(hf: str, params: dict) -> str:
    """HF quant_method -> fdlite method (FastDeploy accepts only block-wise fp8 from torch checkpoints)."""
    if hf == "fp8":
        if "weight_block_size" not in params:
            raise ConfigError("quantization_config with quant_method 'fp8' needs 'weight_block_size' (e.g. [128, "
                              "128]); per-tensor fp8 checkpoints are not supported")
        params.pop("activation_scheme", None)
        params["is_quantized"] = params.get("is_quantized", True)   # an HF fp8 checkpoint is always quantized
        return "block_wise_fp8"
    return hf     # fdlite's own checkpoints write quant_method = quantization = the method name


def kv_choice(kv_cache: str | None, quant: tuple[str, dict]) -> str:
    """The KV format: an explicit kv_cache= wins over the scheme / config's kv_cache_quant_type (logged)."""
    named = quant[1].get("kv_cache_quant_type")
    if kv_cache is not None:
        if named is not None and named != kv_cache:
            log.warning("fdlite: kv_cache=%r overrides the quantization's KV part %r", kv_cache, named)
        return kv_cache
    return named or "bf16"


def make_method(name: str, params: dict) -> QuantMethod:
    """(name, params) -> the method object Model.load gives make_linear. Loader keys (quantize_lm_head,
    collected Hessians, a pre-quantized tensor source) wrap it in a :class:`Bound` planner."""
    params = dict(params)
    lm_head = bool(params.pop("quantize_lm_head", False))
    hessians, packed = params.pop("_hessians", None), params.pop("_packed", None)
    for k in CHECKPOINT_KEYS:
        params.pop(k, None)
    try:
        method = get_method(name)(**params)
    except TypeError as e:          # a method class with a fixed signature (e.g. dense) got an unknown key
        raise ConfigError(f"quantization {name!r}: bad options {sorted(params)} ({e})") from None
    method.quantize_lm_head = lm_head
    if hessians is None and packed is None:
        return method
    return Planner(method, hessians, packed)


class Planner(QuantMethod):
    """Routes each linear: for_layer(role, name) -> a method bound to that linear's calibration statistics
    (GPTQ) or to its packed tensors in a pre-quantized checkpoint; otherwise the plain per-role method."""

    def __init__(self, method: QuantMethod, hessians=None, packed=None):
        self.inner, self.hessians, self.packed = method, hessians, packed
        self.name, self.needs_calibration = method.name, method.needs_calibration

    def for_layer(self, role, name):
        m = self.inner.for_layer(role, name)
        if m is None:
            return None
        if self.packed is not None and self.packed.has(name):      # the checkpoint may name the method (GGUF)
            return Bound(self.packed.method(name, m), name, packed=self.packed)
        h = self.hessians.pop(name, None) if self.hessians is not None else None
        return Bound(m, name, hessian=h) if h is not None and m.needs_calibration else Bound(m, name)


class Bound(QuantMethod):
    """One linear's method: quantize uses its Hessian (GPTQ) or reads its packed tensors; the rest delegates."""

    def __init__(self, m: QuantMethod, linear: str, hessian=None, packed=None):
        self.m, self.linear, self.hessian, self.packed = m, linear, hessian, packed
        self.name = m.name

    def accepts(self, shape):
        return self.m.accepts(shape)

    @property
    def quantizes_on_device(self) -> bool:
        """Round-to-nearest only: GPTQ runs on the host, and a checkpoint's packed tensors do not read w."""
        return self.packed is None and self.hessian is None and self.m.quantizes_on_device

    def quantize(self, w):
        if self.packed is not None:
            return self.packed.packed(self.linear, self.m, tuple(w.shape))
        if self.hessian is not None:
            from .gptq import gptq_quantize  # noqa: PLC0415

            h, self.hessian = self.hessian, None         # the statistics are not kept after use
            return gptq_quantize(self.m, w, h, self.linear)
        return self.m.quantize(w) if self.m.name == "dense" else self.m.quantize(w, what=self.linear)

    def dequantize(self, p, xp=None):
        return self.m.dequantize(p, xp) if xp is not None else self.m.dequantize(p)

    def prepare(self, p, backend):
        return self.m.prepare(p, backend)

    def matmul(self, x, p, xp):
        return self.m.matmul(x, p, xp)

    def matmul_swiglu(self, x, p, xp):
        return self.m.matmul_swiglu(x, p, xp)

    def error_bound(self, w):
        return self.m.error_bound(w)


def ernie_wint4_rule(cfg, name: str, params: dict) -> tuple[str, dict]:
    """FastDeploy's ERNIE rule (PR #2664; it applies to every ERNIE architecture, the dense 0.3B included, where it
    makes every linear int8): "wint4" -> mix_quant(dense_quant_type="wint8", moe_quant_type="wint4", **params).
    Other params (e.g. group_size=-1 for FastDeploy's per-channel int4) pass through to mix_quant. The flag
    ``ernie_mix=False`` in a quantization dict keeps plain wint4 on every linear. Other names, and pre-quantized
    checkpoints (is_quantized), pass unchanged."""
    params = dict(params)
    mix = params.pop("ernie_mix", True)
    if name != "wint4" or not mix or params.get("is_quantized") or "_packed" in params:
        return name, params        # only online quantization: a pre-quantized checkpoint's layout is what it is
    return "mix_quant", {"dense_quant_type": "wint8", "moe_quant_type": "wint4", **params}
