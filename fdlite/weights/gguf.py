"""GGUF files through the ``gguf`` package: metadata -> HF config dict, tensors -> HF names (float32).

llama.cpp stores Q and K projection rows of ``llama`` models permuted for its interleaved RoPE
(convert_hf_to_gguf's ``permute``); we undo it per head so the HF half-split RoPE applies.
``get`` dequantizes any tensor type the ``gguf`` package knows (F16, Q4_1, K-quants, ...) to float32.
``codes`` reads the two symmetric block types as they are, for Model.load to keep them packed (fdlite.offline):
    Q8_0  34 bytes per 32 weights: d (fp16, little-endian) then 32 int8 q;            w = d * q
    Q4_0  18 bytes per 32 weights: d (fp16) then 16 bytes, byte j = weight j (low nibble) and weight j + 16
          (high nibble), unsigned 0..15;                                             w = d * (nibble - 8)
-> codes int8 (N, K) (Q4_0: -8..7) and scales float32 (N, K / 32): fdlite's wint8 / wint4 layouts with groups
of 32 (fdlite/quant/_grouped.py), whose dequantize (codes as float32 times scale) is gguf's, bit for bit.
The Q/K un-permute is a row permutation, applied to whole rows of blocks (codes and scales together).
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
BLOCK = 32                                       # weights per Q8_0 / Q4_0 block (one scale each)
BLOCK_BYTES = {"Q8_0": 2 + BLOCK, "Q4_0": 2 + BLOCK // 2}


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


def decode_blocks(blocks: np.ndarray, qtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw blocks uint8 (N, G, BLOCK_BYTES[qtype]) of a Q8_0 / Q4_0 tensor -> codes int8 (N, 32 G) and scales
    float32 (N, G), w[n, 32 j + i] = codes[n, 32 j + i] * scales[n, j]."""
    N, G, _ = blocks.shape
    d = np.ascontiguousarray(blocks[..., :2]).view("<f2")[..., 0].astype(np.float32)     # (N, G)
    body = blocks[..., 2:]                                                                # (N, G, 32 | 16)
    if qtype == "Q8_0":
        q = body.view(np.int8)
    elif qtype == "Q4_0":
        q = np.concatenate([body & 0xF, body >> 4], axis=-1).astype(np.int8) - np.int8(8)  # (N, G, 32)
    else:
        raise ValueError(f"decode_blocks: {qtype!r} is not Q8_0 or Q4_0")
    return q.reshape(N, G * BLOCK), d


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

    def qtype(self, name) -> str:
        """The GGML type name of a tensor ("F32", "Q8_0", "Q4_K", ...)."""
        return self._tensors[name].tensor_type.name

    def _tensor(self, name):
        t = self._tensors.get(name)
        if t is None:
            raise CheckpointError(f"{self.path}: tensor {name!r} is missing from the GGUF file")
        return t

    def _rows(self, name, a: np.ndarray) -> np.ndarray:
        """Undo llama.cpp's Q/K row permutation (rows = axis 0; any trailing axes move with their row)."""
        if self._permuted and name.endswith(("q_proj.weight", "k_proj.weight", "q_proj.bias", "k_proj.bias")):
            kv = name.split(".")[-2] == "k_proj"
            a = _unpermute(a, self.config["num_key_value_heads"] if kv else self.config["num_attention_heads"])
        return a

    def get(self, name) -> np.ndarray:
        import gguf  # noqa: PLC0415

        t = self._tensor(name)
        try:
            w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        except Exception as e:
            raise CheckpointError(f"{self.path}: cannot decode tensor {t.name!r} of type {t.tensor_type.name} "
                                  f"({type(e).__name__}: {e})") from None
        return self._rows(name, w.reshape(self.shape(name)))

    def codes(self, name) -> tuple[np.ndarray, np.ndarray]:
        """A 2-D Q8_0 / Q4_0 tensor, without dequantizing: (codes int8 (N, K), scales float32 (N, K / 32))."""
        t = self._tensor(name)
        kind, shape = t.tensor_type.name, self.shape(name)
        if kind not in BLOCK_BYTES or len(shape) != 2:
            raise CheckpointError(f"{self.path}: tensor {t.name!r} ({kind}, shape {list(shape)}) is not a 2-D "
                                  "Q8_0 / Q4_0 tensor")
        N, K = shape
        blocks = np.asarray(t.data).view(np.uint8).reshape(N, K // BLOCK, BLOCK_BYTES[kind])   # (N, G, bytes)
        q, s = decode_blocks(self._rows(name, blocks), kind)
        if not np.isfinite(s).all():
            n, j = np.argwhere(~np.isfinite(s))[0]
            raise CheckpointError(f"{self.path}: tensor {t.name!r} ({kind}) has a non-finite block scale "
                                  f"{s[n, j]} (row {n}, block {j})")
        return q, s

    def close(self):
        self._tensors = {}
        self._reader = None
