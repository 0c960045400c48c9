"""Every tiny transformers-made checkpoint (tests/fixtures/hf/*): logits and greedy continuations."""
import numpy as np
import pytest
from conftest import FIXTURES, HF_CASES, rel_err

from fdlite import Model, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)


@pytest.fixture(scope="module", params=HF_CASES)
def case(request):
    d = FIXTURES / "hf" / request.param
    with Model.load(d, device="cpu") as m:
        yield request.param, m, dict(np.load(d / "reference.npz"))


def test_logits_match_transformers(case):
    name, model, ref = case
    out = model.logits(ref["input_ids"])
    assert out.shape == ref["logits"].shape and out.dtype == np.float32
    assert rel_err(out, ref["logits"]) < 1e-5, name


def test_greedy_matches_transformers(case):
    name, model, ref = case
    out = model.generate([ref["prompt_ids"].tolist()], GREEDY, use_tqdm=False)[0]
    assert out.outputs.token_ids == ref["greedy_ids"].tolist(), name
    assert out.outputs.finish_reason == "length"


def test_cached_decode_equals_full_forward(case):
    """The paged cache + chunked steps give the same last-token logits as one uncached forward."""
    name, model, ref = case
    ids = ref["input_ids"][0].tolist()
    full = model.logits(np.asarray(ids))[0, -1]
    out = model.generate([ids[:-1]], SamplingParams(temperature=0, max_tokens=1, logprobs=5), use_tqdm=False)[0]
    top = max(out.outputs.logprobs[0].items(), key=lambda kv: kv[1].logprob)[0] if out.outputs.logprobs else None
    assert top == int(np.argmax(model.logits(np.asarray(ids[:-1]))[0, -1]))
    assert np.isfinite(full).all()


@pytest.mark.parametrize("suffix", ["", "_short"])
def test_dynamic_rope_step_logits(suffix):
    """Dynamic NTK rope: each decode step rotates with the base of its own length, as transformers does."""
    d = FIXTURES / "hf" / "llama_dynamic_rope"
    ref = dict(np.load(d / "reference.npz"))
    with Model.load(d, device="cpu") as m:
        out = m.generate([ref["prompt_ids" + suffix].tolist()],
                         SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=20), use_tqdm=False)[0]
    assert out.outputs.token_ids == ref["greedy_ids" + suffix].tolist()
    steps = ref["greedy_step_logits" + suffix]                                    # (16, V)
    lse = np.log(np.exp(steps - steps.max(1, keepdims=True)).sum(1)) + steps.max(1)
    for i, entry in enumerate(out.outputs.logprobs):
        for tok, lp in entry.items():
            assert abs(lp.logprob - (steps[i, tok] - lse[i])) < 1e-4, (i, tok)


def test_chunked_prefill_and_batching_agree():
    """Prompts of different lengths in one batch, prefilled in small chunks, equal each prompt alone."""
    d = FIXTURES / "hf" / "qwen2_sliding"
    ref = dict(np.load(d / "reference.npz"))
    prompts = [ref["input_ids"][0][:n].tolist() for n in (3, 17, 30)] + [ref["input_ids"][1].tolist()]
    with Model.load(d, device="cpu") as m:
        alone = [m.generate([p], GREEDY, use_tqdm=False)[0].outputs.token_ids for p in prompts]
    with Model.load(d, device="cpu", max_num_batched_tokens=8, block_size=4, max_num_seqs=3) as m:
        together = [o.outputs.token_ids for o in m.generate(prompts, GREEDY, use_tqdm=False)]
    assert together == alone


def test_preemption_recomputes_without_loss():
    """A KV budget too small for all sequences at once: requests wait or are preempted, none is lost."""
    d = FIXTURES / "hf" / "llama"
    ref = dict(np.load(d / "reference.npz"))
    prompts = [ref["input_ids"][i % 2][: 8 + i].tolist() for i in range(6)]
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    with Model.load(d, device="cpu") as m:
        alone = [m.generate([p], params, use_tqdm=False)[0].outputs.token_ids for p in prompts]
    per_token = 2 * 2 * 2 * 16 * 4
    with Model.load(d, device="cpu", block_size=4, max_num_seqs=6, max_model_len=40,
                    kv_cache_bytes=per_token * 48) as m:
        outs = m.generate(prompts, params, use_tqdm=False)
        assert m.engine.num_preemptions > 0
    assert [o.outputs.token_ids for o in outs] == alone
