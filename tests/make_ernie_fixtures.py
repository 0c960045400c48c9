"""Generate the transformers-oracle ERNIE-4.5 fixtures (dense and MoE) that tests/test_ernie.py compares against.

Run BY HAND (never in CI: CI has no torch) with the oracle venv, from the repo root:

    /tmp/oracle/bin/python tests/make_ernie_fixtures.py            # every ERNIE case
    /tmp/oracle/bin/python tests/make_ernie_fixtures.py --only ernie4_5_moe

Same conventions as tests/make_fixtures.py (read its docstring): each tests/fixtures/hf/<case>/ holds what
`save_pretrained(safe_serialization=True)` writes plus reference.npz (input_ids int64 [2,T], logits float32
[2,T,V] of the eager fp32 forward of the re-loaded model, prompt_ids int64 [P], greedy_ids int64 [16] made with
eos disabled, prompts redrawn until every greedy step has a top1-top2 gap >= 0.02) and a README.md with the facts.

MoE cases also pin the routing: the e_score_correction_bias is non-zero and the script asserts that it changes
which experts are picked for a good share of the tokens (else the fixture would not test "bias selects, does not
weight"), and that no token's k-th / (k+1)-th biased score are so close that fp32 noise could flip the choice.
"""
import argparse, datetime, json, os, re, shutil
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, Ernie4_5Config, Ernie4_5_MoeConfig

HF = Path(__file__).resolve().parent / "fixtures" / "hf"
TODAY = datetime.date.today().isoformat()
BASE = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
            head_dim=32, max_position_embeddings=64, initializer_range=0.02, rms_norm_eps=1e-5,
            bos_token_id=None, eos_token_id=None, pad_token_id=None)
CASES = {
    "ernie4_5": dict(cls=Ernie4_5Config, seed=21, num_hidden_layers=2, tie_word_embeddings=True,
                     doc="Ernie4_5ForCausalLM: interleaved rope theta 5e5, head_dim 32 != hidden/heads (16), "
                         "tied embeddings, no biases"),
    "ernie4_5_bias": dict(cls=Ernie4_5Config, seed=22, num_hidden_layers=2, tie_word_embeddings=False,
                          use_bias=True, mixed=True,
                          doc="Ernie4_5ForCausalLM with use_bias=True (q/k/v/o and MLP biases), untied, "
                              "bf16 linears + fp32 norms"),
    "ernie4_5_moe": dict(cls=Ernie4_5_MoeConfig, seed=23, num_hidden_layers=3, tie_word_embeddings=True,
                         moe_num_experts=8, moe_k=2, moe_intermediate_size=32, moe_num_shared_experts=2,
                         moe_layer_start_index=1, moe_layer_end_index=-1, moe_layer_interval=1, mixed=True,
                         doc="Ernie4_5_MoeForCausalLM: 3 layers, layer 0 dense, layers 1-2 MoE (8 experts, top-2, "
                             "moe_intermediate 32, 2 shared experts = one MLP of width 64), non-zero "
                             "e_score_correction_bias that changes the routing, bf16 linears, fp32 router "
                             "weight + correction bias + norms, tied"),
    "ernie4_5_moe_interval": dict(cls=Ernie4_5_MoeConfig, seed=24, num_hidden_layers=4, tie_word_embeddings=False,
                                  moe_num_experts=6, moe_k=3, moe_intermediate_size=48, moe_num_shared_experts=0,
                                  moe_layer_start_index=1, moe_layer_end_index=3, moe_layer_interval=2,
                                  doc="Ernie4_5_MoeForCausalLM: 4 layers, interval 2 -> MoE at layers 1 and 3 "
                                      "((L+1) % 2 == 0), dense at 0 and 2, 6 experts top-3, no shared experts, "
                                      "untied, fp32, non-zero correction bias"),
}
META = {"cls", "seed", "mixed", "doc"}


