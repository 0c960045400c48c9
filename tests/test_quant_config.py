"""The quantization= argument, Model.load wiring (roles, lm_head, KV from the scheme), GPTQ and offline round trips
on the tiny HF llama fixture."""
from __future__ import annotations

import json
import logging

import ml_dtypes
import numpy as np
import pytest

from fdlite import Model
from fdlite.errors import CheckpointError, ConfigError, InputError
from fdlite.gptq import gptq_quantize
from fdlite.offline import quantize_checkpoint
from fdlite.quant import get
from fdlite.quant.base import Linear
from fdlite.quant_config import kv_choice, parse, parse_scheme
from fdlite.weights.safetensors import SafetensorsFile, write_safetensors

from conftest import FIXTURES

LLAMA = FIXTURES / "hf" / "llama"
IDS = np.arange(3, 40) % 250


@pytest.mark.parametrize("scheme, want", [
    ("W8A8C8", {"quantization": "w8a8", "kv_cache_quant_type": "int8"}),
    ("W4A16C16", {"quantization": "wint4", "kv_cache_quant_type": "bf16"}),
    ("Wfp8Afp8", {"quantization": "wfp8afp8"}),
    ("W4Afp8", {"quantization": "w4afp8"}),
    ("WNF4A8C8", {"quantization": "nf4", "activation": "int8", "kv_cache_quant_type": "int8"}),
    ("w4a8c4", {"quantization": "w4a8", "kv_cache_quant_type": "int4_zp"}),
    ("W2A16", {"quantization": "wint2"}),
])
def test_scheme(scheme, want):
    assert parse_scheme(scheme) == want


def test_parse_forms():
    assert parse(None) == ("dense", {})
    assert parse("wint4") == ("wint4", {})
    assert parse('{"quantization": "wint4", "group_size": -1}') == ("wint4", {"group_size": -1})
    assert parse({"quant_method": "fp8", "weight_block_size": [128, 128], "activation_scheme": "dynamic"}) == \
        ("block_wise_fp8", {"weight_block_size": [128, 128], "is_quantized": True})
    with pytest.raises(InputError, match=r"unknown quantization 'int3'; valid: .*wint4"):
        parse("int3")
    with pytest.raises(InputError, match="not valid JSON"):
        parse('{"quantization": ')
    with pytest.raises(ConfigError, match="'quantization'"):
        parse({"group_size": 64})
    with pytest.raises(InputError, match="W3A8"):
        parse("W3A8")
    with pytest.raises(ConfigError, match="weight_block_size"):
        parse({"quant_method": "fp8"})


def test_kv_choice_explicit_wins_and_logs(caplog):
    q = parse("W8A8C8")
    assert kv_choice(None, q) == "int8"
    with caplog.at_level(logging.WARNING, logger="fdlite"):
        assert kv_choice("bf16", q) == "bf16"
    assert "overrides" in caplog.text


def _methods(model):
    lp = model.params["layers"][0]
    return {k: lp[k].packed.method for k in ("wqkv", "wo", "w13", "w2")}, model.params["lm_head"].packed.method


def test_load_scheme_picks_kv_and_methods():
    m = Model.load(LLAMA, device="cpu", quantization="W8A8C8")
    assert m.cache.name == "int8" and _methods(m) == ({k: "w8a8" for k in ("wqkv", "wo", "w13", "w2")}, "dense")
    m = Model.load(LLAMA, device="cpu", quantization="W8A8C8", kv_cache="bf16")
    assert m.cache.name == "bf16"


def test_quantize_lm_head_and_mix_quant_roles():
    m = Model.load(LLAMA, device="cpu", quantization="wint8", quantize_lm_head=True)
    assert _methods(m)[1] == "wint8"
    q = {"quantization": "mix_quant", "dense_quant_type": "wint8", "moe_quant_type": "wint4",
         "kv_cache_quant_type": "int8"}
    m = Model.load(LLAMA, device="cpu", quantization=json.dumps(q))
    assert m.cache.name == "int8" and set(_methods(m)[0].values()) == {"wint8"}
    mix = get("mix_quant")(dense_quant_type="block_wise_fp8", moe_quant_type={"quantization": "wint4",
                                                                               "group_size": 64})
    assert mix.for_layer("moe_down", "x").group_size == 64 and mix.for_layer("attn_o", "x").name == "block_wise_fp8"
    assert mix.for_layer("lm_head", "lm_head") is None
    with pytest.raises(ConfigError, match="dense_quant_type"):
        get("mix_quant")(moe_quant_type="wint4")
    with pytest.raises(ConfigError, match="'bogus'"):
        get("mix_quant")(dense_quant_type="wint8", bogus=1)


def test_packed_memory_is_real():
    dense = Model.load(LLAMA, device="cpu").memory_report()["weights_bytes"]
    w4 = Model.load(LLAMA, device="cpu", quantization="wint4").memory_report()["weights_bytes"]
    w8 = Model.load(LLAMA, device="cpu", quantization="wint8").memory_report()["weights_bytes"]
    assert w4 < w8 < dense


