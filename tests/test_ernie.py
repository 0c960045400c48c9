"""ERNIE-4.5 dense and MoE: transformers-made fixtures, MoE routing, both checkpoint layouts, quantization roles,
bad input."""
import json
import shutil

import numpy as np
import pytest
from conftest import FIXTURES, rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

from fdlite import CheckpointError, ConfigError, Model, SamplingParams
from fdlite.backend import get_backend
from fdlite.config import ModelConfig
from fdlite.models import ernie4_5
from fdlite.moe import MoE, Experts, group_by_expert, moe_forward, route
from fdlite.quant.base import Linear
from fdlite.quant.dense import Method as Dense
from fdlite.weights.hf import HFTensors
from fdlite.weights.safetensors import write_safetensors

CASES = ["ernie4_5", "ernie4_5_bias", "ernie4_5_moe", "ernie4_5_moe_interval"]
MOE = FIXTURES / "hf" / "ernie4_5_moe"
GREEDY = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)


def ref(name):
    return dict(np.load(FIXTURES / "hf" / name / "reference.npz"))


# --- transformers fixtures ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CASES)
def test_logits_and_greedy_match_transformers(name):
    r = ref(name)
    with Model.load(FIXTURES / "hf" / name, device="cpu") as m:
        assert m.config.rope.interleaved and m.config.rope.theta == 500000.0
        out = m.logits(r["input_ids"])
        assert rel_err(out, r["logits"]) < 1e-5, name      # measured ~5e-7 (float32)
        got = m.generate([r["prompt_ids"].tolist()], GREEDY, use_tqdm=False)[0].outputs.token_ids
    assert got == r["greedy_ids"].tolist()


def test_correction_bias_matters_in_the_fixture():
    """Zeroing the correction bias changes the logits: the fixture really tests selection by the bias."""
    r = ref("ernie4_5_moe")
    with Model.load(MOE, device="cpu") as m:
        for lp in m.params["layers"]:
            if "moe" in lp:
                lp["moe"].correction_bias = None
        assert rel_err(m.logits(r["input_ids"]), r["logits"]) > 1e-2


# --- routing --------------------------------------------------------------------------------------------------
def _dense_linear(w):
    d = Dense()
    return Linear(d, d.quantize(np.asarray(w, np.float32)), None, np)


def _random_moe(rng, E, k, H, I, shared=False, bias_scale=0.1):
    experts = Experts([_dense_linear(rng.normal(0, 0.3, (2 * I, H))) for _ in range(E)],
                      [_dense_linear(rng.normal(0, 0.3, (H, I))) for _ in range(E)])
    sh = {"w13": _dense_linear(rng.normal(0, 0.3, (4 * I, H))), "w2": _dense_linear(rng.normal(0, 0.3, (H, 2 * I)))} \
        if shared else None
    return MoE(rng.normal(0, 0.5, (E, H)).astype(np.float32), (bias_scale * rng.normal(size=E)).astype(np.float32),
               experts, k, 1e-12, sh)


def _naive(m, x):
    """Token-by-token reference straight from the formula (fastdeploy-spec §7.2)."""
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        lg = x[t].astype(np.float64) @ m.router_w.T.astype(np.float64)
        p = np.exp(lg - lg.max())
        p /= p.sum()
        chosen = sorted(range(len(p)), key=lambda e: (-(p[e] + m.correction_bias[e]), e))[:m.top_k]
        w = p[chosen] / p[chosen].sum()
        for wj, e in zip(w, chosen):
            gu = m.experts.gate_up[e](x[t:t + 1])
            h = gu.shape[1] // 2
            g = gu[:, :h]
            out[t] += wj * m.experts.down[e](g / (1 + np.exp(-g)) * gu[:, h:])[0]
        if m.shared is not None:
            gu = m.shared["w13"](x[t:t + 1])
            h = gu.shape[1] // 2
            out[t] += m.shared["w2"](gu[:, :h] / (1 + np.exp(-gu[:, :h])) * gu[:, h:])[0]
    return out


@settings(max_examples=25, deadline=None)
@given(N=st.integers(1, 12), E=st.integers(1, 9), data=st.data(), shared=st.booleans(), seed=st.integers(0, 999))
def test_grouped_moe_equals_token_loop(N, E, data, shared, seed):
    k = data.draw(st.integers(1, E))
    rng = np.random.default_rng(seed)
    m = _random_moe(rng, E, k, H=8, I=4, shared=shared)
    x = rng.normal(size=(N, 8)).astype(np.float32)
    np.testing.assert_allclose(moe_forward(m, x, np), _naive(m, x), rtol=1e-4, atol=1e-5)


