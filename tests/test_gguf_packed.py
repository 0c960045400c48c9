"""GGUF Q8_0 / Q4_0 linears load packed (wint8 / wint4, groups of 32) and give the dequantize-at-load logits.

The GGUF files are written here with the gguf package (GGUFWriter + gguf.quants.quantize) from the tiny HF llama
fixture, Q/K rows permuted as llama.cpp's converter does.
"""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fdlite import Model
from fdlite.errors import CheckpointError
from fdlite.quant import _gpu, get
from fdlite.quant.base import Linear
from fdlite.weights.gguf import BLOCK_BYTES, GGUFCheckpoint, decode_blocks
from fdlite.weights.safetensors import SafetensorsFile

from conftest import FIXTURES

LLAMA = FIXTURES / "hf" / "llama"
IDS = np.arange(3, 40) % 250
T = gguf.GGMLQuantizationType
_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
          "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down",
          "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def _permute(w, n_head):
    """llama.cpp's convert_hf_to_gguf permute (the inverse of fdlite.weights.gguf._unpermute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, types=None, default="Q8_0", dequantized=False):
    """The llama fixture as a GGUF file: linear weights as types.get(proj or "lm_head", default), other tensors
    F32. dequantized=True writes every tensor as F32 holding the quantized values (the float reference)."""
    cfg = json.loads((LLAMA / "config.json").read_text())
    src = SafetensorsFile(LLAMA / "model.safetensors")
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    for k in sorted(src.keys()):
        a = np.asarray(src.get(k), np.float32)
        parts = k.split(".")
        if k.startswith("model.layers."):
            kind = parts[-2]
            name = f"blk.{parts[2]}.{_NAMES[kind]}.weight"
        else:
            kind = {"lm_head.weight": "lm_head"}.get(k, "")
            name = {"lm_head.weight": "output.weight", "model.embed_tokens.weight": "token_embd.weight",
                    "model.norm.weight": "output_norm.weight"}[k]
        if kind in ("q_proj", "k_proj"):
            a = _permute(a, cfg["num_attention_heads"] if kind == "q_proj" else cfg["num_key_value_heads"])
        qtype = (types or {}).get(kind, default) if kind.endswith("_proj") or kind == "lm_head" else "F32"
        if qtype == "F32":
            w.add_tensor(name, a)
            continue
        raw = gguf.quants.quantize(a, T[qtype])
        if dequantized:
            w.add_tensor(name, gguf.quants.dequantize(raw, T[qtype]).reshape(a.shape).astype(np.float32))
        else:
            w.add_tensor(name, raw, raw_dtype=T[qtype])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def linears(model):
    layer = model.params["layers"][0]
    return {k: layer[k] for k in ("wqkv", "wo", "w13", "w2")} | {"lm_head": model.params["lm_head"]}


# ------------------------------------------------------------------------------------------ block decoding

@st.composite
def raw_blocks(draw, qtype):
    """(N, G, bytes) random Q8_0 / Q4_0 blocks with finite fp16 scales (any sign, subnormals included)."""
    n, g = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    b = rng.integers(0, 256, (n, g, BLOCK_BYTES[qtype]), dtype=np.uint8)
    d = rng.integers(0, 2**16, (n, g), dtype=np.uint16).view(np.float16)
    d = np.where(np.isfinite(d), d, np.float16(draw(st.sampled_from([0.0, -0.0, 1e-3, 65504.0]))))
    b[..., :2] = d.astype("<f2").view(np.uint8).reshape(n, g, 2)
    return b


@pytest.mark.parametrize("qtype, method", [("Q8_0", "wint8"), ("Q4_0", "wint4"), ("Q4_0", "wint8")])
@given(data=st.data())
def test_decoded_blocks_dequantize_as_gguf_bit_for_bit(qtype, method, data):
    b = data.draw(raw_blocks(qtype))
    n, g, _ = b.shape
    q, s = decode_blocks(b, qtype)
    assert q.dtype == np.int8 and q.shape == (n, 32 * g) and s.dtype == np.float32 and s.shape == (n, g)
    if qtype == "Q4_0":
        assert q.min() >= -8 and q.max() <= 7
    m = get(method)(group_size=32)
    p = m.pack(q, s, (n, 32 * g))
    want = gguf.quants.dequantize(b.reshape(n, -1), T[qtype]).reshape(n, 32 * g)
    np.testing.assert_array_equal(m.dequantize(p).view(np.uint32), want.view(np.uint32))


def test_codes_are_unpermuted_rows_of_codes_and_scales(tmp_path):
    g = GGUFCheckpoint(write_gguf(tmp_path / "m.gguf", {"k_proj": "Q4_0"}))
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight",
                 "model.layers.0.mlp.down_proj.weight"):
        q, s = g.codes(name)
        w = (q.reshape(q.shape[0], -1, 32) * s[..., None]).reshape(q.shape)
        np.testing.assert_array_equal(w, g.get(name))
    with pytest.raises(CheckpointError, match=r"output_norm\.weight.*not a 2-D Q8_0 / Q4_0"):
        g.codes("model.norm.weight")


# ------------------------------------------------------------------------------------------ Model.load

@pytest.mark.parametrize("qtype, method", [("Q8_0", "wint8"), ("Q4_0", "wint4")])
def test_load_keeps_linears_packed_with_dequantized_logits(tmp_path, qtype, method, monkeypatch):
    read = []
    get_float = GGUFCheckpoint.get
    monkeypatch.setattr(GGUFCheckpoint, "get", lambda self, name: read.append(name) or get_float(self, name))
    packed = Model.load(write_gguf(tmp_path / "q.gguf", default=qtype), device="cpu")
    assert [n for n in read if n.endswith("_proj.weight")] == []           # packed linears: no float detour
    monkeypatch.undo()
    ref = Model.load(write_gguf(tmp_path / "f.gguf", default=qtype, dequantized=True), device="cpu")
    for key, lin in linears(packed).items():
        assert isinstance(lin, Linear)
        if key == "lm_head":                         # FastDeploy's rule: the lm_head stays dense by default
            assert lin.packed.method == "dense"
            continue
        N, K = lin.shape
        assert lin.packed.method == method and lin.packed.meta == {"group_size": 32}
        assert lin.packed.arrays["weight_scale"].shape == (N, K // 32)
        assert lin.packed.arrays["quant_weight"].shape == (N, K if method == "wint8" else K // 2)
    np.testing.assert_array_equal(packed.logits(IDS), ref.logits(IDS))
    dense_bytes = sum(lin.nbytes for k, lin in linears(ref).items() if k != "lm_head")
    packed_bytes = sum(lin.nbytes for k, lin in linears(packed).items() if k != "lm_head")
    assert packed_bytes < dense_bytes * (0.3 if method == "wint8" else 0.17)
    assert packed.memory_report()["weights_bytes"] < ref.memory_report()["weights_bytes"]


def test_mixed_types_per_linear(tmp_path):
    """q/v Q4_0 + k Q8_0 fuse into wint8 (Q4_0 codes widened, exactly); gate Q4_0 + up F16 and a Q4_1 down_proj
    keep the dequantize-at-load path; o_proj Q4_0 -> wint4."""
    types = {"q_proj": "Q4_0", "k_proj": "Q8_0", "v_proj": "Q4_0", "o_proj": "Q4_0", "gate_proj": "Q4_0",
             "up_proj": "F16", "down_proj": "Q4_1", "lm_head": "Q8_0"}
    packed = Model.load(write_gguf(tmp_path / "q.gguf", types), device="cpu")
    ref = Model.load(write_gguf(tmp_path / "f.gguf", types, dequantized=True), device="cpu")
    got = {k: lin.packed.method for k, lin in linears(packed).items()}
    assert got == {"wqkv": "wint8", "wo": "wint4", "w13": "dense", "w2": "dense", "lm_head": "dense"}
    np.testing.assert_array_equal(packed.logits(IDS), ref.logits(IDS))


def test_quantize_lm_head_keeps_a_q8_0_head_packed(tmp_path):
    path = write_gguf(tmp_path / "q.gguf")
    packed = Model.load(path, device="cpu", quantize_lm_head=True)
    head = packed.params["lm_head"].packed
    assert head.method == "wint8" and head.meta == {"group_size": 32}
    ref = Model.load(write_gguf(tmp_path / "f.gguf", dequantized=True), device="cpu")
    np.testing.assert_array_equal(packed.logits(IDS), ref.logits(IDS))


def test_explicit_quantization_requantizes_from_float(tmp_path):
    q = Model.load(write_gguf(tmp_path / "q.gguf", default="Q4_0"), device="cpu", quantization="wint8")
    f = Model.load(write_gguf(tmp_path / "f.gguf", default="Q4_0", dequantized=True), device="cpu",
                   quantization="wint8")
    assert q.params["layers"][0]["wqkv"].packed.arrays["weight_scale"].shape == (128, 1)    # per channel
    np.testing.assert_array_equal(q.logits(IDS), f.logits(IDS))
    dense = Model.load(tmp_path / "q.gguf", device="cpu", quantization="dense")
    assert all(lin.packed.method == "dense" for lin in linears(dense).values())


def test_non_finite_block_scale_names_the_tensor(tmp_path):
    path = write_gguf(tmp_path / "q.gguf")
    g = GGUFCheckpoint(path)
    t = g._tensors["model.layers.1.mlp.down_proj.weight"]
    offset = g._reader.data_offset + t.data_offset
    g.close()
    with open(path, "r+b") as f:                      # first block's scale d := +inf (fp16 0x7c00)
        f.seek(offset)
        f.write(np.float16(np.inf).astype("<f2").tobytes())
    with pytest.raises(CheckpointError, match=r"blk\.1\.ffn_down\.weight.*non-finite block scale inf"):
        Model.load(path, device="cpu")


# ------------------------------------------------------------------------------------------ wint8 groups

def test_wint8_groups_of_32_and_gpu_claims():
    w = np.random.default_rng(0).standard_normal((48, 96)).astype(np.float32)
    m = get("wint8")(group_size=32)
    p = m.quantize(w)
    assert p.arrays["quant_weight"].dtype == np.int8 and p.arrays["weight_scale"].shape == (48, 3)
    assert np.abs(m.dequantize(p) - w).max() <= m.error_bound(w)
    # the int8 kernels are per channel: group-wise int8 runs the reference formula on the GPU
    assert not _gpu.grouped_supported(m, p)
    assert _gpu.grouped_supported(get("wint4")(group_size=32), get("wint4")(group_size=32).quantize(w))