def test_gptq_beats_round_to_nearest_on_its_objective():
    rng = np.random.default_rng(0)
    K = 256
    X = rng.standard_normal((2000, K)) @ (np.eye(K) + 0.3 * rng.standard_normal((K, K)))
    H, w = X.T @ X, rng.standard_normal((64, K)).astype(np.float32)
    for name in ("wint4", "w4afp8", "nf4", "wint2"):
        m = get(name)()

        def loss(p):
            d = (m.dequantize(p) - w).astype(np.float64)
            return np.einsum("nk,kl,nl->", d, H, d)
        assert loss(gptq_quantize(m, w, H)) < 0.8 * loss(m.quantize(w)), name


def test_calibration_self_on_tiny_model(tmp_path, monkeypatch):
    monkeypatch.setenv("FDLITE_CACHE", str(tmp_path))
    rtn = Model.load(LLAMA, device="cpu", quantization="wint4")
    cal = Model.load(LLAMA, device="cpu", quantization="wint4", calibration="self")
    a = rtn.params["layers"][0]["w2"].packed.arrays["quant_weight"]
    b = cal.params["layers"][0]["w2"].packed.arrays["quant_weight"]
    assert a.shape == b.shape and not np.array_equal(a, b)
    with pytest.raises(InputError, match="no such file"):
        Model.load(LLAMA, device="cpu", quantization="wint4", calibration=str(tmp_path / "missing.txt"))


@pytest.mark.parametrize("q, cal", [("wint4", "self"), ("block_wise_fp8", None), ("W8A8C8", None),
                                    ({"quantization": "mix_quant", "dense_quant_type": "nf4"}, None),
                                    ("wint2", None)])
def test_offline_round_trip_identical_logits(tmp_path, monkeypatch, q, cal):
    monkeypatch.setenv("FDLITE_CACHE", str(tmp_path / "cache"))
    dst = tmp_path / "q"
    rep = quantize_checkpoint(LLAMA, dst, q, calibration=cal)
    online = Model.load(LLAMA, device="cpu", quantization=q, calibration=cal)
    offline = Model.load(dst, device="cpu")
    np.testing.assert_array_equal(offline.logits(IDS), online.logits(IDS))
    cfg = json.loads((dst / "config.json").read_text())["quantization_config"]
    assert cfg["is_quantized"] is True and cfg["quant_method"] == parse(q)[0]
    assert offline.cache.name == online.cache.name
    assert offline.memory_report()["weights_bytes"] == online.memory_report()["weights_bytes"]
    assert sum(rep["packed_bytes"].values()) > 0
    with pytest.raises(ConfigError, match="quantized with"):
        Model.load(dst, device="cpu", quantization="wint8" if parse(q)[0] != "wint8" else "wint4")


def test_offline_missing_scale_tensor_is_named(tmp_path):
    dst = tmp_path / "q"
    quantize_checkpoint(LLAMA, dst, "wint8", calibration=None)
    f = SafetensorsFile(dst / "model.safetensors")
    tensors = {k: np.array(f.get(k)) for k in f.keys() if k != "model.layers.1.mlp.down_proj.weight_scale"}
    meta = dict(f.metadata)
    f.close()
    write_safetensors(dst / "model.safetensors", tensors, meta)
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.down_proj\.weight_scale"):
        Model.load(dst, device="cpu")


def test_hf_fp8_block_checkpoint_loads_packed(tmp_path):
    """A DeepSeek-style checkpoint (quant_method fp8, weight e4m3 + weight_scale_inv per projection)."""
    src = SafetensorsFile(LLAMA / "model.safetensors")
    cfg = json.loads((LLAMA / "config.json").read_text())
    m = get("block_wise_fp8")(weight_block_size=[32, 32])
    tensors = {}
    for k in src.keys():
        a = np.array(src.get(k))
        if k.endswith("proj.weight"):
            p = m.quantize(a)
            tensors[k] = p.arrays["quant_weight"].view(ml_dtypes.float8_e4m3fn)
            tensors[k + "_scale_inv"] = p.arrays["weight_scale_inv"]
        else:
            tensors[k] = a
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "quantization_config": {
        "quant_method": "fp8", "weight_block_size": [32, 32], "activation_scheme": "dynamic"}}))
    write_safetensors(tmp_path / "model.safetensors", tensors)
    model = Model.load(tmp_path, device="cpu")
    lin = model.params["layers"][0]["wqkv"]
    assert isinstance(lin, Linear) and lin.packed.method == "block_wise_fp8"
    ref = Model.load(LLAMA, device="cpu", quantization={"quantization": "block_wise_fp8",
                                                         "weight_block_size": [32, 32]})
    np.testing.assert_array_equal(model.logits(IDS), ref.logits(IDS))