def test_route_ties_go_to_the_lower_expert():
    x = np.ones((3, 4), np.float32)
    w, ids = route(x, np.zeros((6, 4), np.float32), None, 3, 1e-12, np)    # all six probabilities equal
    assert ids.tolist() == [[0, 1, 2]] * 3
    np.testing.assert_allclose(w, 1 / 3, rtol=1e-6)
    bias = np.array([0, 0, 0, 0.5, 0, 0.5], np.float32)                     # a tie between 3 and 5 at the top
    _, ids = route(x, np.zeros((6, 4), np.float32), bias, 3, 1e-12, np)
    assert ids.tolist() == [[3, 5, 0]] * 3


def test_all_tokens_pick_the_same_expert():
    rng = np.random.default_rng(0)
    m = _random_moe(rng, E=5, k=2, H=8, I=4, shared=True)
    m.correction_bias = np.array([0, 0, 0, 10, 0], np.float32)               # expert 3 always wins the selection
    x = rng.normal(size=(7, 8)).astype(np.float32)
    w, ids = route(x, m.router_w, m.correction_bias, 2, 1e-12, np)
    assert (ids[:, 0] == 3).all()
    order, counts = group_by_expert(ids, 5, np)
    assert counts[3] == 7 and sum(counts) == 14
    np.testing.assert_allclose(moe_forward(m, x, np), _naive(m, x), rtol=1e-4, atol=1e-5)


