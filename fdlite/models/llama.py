"""Llama family: Llama (and Llama 3 rope scaling), Mistral (sliding window), Qwen2 (q/k/v biases),
Qwen3 (per-head q/k RMSNorm, head_dim independent of hidden/heads).

Params are a plain tree: {"embed", "layers": [{attn_norm, wqkv, wo, [q_norm, k_norm], mlp_norm, w13, w2}],
"norm", "lm_head"}; wqkv/wo/w13/w2/lm_head are Linear objects (whatever quantization they carry).
"""
from __future__ import annotations

import numpy as np

from .. import ops
from ..errors import CheckpointError

ARCHITECTURES = {
    "LlamaForCausalLM": {},
    "MistralForCausalLM": {},
    "Qwen2ForCausalLM": {"attention_bias": True},   # q/k/v carry biases, o does not
    "Qwen3ForCausalLM": {"qk_norm": True},
}


class TensorFetcher:
    """Reads checkpoint tensors by HF name, checking shapes against the config."""

    def __init__(self, tensors, backend):
        self.tensors, self.backend = tensors, backend

    def has(self, name: str) -> bool:
        return name in self.tensors.keys()

    def host(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if not self.has(name):
            raise CheckpointError(f"{self.tensors.source(name)}: tensor {name!r} (shape {list(shape)}) is missing")
        got = tuple(self.tensors.shape(name))
        if got != tuple(shape):
            raise CheckpointError(f"{self.tensors.source(name)}: tensor {name!r} has shape {list(got)} but the "
                                  f"config needs {list(shape)}")
        return self.tensors.get(name)

    def device(self, name: str, shape: tuple[int, ...]):
        """A small tensor (norm, bias, embedding) in the compute dtype on the backend."""
        dt = self.backend.compute_dtype
        a = self.host(name, shape)
        return self.backend.asarray(a if a.dtype == dt else a.astype(dt))

    def optional(self, name: str, shape: tuple[int, ...], required: bool):
        return self.device(name, shape) if (required or self.has(name)) else None


def load_params(cfg, tensors, make_linear, backend) -> dict:
    """make_linear(role, name, w_host (N, K), bias or None) -> Linear; role picks the quantization."""
    f = TensorFetcher(tensors, backend)
    H, D, nh, nkv, inter = cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads, \
        cfg.intermediate_size
    q_out, kv_out = nh * D, nkv * D
    layers = []
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        wq, wk, wv = f.host(a + "q_proj.weight", (q_out, H)), f.host(a + "k_proj.weight", (kv_out, H)), \
            f.host(a + "v_proj.weight", (kv_out, H))
        biases = [f.optional(a + n + "_proj.bias", (o,), cfg.attention_bias) for n, o in
                  (("q", q_out), ("k", kv_out), ("v", kv_out))]
        bqkv = None if all(b is None for b in biases) else backend.xp.concatenate(
            [b if b is not None else backend.xp.zeros(o, backend.compute_dtype)
             for b, o in zip(biases, (q_out, kv_out, kv_out))])
        # q, k and v share their input: one fused GEMM (N = q_out + 2 kv_out) instead of three
        layer = {
            "attn_norm": f.device(p + "input_layernorm.weight", (H,)),
            "wqkv": make_linear("attn_qkv", a + "qkv_proj", np.concatenate([wq, wk, wv]), bqkv),
            "wo": make_linear("attn_o", a + "o_proj", f.host(a + "o_proj.weight", (H, q_out)),
                              f.optional(a + "o_proj.bias", (H,), cfg.o_bias)),
            "mlp_norm": f.device(p + "post_attention_layernorm.weight", (H,)),
            "w13": make_linear("mlp_gate_up", p + "mlp.gate_up_proj", np.concatenate(
                [f.host(p + "mlp.gate_proj.weight", (inter, H)), f.host(p + "mlp.up_proj.weight", (inter, H))]),
                None),
            "w2": make_linear("mlp_down", p + "mlp.down_proj", f.host(p + "mlp.down_proj.weight", (H, inter)), None),
        }
        if cfg.qk_norm:
            layer["q_norm"] = f.device(a + "q_norm.weight", (D,))
            layer["k_norm"] = f.device(a + "k_norm.weight", (D,))
        layers.append(layer)
    embed_host = f.host("model.embed_tokens.weight", (cfg.vocab_size, H))
    tied = cfg.tie_word_embeddings or not f.has("lm_head.weight")
    lm_w = embed_host if tied else f.host("lm_head.weight", (cfg.vocab_size, H))
    return {
        "embed": f.device("model.embed_tokens.weight", (cfg.vocab_size, H)),
        "layers": layers,
        "norm": f.device("model.norm.weight", (H,)),
        "lm_head": make_linear("lm_head", "lm_head", lm_w, None),
    }


def attention_block(lp, cfg, x, meta, cache, layer, rot, xp):
    """x: (N, hidden) normed -> (N, hidden) attention output (before the residual add).
    rot: the step's fdlite.rope.RotaryStep. The KV format owns the prologue (q/k norm, RoPE, quantize-on-write;
    one kernel on the GPU) and the attention."""
    N, nh, D = x.shape[0], cfg.num_attention_heads, cfg.head_dim
    qkv = lp["wqkv"](x)                                                        # (N, (nh + 2 nkv) D)
    q = cache.store(layer, qkv, meta, rot, cfg.rms_norm_eps, lp.get("q_norm"), lp.get("k_norm"))  # (N, nh, D)
    o = cache.attend(layer, q, meta, cfg.window(layer), D ** -0.5)             # (N, nh, D)
    return lp["wo"](o.reshape(N, nh * D))


def mlp_block(lp, x, xp):
    return lp["w2"](ops.linear_swiglu(lp["w13"], x, xp))                       # (N, I) -> (N, hidden)


def forward(params, cfg, ids, meta, cache, rope, xp, ffn=mlp_block):
    """ids: (N,) new token ids of all sequences, flattened -> (S, vocab) logits of meta.logit_rows.
    ffn(lp, x, xp): the feed-forward of a layer (families with MoE layers pass their own).
    Each residual add is fused with the norm after it (ops.add_rms_norm: one kernel on the GPU)."""
    x = params["embed"][xp.asarray(ids)]                                       # (N, hidden)
    rot = rope.step(meta, xp)
    eps, layers = cfg.rms_norm_eps, params["layers"]
    h = ops.rms_norm(x, layers[0]["attn_norm"], eps, xp)
    for i, lp in enumerate(layers):
        x, h = ops.add_rms_norm(x, attention_block(lp, cfg, h, meta, cache, i, rot, xp), lp["mlp_norm"], eps, xp)
        nxt = layers[i + 1]["attn_norm"] if i + 1 < len(layers) else params["norm"]
        x, h = ops.add_rms_norm(x, ffn(lp, h, xp), nxt, eps, xp)
    rows = meta.logit_index(xp)
    return params["lm_head"](h if rows is None else h[rows])                   # (S, vocab)
