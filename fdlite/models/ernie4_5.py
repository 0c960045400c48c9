"""ERNIE-4.5 family: Ernie4_5ForCausalLM (0.3B, dense) and Ernie4_5_MoeForCausalLM (21B-A3B, 300B-A47B).

Pre-norm decoder like Llama (fastdeploy-spec §7), except: interleaved (GPT-J) rope, pairs (2i, 2i+1), theta 5e5;
head_dim explicit (0.3B: 16 heads x 128 = 2048 != hidden 1024); optional biases (``use_bias``: q/k/v/o, MLPs,
shared experts, and the MoE model's lm_head); tied embeddings on the small models.

MoE model: layer L is MoE iff (L + 1) % moe_layer_interval == 0 and start <= L <= end (moe_layer_end_index -1 =
the last layer), else a dense SwiGLU MLP of intermediate_size. A MoE layer is a fp32 softmax router over
moe_num_experts, top-moe_k selection on p + e_score_correction_bias, weights = the un-biased p renormalised (see
fdlite/moe.py), SwiGLU experts of moe_intermediate_size, plus moe_num_shared_experts shared experts run as one
SwiGLU MLP of width moe_num_shared_experts * moe_intermediate_size on every token.

Checkpoint layouts (weights become (N, K) = (out, in) for make_linear):
* Hugging Face ("model." prefix, what transformers saves): [out, in] weights, separate q/k/v and gate/up, one tensor
  per expert ``mlp.experts.{j}.{gate,up,down}_proj.weight`` (transformers' stacked in-memory form
  ``mlp.experts.gate_up_proj`` [E, 2I, H] / ``mlp.experts.down_proj`` [E, H, I] is read too); router
  ``mlp.gate.weight`` [E, H] fp32; ``mlp.moe_statics.e_score_correction_bias`` [1, E] fp32 (also under
  ``mlp.gate.moe_statics.``; absent = no bias, as transformers' zero init).
* Paddle ("ernie." prefix, spec §7.2): [in, out] weights, fused ``self_attn.qkv_proj`` [H, (nh + 2 nkv) D] (q | k | v)
  and ``up_gate_proj`` [K, 2I] (gate | up) for MLPs and experts, router ``mlp.gate.weight`` [H, E]; transposed at
  load. Pre-quantized Paddle tensors (quant_weight, weight_scale, ...) are rejected: their kernel layouts are not
  pinned down (spec §4.1) — quantize online instead.

Quantization: ``resolve_quantization`` (fdlite.quant_config.ernie_wint4_rule) applies FastDeploy's ERNIE rule (spec §3.1.3): the 4-bit name means mix_quant with
wint8 for every dense linear (attention, dense MLPs, shared experts) and wint4 for the routed experts (roles
"moe_gate_up" / "moe_down"). The router weight never goes through make_linear: it stays dense fp32.

Params: llama's tree {"embed", "layers", "norm", "lm_head"}; a MoE layer holds "moe": fdlite.moe.MoE in place of
"w13"/"w2" (a shared-experts MLP lives inside it).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .. import moe_gpu
from ..errors import CheckpointError, ConfigError
from ..quant_config import ernie_wint4_rule
from ..moe import MoE, Experts
from .llama import TensorFetcher, mlp_block
from .llama import forward as llama_forward

_COMMON = {"rope_theta": 500000.0, "rope_interleaved": True, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
           "use_bias": False, "max_position_embeddings": 131072}
_MOE = {"moe_num_experts": 64, "moe_k": 6, "moe_intermediate_size": 1536, "moe_num_shared_experts": 2,
        "moe_layer_start_index": 1, "moe_layer_end_index": -1, "moe_layer_interval": 1, "moe_norm_min": 1e-12}
ARCHITECTURES = {  # defaults = transformers' Ernie4_5Config / Ernie4_5_MoeConfig (0.3B / 21B-A3B)
    "Ernie4_5ForCausalLM": {**_COMMON, "head_dim": 128},
    "Ernie4_5_ForCausalLM": {**_COMMON, "head_dim": 128},           # the Paddle checkpoints' spelling
    "Ernie4_5_MoeForCausalLM": {**_COMMON, **_MOE},
}
_PREQUANTIZED = (".quant_weight", ".weight_scale", ".super_scales", ".code_scale", ".code_zp", ".activation_scale")


@dataclass(frozen=True)
class MoeSettings:
    num_experts: int
    top_k: int
    intermediate_size: int
    num_shared: int
    start: int
    end: int                 # resolved: -1 became num_hidden_layers - 1
    interval: int
    norm_min: float

    def is_moe(self, layer: int) -> bool:
        return (layer + 1) % self.interval == 0 and self.start <= layer <= self.end


def moe_settings(cfg) -> MoeSettings | None:
    """The validated MoE keys of a Ernie4_5_MoeForCausalLM config (None for the dense architecture)."""
    if "Moe" not in cfg.architecture:
        return None
    raw, L, where = cfg.raw, cfg.num_hidden_layers, f"{cfg.architecture} config"

    def num(key, typ=int):
        v = raw.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (typ is int and int(v) != v):
            raise ConfigError(f"{where}: {key} = {v!r} must be a single {typ.__name__}")
        return typ(v)

    s = MoeSettings(num("moe_num_experts"), num("moe_k"), num("moe_intermediate_size"),
                    num("moe_num_shared_experts"), num("moe_layer_start_index"), num("moe_layer_end_index"),
                    num("moe_layer_interval"), num("moe_norm_min", float))
    if s.num_experts < 1 or s.intermediate_size < 1 or s.num_shared < 0 or s.norm_min <= 0:
        raise ConfigError(f"{where}: moe_num_experts = {s.num_experts} and moe_intermediate_size = "
                          f"{s.intermediate_size} must be >= 1, moe_num_shared_experts = {s.num_shared} >= 0, "
                          f"moe_norm_min = {s.norm_min} > 0")
    if not 1 <= s.top_k <= s.num_experts:
        raise ConfigError(f"{where}: moe_k = {s.top_k} must be in [1, moe_num_experts = {s.num_experts}]")
    # -1 = the last layer; an end past the last layer is only an upper bound there (as transformers and vLLM)
    end = L - 1 if s.end == -1 else min(s.end, L - 1)
    rng = (f"moe_layer_start_index = {s.start}, moe_layer_end_index = {s.end}, moe_layer_interval = {s.interval}, "
           f"num_hidden_layers = {L}")
    if s.interval < 1 or s.end < -1 or not 0 <= s.start <= end or (s.end != -1 and s.end < s.start):
        raise ConfigError(f"{where}: inconsistent MoE layer range ({rng}): need interval >= 1 and "
                          "0 <= start <= end, start < num_hidden_layers (end -1 = the last layer)")
    s = replace(s, end=end)
    if not any(s.is_moe(i) for i in range(L)):
        raise ConfigError(f"{where}: no layer is MoE with {rng} (layer L is MoE iff (L + 1) % interval == 0 "
                          "and start <= L <= end)")
    return s


# FastDeploy's ERNIE quantization rule lives with the other quantization-config rules (the forward and this
# file never name a format); the family exposes it as its resolve_quantization hook.
resolve_quantization = ernie_wint4_rule


def tensor_shapes(cfg) -> dict[str, tuple[tuple[int, ...], str]]:
    """HF-layout tensor name -> (shape, init) that load_params reads; init in {"normal", "ones", "zeros",
    "normal_fp32", "zeros_fp32"} (used by fdlite.random_weights)."""
    H, D, V, I = cfg.hidden_size, cfg.head_dim, cfg.vocab_size, cfg.intermediate_size
    q, kv, bias, moe = cfg.num_attention_heads * D, cfg.num_key_value_heads * D, bool(cfg.raw.get("use_bias")), \
        moe_settings(cfg)
    out = {"model.embed_tokens.weight": ((V, H), "normal"), "model.norm.weight": ((H,), "ones")}

    def mlp(p, inter, with_bias):
        for n, shape in (("gate_proj", (inter, H)), ("up_proj", (inter, H)), ("down_proj", (H, inter))):
            out[f"{p}{n}.weight"] = (shape, "normal")
            if with_bias:
                out[f"{p}{n}.bias"] = ((shape[0],), "zeros")

    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = out[p + "post_attention_layernorm.weight"] = ((H,), "ones")
        for n, shape in (("q", (q, H)), ("k", (kv, H)), ("v", (kv, H)), ("o", (H, q))):
            out[f"{p}self_attn.{n}_proj.weight"] = (shape, "normal")
            if bias:
                out[f"{p}self_attn.{n}_proj.bias"] = ((shape[0],), "zeros")
        if moe and moe.is_moe(i):
            out[p + "mlp.gate.weight"] = ((moe.num_experts, H), "normal_fp32")
            out[p + "mlp.moe_statics.e_score_correction_bias"] = ((1, moe.num_experts), "zeros_fp32")
            for j in range(moe.num_experts):
                mlp(f"{p}mlp.experts.{j}.", moe.intermediate_size, False)
            if moe.num_shared:
                mlp(p + "mlp.shared_experts.", moe.num_shared * moe.intermediate_size, bias)
        else:
            mlp(p + "mlp.", I, bias)
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = ((V, H), "normal")
    return out


class _Reader:
    """Reads (N, K) weights in either layout. Paddle stores [in, out] and fuses q|k|v and gate|up."""

    def __init__(self, tensors, backend):
        self.f = TensorFetcher(tensors, backend)
        self.paddle = self.f.has("ernie.embed_tokens.weight")
        self.prefix = "ernie." if self.paddle else "model."
        bad = next((n for n in tensors.keys() if n.endswith(_PREQUANTIZED)), None)
        if bad is not None:
            raise CheckpointError(f"{tensors.source(bad)}: tensor {bad!r} is a pre-quantized Paddle tensor; fdlite "
                                  "reads bf16/fp32 ERNIE checkpoints and quantizes them online (quantization=...)")

    def fused(self, hf: list[str], paddle: str, outs: list[int], k: int, bias: bool):
        """hf: names (without .weight) of the parts, concatenated along N; paddle: the fused name. -> (w, b)."""
        f = self.f
        if self.paddle:
            w = np.ascontiguousarray(f.host(paddle + ".weight", (k, sum(outs))).T)              # [in, out] -> (N, K)
            return w, f.optional(paddle + ".bias", (sum(outs),), bias)
        w = np.concatenate([f.host(n + ".weight", (o, k)) for n, o in zip(hf, outs)])           # (sum outs, K)
        bs = [f.optional(n + ".bias", (o,), bias) for n, o in zip(hf, outs)]
        if all(b is None for b in bs):
            return w, None
        xp, dt = f.backend.xp, f.backend.compute_dtype
        return w, xp.concatenate([b if b is not None else xp.zeros(o, dt) for b, o in zip(bs, outs)])

    def mlp(self, p: str, inter: int, H: int, bias: bool):
        """-> (gate_up (2I, H), its bias, down (H, I), its bias) of the SwiGLU MLP under prefix p."""
        gu, bgu = self.fused([p + "gate_proj", p + "up_proj"], p + "up_gate_proj", [inter, inter], H, bias)
        down, bd = self.fused([p + "down_proj"], p + "down_proj", [H], inter, bias)
        return gu, bgu, down, bd


def _experts(r: _Reader, p: str, s: MoeSettings, H: int, make_linear):
    I, E = s.intermediate_size, s.num_experts
    stacked = not r.paddle and r.f.has(p + "experts.gate_up_proj")     # transformers' in-memory form
    if stacked:
        gu_all, down_all = r.f.host(p + "experts.gate_up_proj", (E, 2 * I, H)), \
            r.f.host(p + "experts.down_proj", (E, H, I))
    else:
        need = [f"{p}experts.{j}.{n}.weight" for j in range(E) for n in
                (("up_gate_proj", "down_proj") if r.paddle else ("gate_proj", "up_proj", "down_proj"))]
        missing = [n for n in need if not r.f.has(n)]
        if missing:
            raise CheckpointError(f"{r.f.tensors.source(missing[0])}: expert tensor {missing[0]!r} is missing "
                                  f"({len(missing)} of the {len(need)} expert tensors of this layer are)")
    gate_up, down = [], []
    wants = getattr(make_linear, "wants", None)     # a tensor-parallel rank builds only its own experts
    for j in range(E):   # one expert at a time: only its float copy is alive while it is quantized
        if wants is not None and not wants("moe_gate_up", f"{p}experts.{j}.up_gate_proj"):
            gate_up.append(None)                    # another rank's: not read from the checkpoint (or drawn)
            down.append(None)
            continue
        gu, d = (gu_all[j], down_all[j]) if stacked else r.mlp(f"{p}experts.{j}.", I, H, False)[::2]
        gate_up.append(make_linear("moe_gate_up", f"{p}experts.{j}.up_gate_proj", gu, None))
        down.append(make_linear("moe_down", f"{p}experts.{j}.down_proj", d, None))
    return Experts(gate_up, down)


def _moe(r: _Reader, p: str, s: MoeSettings, H: int, bias: bool, make_linear, backend) -> MoE:
    f, E = r.f, s.num_experts
    router = f.host(p + "gate.weight", (H, E) if r.paddle else (E, H))
    router = backend.asarray(np.ascontiguousarray(router.T) if r.paddle else router, dtype=np.float32)  # (E, H)
    cb = next((n for n in (p + "moe_statics.e_score_correction_bias", p + "gate.moe_statics.e_score_correction_bias")
               if f.has(n)), None)
    if cb is not None and tuple(f.tensors.shape(cb)) not in ((1, E), (E,)):
        raise CheckpointError(f"{f.tensors.source(cb)}: tensor {cb!r} has shape {list(f.tensors.shape(cb))} but "
                              f"moe_num_experts = {E} needs [1, {E}]")
    corr = None if cb is None else backend.asarray(f.tensors.get(cb).reshape(E), dtype=np.float32)
    shared = None
    if s.num_shared:
        gu, bgu, down, bd = r.mlp(p + "shared_experts.", s.num_shared * s.intermediate_size, H, bias)
        shared = {"w13": make_linear("mlp_gate_up", p + "shared_experts.up_gate_proj", gu, bgu),
                  "w2": make_linear("mlp_down", p + "shared_experts.down_proj", down, bd)}
    m = MoE(router, corr, _experts(r, p, s, H, make_linear), s.top_k, s.norm_min, shared)
    m.gpu = moe_gpu.prepare(m, backend.xp) if backend.is_gpu else None    # stacked experts for fdlite_kernels/moe.cu
    return m


def load_params(cfg, tensors, make_linear, backend) -> dict:
    """make_linear(role, name, w_host (N, K), bias or None) -> Linear; role picks the quantization."""
    r, s = _Reader(tensors, backend), moe_settings(cfg)
    f, pre, bias = r.f, r.prefix, bool(cfg.raw.get("use_bias"))
    H, D, V = cfg.hidden_size, cfg.head_dim, cfg.vocab_size
    q_out, kv_out = cfg.num_attention_heads * D, cfg.num_key_value_heads * D
    layers = []
    for i in range(cfg.num_hidden_layers):
        p = f"{pre}layers.{i}."
        a = p + "self_attn."
        wqkv, bqkv = r.fused([a + "q_proj", a + "k_proj", a + "v_proj"], a + "qkv_proj", [q_out, kv_out, kv_out], H,
                             bias)
        wo, bo = r.fused([a + "o_proj"], a + "o_proj", [H], q_out, bias)
        layer = {"attn_norm": f.device(p + "input_layernorm.weight", (H,)),
                 "wqkv": make_linear("attn_qkv", a + "qkv_proj", wqkv, bqkv),
                 "wo": make_linear("attn_o", a + "o_proj", wo, bo),
                 "mlp_norm": f.device(p + "post_attention_layernorm.weight", (H,))}
        if s is not None and s.is_moe(i):
            layer["moe"] = _moe(r, p + "mlp.", s, H, bias, make_linear, backend)
        else:
            gu, bgu, down, bd = r.mlp(p + "mlp.", cfg.intermediate_size, H, bias)
            layer["w13"] = make_linear("mlp_gate_up", p + "mlp.up_gate_proj", gu, bgu)
            layer["w2"] = make_linear("mlp_down", p + "mlp.down_proj", down, bd)
        layers.append(layer)
    embed = f.host(pre + "embed_tokens.weight", (V, H))
    if cfg.tie_word_embeddings or not f.has("lm_head.weight"):
        lm_w = embed
    elif r.paddle and tuple(f.tensors.shape("lm_head.weight")) == (H, V):          # Paddle [in, out]
        lm_w = np.ascontiguousarray(f.host("lm_head.weight", (H, V)).T)
    else:
        lm_w = f.host("lm_head.weight", (V, H))
    return {"embed": f.device(pre + "embed_tokens.weight", (V, H)), "layers": layers,
            "norm": f.device(pre + "norm.weight", (H,)),
            "lm_head": make_linear("lm_head", "lm_head", lm_w, f.optional("lm_head.bias", (V,), False))}


def _ffn(lp, x, xp):
    """A dense layer's MLP or an MoE layer's experts: x (N, hidden) normed -> (N, hidden)."""
    return lp["moe"](x, xp) if "moe" in lp else mlp_block(lp, x, xp)


def forward(params, cfg, ids, meta, cache, rope, xp):
    """The Llama-family forward (pre-norm blocks, ERNIE's rope via cfg) with MoE layers where configured."""
    return llama_forward(params, cfg, ids, meta, cache, rope, xp, ffn=_ffn)
