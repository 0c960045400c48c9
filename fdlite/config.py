"""ModelConfig: the frozen, validated view of an HF ``config.json`` (GGUF metadata is first turned into one).

Architecture-specific defaults live in the architecture's module (``fdlite/models/<family>.py``,
``ARCHITECTURES[name]``); this file only knows the keys every decoder shares.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")


@dataclass(frozen=True)
class RopeConfig:
    theta: float = 10000.0
    type: str = "default"
    factor: float = 1.0
    original_max_position_embeddings: int | None = None
    low_freq_factor: float = 1.0      # llama3
    high_freq_factor: float = 4.0     # llama3
    beta_fast: float = 32.0           # yarn
    beta_slow: float = 1.0            # yarn
    attention_factor: float | None = None   # yarn (None: 0.1 * ln(factor) + 1)
    mscale: float | None = None       # yarn (deepseek-style variant)
    mscale_all_dim: float | None = None
    truncate: bool = True             # yarn: round the correction range to whole dims
    interleaved: bool = False         # GPT-J style pairs (2i, 2i+1) instead of halves (ERNIE-4.5)

    @staticmethod
    def from_hf(raw: dict, where: str) -> "RopeConfig":
        # Two spellings: transformers >= 5 writes rope_parameters={rope_type, rope_theta, ...};
        # older files have top-level rope_theta plus an optional rope_scaling dict.
        params = raw.get("rope_parameters")
        if isinstance(params, dict) and "full_attention" in params:  # per-layer-type form: take the global one
            params = params["full_attention"]
        scaling = dict(params) if isinstance(params, dict) else dict(raw.get("rope_scaling") or {})
        theta = scaling.pop("rope_theta", None)
        if theta is None:
            theta = raw.get("rope_theta", 10000.0)
        rtype = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
        if rtype not in ROPE_TYPES:
            raise ConfigError(f"{where}: rope type {rtype!r} is not supported; supported: {', '.join(ROPE_TYPES)}")
        kw: dict[str, Any] = {}
        for key in ("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor",
                    "beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim", "truncate"):
            if scaling.get(key) is not None:
                kw[key] = scaling[key]
        try:
            # rope_interleaved: set by an architecture's defaults (ERNIE-4.5), not by HF config files
            rope = RopeConfig(theta=float(theta), type=rtype, interleaved=bool(raw.get("rope_interleaved")), **kw)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: bad rope parameters {scaling!r}: {e}") from None
        if rope.theta <= 0 or rope.factor <= 0:
            raise ConfigError(f"{where}: rope theta {rope.theta} and factor {rope.factor} must be > 0")
        return rope


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope: RopeConfig
    tie_word_embeddings: bool = False
    attention_bias: bool = False        # q/k/v biases (Qwen2)
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False               # per-head RMSNorm on q and k (Qwen3)
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()   # "full_attention" | "sliding_attention" per layer
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    initializer_range: float = 0.02
    torch_dtype: str | None = None
    raw: dict = field(default_factory=dict, compare=False, repr=False)  # the whole config, for family extras

    @property
    def kv_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def context_limit(self) -> int:
        """Longest sequence the model accepts. Dynamic NTK rope exists to stretch past the trained length, so
        it is bounded only by memory there."""
        return 1 << 20 if self.rope.type == "dynamic" else self.max_position_embeddings

    def window(self, layer: int) -> int | None:
        """Sliding window of one layer (None: full attention)."""
        if self.layer_types and self.layer_types[layer] == "sliding_attention":
            return self.sliding_window
        return None

    @staticmethod
    def from_hf(raw: dict, where: str = "config.json") -> "ModelConfig":
        from .models import lookup  # noqa: PLC0415 - models import config

        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        archs = raw.get("architectures") or []
        if not archs:
            raise ConfigError(f"{where}: no 'architectures' key; cannot tell which model this is")
        family, defaults = lookup(archs[0], where)
        raw = {**defaults, **raw}

        def need(key, typ=int):
            if key not in raw or raw[key] is None:
                raise ConfigError(f"{where}: required key {key!r} is missing")
            try:
                return typ(raw[key])
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: key {key!r} = {raw[key]!r} is not a {typ.__name__}") from None

        hidden, heads, layers = need("hidden_size"), need("num_attention_heads"), need("num_hidden_layers")
        kv_heads = int(raw.get("num_key_value_heads") or heads)
        head_dim = int(raw.get("head_dim") or 0) or hidden // max(heads, 1)
        for key, v in (("hidden_size", hidden), ("num_attention_heads", heads), ("num_hidden_layers", layers),
                       ("num_key_value_heads", kv_heads), ("head_dim", head_dim)):
            if v <= 0:
                raise ConfigError(f"{where}: {key} = {v} must be positive")
        if heads % kv_heads:
            raise ConfigError(f"{where}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
        if head_dim % 2:
            raise ConfigError(f"{where}: head_dim {head_dim} must be even for rotary embeddings")
        eos = raw.get("eos_token_id")
        eos_ids = tuple(int(e) for e in (eos if isinstance(eos, list) else [eos] if eos is not None else []))
        window = raw.get("sliding_window")
        if raw.get("use_sliding_window") is False:
            window = None
        layer_types = tuple(raw.get("layer_types") or ())
        if not layer_types:
            first_sliding = int(raw.get("max_window_layers", 0)) if "use_sliding_window" in raw else 0
            layer_types = tuple("sliding_attention" if window and i >= first_sliding else "full_attention"
                                for i in range(layers))
        if len(layer_types) != layers:
            raise ConfigError(f"{where}: layer_types has {len(layer_types)} entries for {layers} layers")
        return ModelConfig(
            architecture=archs[0],
            vocab_size=need("vocab_size"),
            hidden_size=hidden,
            intermediate_size=need("intermediate_size"),
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            max_position_embeddings=int(raw.get("max_position_embeddings") or 2048),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope=RopeConfig.from_hf(raw, where),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            attention_bias=bool(raw.get("attention_bias", False)),
            o_bias=bool(raw.get("o_bias", False)),
            mlp_bias=bool(raw.get("mlp_bias", False)),
            qk_norm=bool(raw.get("qk_norm", False)),
            sliding_window=int(window) if window else None,
            layer_types=layer_types,
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=eos_ids,
            initializer_range=float(raw.get("initializer_range", 0.02)),
            torch_dtype=raw.get("torch_dtype") or raw.get("dtype"),
            raw=raw,
        )


def read_config_json(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config.json not found (an HF model directory needs one)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
