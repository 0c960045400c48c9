"""GGUF files through the ``gguf`` package: metadata -> HF config dict, tensors -> HF names (float32).

llama.cpp stores Q and K projection rows of ``llama`` models permuted for its interleaved RoPE
(convert_hf_to_gguf's ``permute``); we undo it per head so the HF half-split RoPE applies.
Quantized tensors (Q8_0, Q4_0, Q4_1, K-quants, ...) are dequantized to float32 at load.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import CheckpointError, ConfigError

# GGUF general.architecture -> (HF architecture, Q/K rows permuted by the converter)
ARCHS = {"llama": ("LlamaForCausalLM", True), "mistral": ("MistralForCausalLM", True),
         "qwen2": ("Qwen2ForCausalLM", False), "qwen3": ("Qwen3ForCausalLM", False)}

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
}
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}


def hf_name(gguf_name: str) -> str | None:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    return None


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's permute: rows (head, pair, 2) -> (head, 2, pair) within each head."""
    rows = w.shape[0]
    w = w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:])
    return w.swapaxes(1, 2).reshape(rows, *w.shape[3:])


class GGUFCheckpoint:
    """Opens the file once; exposes ``metadata`` (dict), ``config`` (HF-style dict) and HF-named tensors."""

    def __init__(self, path: Path):
        import gguf  # noqa: PLC0415 - only GGUF loading needs it

        self.path = Path(path)
        try:
            self._reader = gguf.GGUFReader(str(self.path))
            self.metadata = {k: f.contents() for k, f in self._reader.fields.items()}
        except Exception as e:  # the gguf package raises ValueError/IndexError/struct errors on bad files
            raise CheckpointError(f"{self.path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
        arch = self.metadata.get("general.architecture")
        if arch not in ARCHS:
            raise ConfigError(f"{self.path}: GGUF architecture {arch!r} is not supported; supported: "
                              f"{', '.join(ARCHS)}")
        self.arch = arch
        self._tensors = {}
        for t in self._reader.tensors:
            name = hf_name(t.name)
            if name is not None:
                self._tensors[name] = t
        self.config = self._hf_config()
        self._permuted = ARCHS[arch][1]

    def _hf_config(self) -> dict:
        m, a = self.metadata, self.arch

        def get(key, default=None):
            return m.get(f"{a}.{key}", default)

        for key in ("block_count", "embedding_length", "feed_forward_length", "attention.head_count"):
            if get(key) is None:
                raise ConfigError(f"{self.path}: GGUF metadata key {a}.{key!r} is missing")
        heads = int(get("attention.head_count"))
        vocab = get("vocab_size") or len(m.get("tokenizer.ggml.tokens") or []) \
            or self._tensors["model.embed_tokens.weight"].shape[-1]
        cfg = {
            "architectures": [ARCHS[a][0]],
            "vocab_size": int(vocab),
            "hidden_size": int(get("embedding_length")),
            "intermediate_size": int(get("feed_forward_length")),
            "num_hidden_layers": int(get("block_count")),
            "num_attention_heads": heads,
            "num_key_value_heads": int(get("attention.head_count_kv", heads)),
            "max_position_embeddings": int(get("context_length", 2048)),
            "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-5)),
            "rope_theta": float(get("rope.freq_base", 10000.0)),
            "tie_word_embeddings": "lm_head.weight" not in self._tensors,
            "bos_token_id": m.get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": m.get("tokenizer.ggml.eos_token_id"),
        }
        if get("attention.key_length"):
            cfg["head_dim"] = int(get("attention.key_length"))
        if get("attention.sliding_window"):
            cfg["sliding_window"] = int(get("attention.sliding_window"))
        stype = get("rope.scaling.type")
        if stype and stype != "none":
            cfg["rope_scaling"] = {"rope_type": stype, "factor": float(get("rope.scaling.factor", 1.0))}
            if get("rope.scaling.original_context_length"):
                cfg["rope_scaling"]["original_max_position_embeddings"] = int(get("rope.scaling.original_context_length"))
        return cfg

    def keys(self):
        return self._tensors.keys()

    def __contains__(self, name):
        return name in self._tensors

    def shape(self, name):
        return tuple(int(s) for s in reversed(self._tensors[name].shape))  # GGUF lists ne0 (fastest) first

    def dtype(self, name):
        return np.dtype(np.float32)

    def source(self, name) -> str:
        return str(self.path)

    def get(self, name) -> np.ndarray:
        import gguf  # noqa: PLC0415

        t = self._tensors.get(name)
        if t is None:
            raise CheckpointError(f"{self.path}: tensor {name!r} is missing from the GGUF file")
        try:
            w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        except Exception as e:
            raise CheckpointError(f"{self.path}: cannot decode tensor {t.name!r} of type {t.tensor_type.name} "
                                  f"({type(e).__name__}: {e})") from None
        w = w.reshape(self.shape(name))
        if self._permuted and name.endswith(("q_proj.weight", "k_proj.weight", "q_proj.bias", "k_proj.bias")):
            kv = name.split(".")[-2] == "k_proj"
            w = _unpermute(w, self.config["num_key_value_heads"] if kv else self.config["num_attention_heads"])
        return w

    def close(self):
        self._tensors = {}
        self._reader = None