def test_correction_bias_selects_but_does_not_weight():
    rng = np.random.default_rng(1)
    x, wr = rng.normal(size=(20, 8)).astype(np.float32), rng.normal(size=(6, 8)).astype(np.float32)
    w0, ids0 = route(x, wr, None, 2, 1e-12, np)
    w1, ids1 = route(x, wr, np.full(6, 0.3, np.float32), 2, 1e-12, np)      # a constant shift: same choice
    assert (ids0 == ids1).all()
    np.testing.assert_array_equal(w0, w1)                                      # ... and the very same weights
    bias = np.array([0, 0, 0, 0, 0, 1], np.float32)                           # now expert 5 is always chosen
    w2, ids2 = route(x, wr, bias, 2, 1e-12, np)
    assert (ids2[:, 0] == 5).all() and (ids2 != ids0).any()
    lg = x @ wr.T
    p = np.exp(lg - lg.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    pk = np.take_along_axis(p, ids2, 1)
    np.testing.assert_allclose(w2, pk / pk.sum(1, keepdims=True), rtol=1e-6)  # weights from the un-biased p
    np.testing.assert_allclose(w2.sum(1), 1, rtol=1e-6)


# --- layouts ----------------------------------------------------------------------------------------------------
def _rewrite(src, dst, transform):
    """Copy fixture src to dst with its tensors passed through transform(dict) -> dict."""
    shutil.copytree(src, dst)
    t = HFTensors(src)
    tensors = {n: np.array(t.get(n)) for n in t.keys()}
    t.close()
    (dst / "model.safetensors").unlink()
    write_safetensors(dst / "model.safetensors", transform(tensors))
    return dst


def _to_paddle(t):
    """HF layout -> Paddle: 'ernie.' prefix, [in, out], fused q|k|v and gate|up, router [H, E]."""
    out = {}
    for n, a in t.items():
        n2 = n.replace("model.", "ernie.", 1)
        if n2.endswith(("k_proj.weight", "v_proj.weight", "up_proj.weight", "k_proj.bias", "v_proj.bias",
                        "up_proj.bias")):
            continue
        if n2.endswith("q_proj.weight"):
            out[n2.replace("q_proj", "qkv_proj")] = np.concatenate(
                [a, t[n.replace("q_proj", "k_proj")], t[n.replace("q_proj", "v_proj")]]).T
        elif n2.endswith("q_proj.bias"):
            out[n2.replace("q_proj", "qkv_proj")] = np.concatenate(
                [a, t[n.replace("q_proj", "k_proj")], t[n.replace("q_proj", "v_proj")]])
        elif n2.endswith("gate_proj.weight"):
            out[n2.replace("gate_proj", "up_gate_proj")] = np.concatenate([a, t[n.replace("gate_proj", "up_proj")]]).T
        elif n2.endswith("gate_proj.bias"):
            out[n2.replace("gate_proj", "up_gate_proj")] = np.concatenate([a, t[n.replace("gate_proj", "up_proj")]])
        elif a.ndim == 2 and not n2.endswith(("embed_tokens.weight", "correction_bias")):
            out[n2] = a.T                                          # o, down, router, lm_head: [in, out]
        else:
            out[n2] = a
    return out


@pytest.mark.parametrize("name", ["ernie4_5_bias", "ernie4_5_moe", "ernie4_5_moe_interval"])
def test_paddle_layout_gives_the_same_logits(tmp_path, name):
    r = ref(name)
    d = _rewrite(FIXTURES / "hf" / name, tmp_path / "p", _to_paddle)
    with Model.load(d, device="cpu") as m:
        assert rel_err(m.logits(r["input_ids"]), r["logits"]) < 1e-5


def test_stacked_expert_tensors_give_the_same_logits(tmp_path):
    """transformers' in-memory form: experts.gate_up_proj [E, 2I, H], experts.down_proj [E, H, I]."""
    def stack(t):
        out = {n: a for n, a in t.items() if ".experts." not in n}
        for layer in (1, 2):
            p = f"model.layers.{layer}.mlp.experts."
            out[p + "gate_up_proj"] = np.stack([np.concatenate([t[f"{p}{j}.gate_proj.weight"],
                                                                t[f"{p}{j}.up_proj.weight"]]) for j in range(8)])
            out[p + "down_proj"] = np.stack([t[f"{p}{j}.down_proj.weight"] for j in range(8)])
        return out

    r = ref("ernie4_5_moe")
    with Model.load(_rewrite(MOE, tmp_path / "s", stack), device="cpu") as m:
        assert rel_err(m.logits(r["input_ids"]), r["logits"]) < 1e-5


# --- quantization roles -----------------------------------------------------------------------------------------
def test_linear_roles_and_fp32_router():
    """Experts go through make_linear as moe_gate_up / moe_down, shared experts as dense MLP roles, the router
    never (it stays an fp32 array)."""
    seen = []
    backend = get_backend("cpu")
    dense = Dense()

    def make(role, name, w, bias):
        seen.append((role, name, tuple(w.shape)))
        return Linear(dense, dense.quantize(w), bias, np)

    t = HFTensors(MOE)
    cfg = ModelConfig.from_hf(json.loads((MOE / "config.json").read_text()))
    params = ernie4_5.load_params(cfg, t, make, backend)
    t.close()
    roles = [s[0] for s in seen]
    assert roles.count("moe_gate_up") == roles.count("moe_down") == 2 * 8
    assert roles.count("mlp_gate_up") == 3 and roles.count("attn_qkv") == 3 and roles.count("lm_head") == 1
    assert ("moe_gate_up", "model.layers.1.mlp.experts.0.up_gate_proj", (64, 64)) in seen
    assert ("mlp_gate_up", "model.layers.1.mlp.shared_experts.up_gate_proj", (128, 64)) in seen
    moe = params["layers"][1]["moe"]
    assert moe.router_w.dtype == np.float32 and moe.router_w.shape == (8, 64) and moe.correction_bias.shape == (8,)
    assert "moe" not in params["layers"][0]


def test_wint4_on_ernie_is_mix_quant_wint8_dense_wint4_experts():
    cfg = ModelConfig.from_hf(json.loads((MOE / "config.json").read_text()))
    assert ernie4_5.resolve_quantization(cfg, "wint4", {}) == \
        ("mix_quant", {"dense_quant_type": "wint8", "moe_quant_type": "wint4"})
    assert ernie4_5.resolve_quantization(cfg, "wint4", {"group_size": -1})[1]["group_size"] == -1
    assert ernie4_5.resolve_quantization(cfg, "wint4", {"ernie_mix": False}) == ("wint4", {})
    assert ernie4_5.resolve_quantization(cfg, "wint8", {}) == ("wint8", {})
    assert ernie4_5.resolve_quantization(cfg, "wint4", {"is_quantized": True}) == ("wint4", {"is_quantized": True})


def test_wint4_quantizes_experts_int4_and_the_rest_int8():
    """FastDeploy's ERNIE WINT4 through Model.load: routed experts wint4, attention / dense MLP / shared experts
    wint8, lm_head and router unquantized."""
    r = ref("ernie4_5_moe")
    with Model.load(MOE, device="cpu", quantization="wint4") as m:
        l0, l1 = m.params["layers"][0], m.params["layers"][1]
        assert {lin.method.name for lin in l1["moe"].experts.gate_up + l1["moe"].experts.down} == {"wint4"}
        assert {l1["wqkv"].method.name, l1["wo"].method.name, l0["w13"].method.name, l0["w2"].method.name,
                l1["moe"].shared["w13"].method.name, l1["moe"].shared["w2"].method.name} == {"wint8"}
        assert m.params["lm_head"].method.name == "dense" and l1["moe"].router_w.dtype == np.float32
        err = rel_err(m.logits(r["input_ids"]), r["logits"])
    assert 1e-4 < err < 0.1, err                      # quantized, and close (measured 0.061)


def test_wint4_per_channel_and_plain_wint4_flags():
    with Model.load(MOE, device="cpu", quantization={"quantization": "wint4", "group_size": -1}) as m:
        e = m.params["layers"][1]["moe"].experts.gate_up[0]
        assert e.method.name == "wint4" and e.packed.arrays["weight_scale"].shape == (64, 1)   # one scale per row
    with Model.load(MOE, device="cpu", quantization={"quantization": "wint4", "ernie_mix": False}) as m:
        assert m.params["layers"][1]["wqkv"].method.name == "wint4"


# --- bad input ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, match", [
    ({"moe_k": 9}, r"moe_k = 9 must be in \[1, moe_num_experts = 8\]"),
    ({"moe_num_experts": 0}, r"moe_num_experts = 0 .* must be >= 1"),
    ({"moe_num_experts": [8, 8]}, r"moe_num_experts = \[8, 8\] must be a single int"),
    ({"moe_layer_start_index": 2, "moe_layer_end_index": 1}, r"inconsistent MoE layer range \(moe_layer_start_index = 2"
                                                             r", moe_layer_end_index = 1"),
    ({"moe_layer_start_index": 3, "moe_layer_end_index": -1}, r"moe_layer_start_index = 3, moe_layer_end_index = "
                                                              r"-1, moe_layer_interval = 1, num_hidden_layers = 3"),
    ({"moe_layer_start_index": -1}, r"inconsistent MoE layer range \(moe_layer_start_index = -1"),
    ({"moe_layer_interval": 0}, r"moe_layer_interval = 0"),
    ({"moe_layer_start_index": 1, "moe_layer_end_index": 1, "moe_layer_interval": 3}, r"no layer is MoE"),
])
def test_inconsistent_moe_config(tmp_path, change, match):
    d = tmp_path / "m"
    shutil.copytree(MOE, d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(ConfigError, match=match):
        Model.load(d, device="cpu")


def test_end_index_past_the_last_layer_is_an_upper_bound(tmp_path):
    """transformers / vLLM read moe_layer_end_index as a bound: 9 with 3 layers means layers 1..2, as the file."""
    d = tmp_path / "m"
    shutil.copytree(MOE, d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "moe_layer_end_index": 9}))
    r = ref("ernie4_5_moe")
    with Model.load(d, device="cpu") as m:
        assert rel_err(m.logits(r["input_ids"]), r["logits"]) < 1e-5


