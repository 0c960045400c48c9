"""Random weights under Hugging Face tensor names, for ``Model.from_config`` (benchmarks need shapes, not weights).

``RandomWeights(cfg, backend, seed)`` reads like a checkpoint's tensor source (keys / shape / dtype / get / source /
close), so every family's ``load_params`` runs unchanged. As transformers' ``_init_weights``: linear weights and
embeddings ~ normal(0, initializer_range), RMSNorm weights 1, biases 0, ERNIE's correction bias 0; the MoE router
weight is fp32, everything else is the backend's compute dtype (float32 on the CPU, bf16 on the GPU).

Each tensor is drawn on the backend's device (``xp.random``) from its own stream, seeded by (seed, crc32(name)),
so the same seed gives the same weights on the same device whatever order the loader asks in.
"""
from __future__ import annotations

import zlib

import numpy as np

from . import models
from .errors import CheckpointError, ConfigError


def _llama_shapes(cfg) -> dict[str, tuple[tuple[int, ...], str]]:
    """What fdlite.models.llama.load_params reads (Llama, Mistral, Qwen2, Qwen3)."""
    H, D, V, I = cfg.hidden_size, cfg.head_dim, cfg.vocab_size, cfg.intermediate_size
    q, kv = cfg.num_attention_heads * D, cfg.num_key_value_heads * D
    out = {"model.embed_tokens.weight": ((V, H), "normal"), "model.norm.weight": ((H,), "ones")}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = out[p + "post_attention_layernorm.weight"] = ((H,), "ones")
        for n, shape in (("q", (q, H)), ("k", (kv, H)), ("v", (kv, H)), ("o", (H, q))):
            out[f"{p}self_attn.{n}_proj.weight"] = (shape, "normal")
            if (cfg.attention_bias and n != "o") or (cfg.o_bias and n == "o"):
                out[f"{p}self_attn.{n}_proj.bias"] = ((shape[0],), "zeros")
        if cfg.qk_norm:
            out[p + "self_attn.q_norm.weight"] = out[p + "self_attn.k_norm.weight"] = ((D,), "ones")
        for n, shape in (("gate", (I, H)), ("up", (I, H)), ("down", (H, I))):
            out[f"{p}mlp.{n}_proj.weight"] = (shape, "normal")
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = ((V, H), "normal")
    return out


def _shapes(cfg) -> dict[str, tuple[tuple[int, ...], str]]:
    family, _ = models.lookup(cfg.architecture)
    name = family.__name__.rsplit(".", 1)[-1]
    if name == "llama":
        return _llama_shapes(cfg)
    if name == "ernie4_5":
        return family.tensor_shapes(cfg)
    raise ConfigError(f"{cfg.architecture}: no random-weight table for the {name!r} family (add one to "
                      "fdlite/random_weights.py)")


class RandomWeights:
    """A tensor source of random weights (see the module docstring)."""

    def __init__(self, cfg, backend, seed: int = 0):
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"seed={seed!r} must be a non-negative integer")
        self.cfg, self.backend, self.seed = cfg, backend, int(seed)
        self.std = float(cfg.initializer_range)
        if not self.std > 0:
            raise ConfigError(f"initializer_range = {cfg.initializer_range} must be > 0")
        self._table = _shapes(cfg)
        self._last: tuple[str, object] | None = None   # a tied embedding is read twice in a row: draw it once

    def keys(self):
        return self._table.keys()

    def __contains__(self, name) -> bool:
        return name in self._table

    def shape(self, name: str) -> tuple[int, ...]:
        return self._table[name][0]

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(np.float32) if self._table[name][1].endswith("_fp32") else self.backend.compute_dtype

    def source(self, name: str) -> str:
        return f"random weights (seed {self.seed})"

    def get(self, name: str):
        if name not in self._table:
            raise CheckpointError(f"random weights: no tensor {name!r} for {self.cfg.architecture}")
        if self._last is not None and self._last[0] == name:
            return self._last[1]
        shape, init = self._table[name]
        xp, dt = self.backend.xp, self.dtype(name)
        if init.startswith("normal"):
            stream = int(np.random.SeedSequence([self.seed, zlib.crc32(name.encode())]).generate_state(1)[0])
            a = xp.random.default_rng(stream).standard_normal(shape, dtype=xp.float32)   # drawn on the device
            a *= np.float32(self.std)
        else:
            a = (xp.ones if init == "ones" else xp.zeros)(shape, dtype=xp.float32)
        a = a if a.dtype == dt else a.astype(dt)
        self._last = (name, a)
        return a

    def close(self) -> None:
        self._last = None
