"""Model.from_config: random-weight models for every preset (shapes right, deterministic per seed, fast)."""
import json
import math

import numpy as np
import pytest
from conftest import FIXTURES

from fdlite import ConfigError, InputError, Model, SamplingParams, TokenizerError
from fdlite import model_configs
from fdlite.backend import get_backend
from fdlite.config import ModelConfig
from fdlite.models.ernie4_5 import moe_settings
from fdlite.random_weights import RandomWeights

SMALL = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
             head_dim=32, vocab_size=320)
MOE_SMALL = dict(moe_intermediate_size=16, moe_num_experts=8)
PRESETS = {"llama-3-8b": SMALL, "ernie-4.5-0.3b": SMALL, "ernie-4.5-21b-a3b": {**SMALL, **MOE_SMALL},
           "ernie-4.5-300b-a47b": {**SMALL, **MOE_SMALL, "num_hidden_layers": 5}}
IDS = np.arange(1, 12)[None]


def _cfg(name, **over):
    return ModelConfig.from_hf(model_configs.resolve(name, over)[0])


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_builds_with_the_right_shapes(name):
    over = PRESETS[name]
    with Model.from_config(name, device="cpu", **over) as m:
        cfg, p = m.config, m.params
        assert m.tokenizer is None and "random weights, seed 0" in m.source
        assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (64, over["num_hidden_layers"], 320)
        assert len(p["layers"]) == over["num_hidden_layers"]
        assert p["layers"][0]["wqkv"].shape == (4 * 32 + 2 * 2 * 32, 64) and p["layers"][0]["wo"].shape == (64, 128)
        assert p["lm_head"].shape == (320, 64) and p["embed"].shape == (320, 64)
        s = moe_settings(cfg)
        moe_layers = [i for i, lp in enumerate(p["layers"]) if "moe" in lp]
        if s is None:
            assert not moe_layers and p["layers"][0]["w13"].shape == (2 * 96, 64)
        else:
            want_k, start = {"ernie-4.5-21b-a3b": (6, 1), "ernie-4.5-300b-a47b": (8, 3)}[name]
            assert moe_layers == list(range(start, over["num_hidden_layers"]))        # end -1 = the last layer
            moe = p["layers"][start]["moe"]
            assert len(moe.experts) == 8 and moe.top_k == want_k and moe.router_w.shape == (8, 64)
            assert moe.experts.gate_up[0].shape == (32, 64) and moe.experts.down[7].shape == (64, 16)
            assert (moe.shared is not None) == (name == "ernie-4.5-21b-a3b")
            if moe.shared:
                assert moe.shared["w13"].shape == (2 * 2 * 16, 64)                   # 2 shared experts of 16
        assert cfg.rope.interleaved == name.startswith("ernie")
        lg = m.logits(IDS)
        assert lg.shape == (1, 11, 320) and np.isfinite(lg).all()
        out = m.generate([IDS[0].tolist()], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True),
                         use_tqdm=False)[0]
        assert len(out.outputs.token_ids) == 3


def test_same_seed_same_weights_other_seed_other_weights():
    kw = {**PRESETS["ernie-4.5-21b-a3b"], "device": "cpu"}
    with Model.from_config("ernie-4.5-21b-a3b", seed=7, **kw) as a, \
            Model.from_config("ernie-4.5-21b-a3b", seed=7, **kw) as b, \
            Model.from_config("ernie-4.5-21b-a3b", seed=8, **kw) as c:
        la, lb, lc = a.logits(IDS), b.logits(IDS), c.logits(IDS)
    np.testing.assert_array_equal(la, lb)
    assert not np.allclose(la, lc)


