"""Preset model configs for ``Model.from_config`` (random weights: benchmarks need shapes, not weights).

Each preset is an HF ``config.json`` dict. ERNIE-4.5 numbers are fastdeploy-spec §7.1 (the 300B column is marked
unverified there against the real config.json); ``moe_layer_end_index: -1`` means "the last layer" (the spec's
27 of 28 and 53 of 54), so ``num_hidden_layers`` overrides keep every layer from the start index on MoE.
Llama-3-8B is Meta's published config (the shapes of fastdeploy-spec's companion peer-anchors.md §0).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib

from .config import ModelConfig
from .errors import InputError

_ERNIE = {"vocab_size": 103424, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "hidden_act": "silu",
          "use_bias": False, "rope_theta": 500000.0, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
          "initializer_range": 0.02, "torch_dtype": "bfloat16"}

PRESETS: dict[str, dict] = {
    "llama-3-8b": {
        "architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False,
        "attention_bias": False, "mlp_bias": False, "bos_token_id": 128000, "eos_token_id": 128001,
        "initializer_range": 0.02, "torch_dtype": "bfloat16"},
    "ernie-4.5-0.3b": {
        **_ERNIE, "architectures": ["Ernie4_5ForCausalLM"], "hidden_size": 1024, "intermediate_size": 3072,
        "num_hidden_layers": 18, "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 128,
        "tie_word_embeddings": True},
    "ernie-4.5-21b-a3b": {
        **_ERNIE, "architectures": ["Ernie4_5_MoeForCausalLM"], "hidden_size": 2560, "intermediate_size": 12288,
        "num_hidden_layers": 28, "num_attention_heads": 20, "num_key_value_heads": 4, "head_dim": 128,
        "tie_word_embeddings": True, "moe_num_experts": 64, "moe_k": 6, "moe_intermediate_size": 1536,
        "moe_num_shared_experts": 2, "moe_layer_start_index": 1, "moe_layer_end_index": -1,
        "moe_layer_interval": 1, "moe_norm_min": 1e-12},
    "ernie-4.5-300b-a47b": {
        **_ERNIE, "architectures": ["Ernie4_5_MoeForCausalLM"], "hidden_size": 8192, "intermediate_size": 28672,
        "num_hidden_layers": 54, "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 128,
        "tie_word_embeddings": False, "moe_num_experts": 64, "moe_k": 8, "moe_intermediate_size": 3584,
        "moe_num_shared_experts": 0, "moe_layer_start_index": 3, "moe_layer_end_index": -1,
        "moe_layer_interval": 1, "moe_norm_min": 1e-12},
}

# Keys an override may add although the base config lacks them (read by fdlite.config or a family).
_KNOWN = {f.name for f in dataclasses.fields(ModelConfig)} | {
    "architectures", "head_dim", "rope_theta", "rope_parameters", "rope_scaling", "eos_token_id", "bos_token_id",
    "pad_token_id", "use_sliding_window", "max_window_layers", "use_bias", "dtype", "hidden_act",
    *(k for p in PRESETS.values() for k in p)}


def resolve(name_or_config, overrides: dict) -> tuple[dict, str]:
    """-> (HF config dict with the overrides applied, a description for error messages)."""
    if isinstance(name_or_config, str):
        if name_or_config not in PRESETS:
            raise InputError(f"unknown model config {name_or_config!r}; presets: {', '.join(PRESETS)} (or pass an "
                             "HF config.json dict)")
        base, source = copy.deepcopy(PRESETS[name_or_config]), f"preset {name_or_config!r}"
    elif isinstance(name_or_config, dict):
        base, source = copy.deepcopy(name_or_config), "config dict"
    else:
        raise InputError(f"from_config takes a preset name ({', '.join(PRESETS)}) or an HF config dict, got "
                         f"{type(name_or_config).__name__}")
    for key in overrides:
        if key not in base and key not in _KNOWN:
            near = difflib.get_close_matches(key, sorted(_KNOWN | set(base)), n=1)
            raise InputError(f"override {key}={overrides[key]!r} is not a config key of {source}"
                             + (f"; did you mean {near[0]!r}?" if near else ""))
    base.update(overrides)
    return base, source + (f" with {', '.join(f'{k}={v!r}' for k, v in overrides.items())}" if overrides else "")