def randomize(model, seed):
    """Weights/biases ~ N(0, 0.1), norms ~ 1 + 0.1 N(0, 1); correction bias ~ U(-0.15, 0.15) (softmax probs of
    8 experts sit near 1/8, so a bias of that size reorders the top-k for many tokens)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "e_score_correction_bias" in name:
                p.copy_(0.3 * (torch.rand(p.shape, generator=g) - 0.5))
            elif "norm" in name:
                p.copy_(1 + 0.1 * r)
            else:
                p.copy_(0.1 * r)


def load(d):
    return AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()


@torch.no_grad()
def greedy(model, prompt, n=16):
    out = model.generate(torch.from_numpy(prompt)[None], attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         do_sample=False, max_new_tokens=n, min_new_tokens=n, eos_token_id=None,
                         return_dict_in_generate=True, output_scores=True)
    top2 = torch.stack(out.scores)[:, 0].topk(2).values
    return out.sequences[0, len(prompt):].numpy().astype(np.int64), float((top2[:, 0] - top2[:, 1]).min())


@torch.no_grad()
def routing_facts(model, ids):
    """Per MoE layer: share of tokens whose top-k set changes when the correction bias is dropped, and the
    smallest gap between the k-th and (k+1)-th biased score (a near tie would make the fixture fragile)."""
    captured = []
    hooks = [m.register_forward_hook(lambda mod, args, out: captured.append((mod, args[0].detach().clone())))
             for m in model.modules() if type(m).__name__.endswith("TopKRouter")]
    model(torch.from_numpy(ids))
    for h in hooks:
        h.remove()
    facts = []
    for mod, x in captured:
        p = torch.softmax(x.float() @ mod.weight.float().T, dim=-1)                  # (N, E)
        b = mod.moe_statics.e_score_correction_bias.float().squeeze(0)
        k = mod.top_k
        with_b = torch.topk(p + b, k, dim=-1).indices.sort(-1).values
        without = torch.topk(p, k, dim=-1).indices.sort(-1).values
        s = (p + b).sort(-1, descending=True).values
        facts.append(dict(changed=float((with_b != without).any(-1).float().mean()),
                          min_gap=float((s[:, k - 1] - s[:, k]).min())))
    return facts


def make_case(name, spec):
    d = HF / name
    shutil.rmtree(d, ignore_errors=True)
    cfg = spec["cls"](**{**BASE, **{k: v for k, v in spec.items() if k not in META}})
    torch.manual_seed(spec["seed"])
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    randomize(model, spec["seed"])
    if spec.get("mixed"):  # bf16 linears; norms, router weight and correction bias stay fp32 (as the real files)
        for pname, p in model.named_parameters():
            if "norm" not in pname and "gate.weight" not in pname and "correction_bias" not in pname:
                p.data = p.data.to(torch.bfloat16)
    model.generation_config.eos_token_id = None
    model.save_pretrained(d, safe_serialization=True)

    rng = np.random.default_rng(2000 + spec["seed"])
    ids = rng.integers(0, cfg.vocab_size, (2, 24), dtype=np.int64)
    m = load(d)
    with torch.no_grad():
        logits = m(torch.from_numpy(ids)).logits.float().numpy()
    facts = {"config": {k: v for k, v in spec.items() if k not in META | {"cls"}}}
    if "moe_num_experts" in spec:
        facts["routing"] = r = routing_facts(m, ids)
        assert len(r) == sum((i + 1) % cfg.moe_layer_interval == 0 and cfg.moe_layer_start_index <= i
                             <= cfg.moe_layer_end_index for i in range(cfg.num_hidden_layers)), r
        assert all(x["changed"] >= 0.1 for x in r), f"the correction bias barely changes the routing: {r}"
        assert all(x["min_gap"] >= 1e-4 for x in r), f"a routing near-tie makes this fixture fragile: {r}"
    for _ in range(100):
        prompt = rng.integers(0, cfg.vocab_size, 8, dtype=np.int64)
        g, margin = greedy(load(d), prompt)
        if margin >= 0.02:
            break
    else:
        raise RuntimeError("no prompt with a clear greedy margin")
    facts["greedy_min_margin"] = round(margin, 4)
    np.savez_compressed(d / "reference.npz", input_ids=ids, logits=logits, prompt_ids=prompt, greedy_ids=g)
    (d / "README.md").write_text(
        f"# {name} (oracle: transformers {transformers.__version__}, torch {torch.__version__}; {TODAY})\n\n"
        f"Made by `tests/make_ernie_fixtures.py`. {spec['doc']}. Common: vocab 256, hidden 64, inter 128, 4 heads, "
        "2 KV heads, head_dim 32, T=24, P=8, greedy 16 tokens with eos disabled.\n\n"
        f"Facts: `{json.dumps(facts)}`\n\nTensors: " + ", ".join(sorted(_keys(d))) + "\n")
    return facts


def _keys(d):
    from safetensors import safe_open
    with safe_open(d / "model.safetensors", "pt") as f:
        return {re.sub(r"\.\d+\.", ".N.", k) for k in f.keys()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", choices=list(CASES))
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    for name in ap.parse_args().only or list(CASES):
        print(name, make_case(name, CASES[name]))


if __name__ == "__main__":
    main()