def test_random_weights_statistics_and_order_independence():
    cfg = _cfg("ernie-4.5-21b-a3b", **PRESETS["ernie-4.5-21b-a3b"], initializer_range=0.05)
    be = get_backend("cpu")
    r1, r2 = RandomWeights(cfg, be, seed=3), RandomWeights(cfg, be, seed=3)
    names = list(r1.keys())
    first = {n: np.array(r1.get(n)) for n in names}
    for n in reversed(names):                                   # another order, same tensors
        np.testing.assert_array_equal(r2.get(n), first[n])
    emb = first["model.embed_tokens.weight"]
    assert emb.dtype == np.float32 and abs(emb.std() - 0.05) < 0.003 and abs(emb.mean()) < 0.003
    assert (first["model.norm.weight"] == 1).all() and (first["model.layers.1.input_layernorm.weight"] == 1).all()
    assert (first["model.layers.1.mlp.moe_statics.e_score_correction_bias"] == 0).all()
    assert r1.dtype("model.layers.1.mlp.gate.weight") == np.float32
    assert not np.array_equal(first["model.layers.0.self_attn.q_proj.weight"][:16, :16],
                              first["model.layers.0.self_attn.k_proj.weight"][:16, :16])


@pytest.mark.parametrize("name, total, active", [
    ("llama-3-8b", 8_030_261_248, None),
    ("ernie-4.5-0.3b", 0.36e9, None),
    ("ernie-4.5-21b-a3b", 21.8e9, 3.35e9),
    ("ernie-4.5-300b-a47b", 299.5e9, 47.9e9),
])
def test_full_presets_have_the_published_sizes(name, total, active):
    """Counted from the tensor table (nothing is allocated): the presets are the real shapes."""
    cfg = _cfg(name)
    table = RandomWeights(cfg, get_backend("cpu")).__dict__["_table"]
    n = sum(math.prod(shape) for shape, _ in table.values())
    assert n == total if isinstance(total, int) else abs(n - total) / total < 0.01
    s = moe_settings(cfg)
    if active:
        moe_layers = sum(s.is_moe(i) for i in range(cfg.num_hidden_layers))
        act = n - moe_layers * (s.num_experts - s.top_k) * 3 * s.intermediate_size * cfg.hidden_size
        assert abs(act - active) / active < 0.01


def test_memory_report_counts_the_experts():
    over = PRESETS["ernie-4.5-21b-a3b"]
    with Model.from_config("ernie-4.5-21b-a3b", device="cpu", **over) as m:
        table = RandomWeights(m.config, get_backend("cpu")).__dict__["_table"]
        want = 4 * sum(math.prod(shape) for shape, _ in table.values())       # float32; tied embedding once
        assert m.memory_report()["weights_bytes"] == want


def test_config_dict_and_overrides():
    raw = json.loads((FIXTURES / "hf" / "ernie4_5_moe" / "config.json").read_text())
    with Model.from_config(raw, device="cpu", seed=1, moe_k=3, max_model_len=32) as m:
        assert m.params["layers"][1]["moe"].top_k == 3 and m.max_model_len == 32
        assert "config dict with moe_k=3" in m.source


def test_text_needs_a_tokenizer_ids_work():
    with Model.from_config("llama-3-8b", device="cpu", **SMALL) as m:
        with pytest.raises(TokenizerError):
            m.generate("hello", SamplingParams(max_tokens=2), use_tqdm=False)
        assert len(m.generate([[5, 6, 7]], SamplingParams(max_tokens=2, ignore_eos=True),
                              use_tqdm=False)[0].outputs.token_ids) == 2


def test_bad_from_config_input():
    with pytest.raises(InputError, match=r"unknown model config 'ernie-5'; presets: llama-3-8b, ernie-4.5-0.3b"):
        Model.from_config("ernie-5", device="cpu")
    with pytest.raises(InputError, match=r"override num_hiden_layers=4 is not a config key .* did you mean "
                                         r"'num_hidden_layers'\?"):
        Model.from_config("llama-3-8b", device="cpu", num_hiden_layers=4)
    with pytest.raises(InputError, match="preset name .* or an HF config dict, got int"):
        Model.from_config(3, device="cpu")
    with pytest.raises(ConfigError, match="moe_k = 65 must be in"):
        Model.from_config("ernie-4.5-21b-a3b", device="cpu", moe_k=65, **SMALL)
    with pytest.raises(ConfigError, match="seed=-1"):
        Model.from_config("llama-3-8b", device="cpu", seed=-1, **SMALL)
    with pytest.raises(InputError, match="unknown quantization 'int3'"):
        Model.from_config("llama-3-8b", device="cpu", quantization="int3", **SMALL)