def test_missing_expert_tensor_names_the_first(tmp_path):
    gone = ["model.layers.2.mlp.experts.1.down_proj.weight", "model.layers.1.mlp.experts.5.up_proj.weight",
            "model.layers.1.mlp.experts.6.gate_proj.weight"]
    d = _rewrite(MOE, tmp_path / "m", lambda t: {n: a for n, a in t.items() if n not in gone})
    with pytest.raises(CheckpointError, match=r"'model.layers.1.mlp.experts.5.up_proj.weight' is missing \(2 of the "
                                              r"24 expert tensors"):
        Model.load(d, device="cpu")


def test_prequantized_paddle_tensor_is_rejected(tmp_path):
    d = _rewrite(MOE, tmp_path / "q", lambda t: {**_to_paddle(t), "ernie.layers.1.mlp.experts.0.up_gate_proj."
                                                 "quant_weight": np.zeros((16, 64), np.int8)})
    with pytest.raises(CheckpointError, match=r"'ernie.layers.1.mlp.experts.0.up_gate_proj.quant_weight' is a "
                                              "pre-quantized Paddle tensor"):
        Model.load(d, device="cpu")


def test_router_of_the_wrong_shape(tmp_path):
    d = _rewrite(MOE, tmp_path / "r", lambda t: {**t, "model.layers.1.mlp.gate.weight": np.zeros((7, 64), np.float32)})
    with pytest.raises(CheckpointError, match=r"'model.layers.1.mlp.gate.weight' has shape \[7, 64\] but the config "
                                              r"needs \[8, 64\]"):
        Model.load(d, device="cpu")
