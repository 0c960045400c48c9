"""The generate / stream / chat API on real tokenizers and tiny checkpoints."""
import numpy as np
import pytest
from conftest import FIXTURES, SHARED_DATA

from fdlite import Model, RequestOutput, SamplingParams

LLAMA = FIXTURES / "hf" / "llama"


@pytest.fixture(scope="module")
def stories():
    with Model.load(SHARED_DATA / "stories260K.gguf", device="cpu") as m:
        yield m


@pytest.fixture(scope="module")
def tiny():
    with Model.load(LLAMA, device="cpu") as m:
        yield m


def test_prompt_forms_and_order(tiny):
    p = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    one = tiny.generate([5, 6, 7], p, use_tqdm=False)
    assert len(one) == 1 and one[0].prompt_token_ids == [5, 6, 7]
    many = tiny.generate([[5, 6, 7], [1], [9, 9, 9, 9, 9, 9]], p, use_tqdm=False)
    assert [o.prompt_token_ids for o in many] == [[5, 6, 7], [1], [9] * 6]
    assert many[0].outputs.token_ids == one[0].outputs.token_ids
    assert all(isinstance(o, RequestOutput) and o.finished and len(o.outputs.token_ids) == 5 for o in many)
    assert tiny.generate({"prompt_token_ids": [5, 6, 7]}, p, use_tqdm=False)[0].outputs.token_ids == \
        one[0].outputs.token_ids


def test_seed_reproducible_and_n(tiny):
    p = SamplingParams(temperature=1.0, top_k=50, max_tokens=12, seed=7, n=3, ignore_eos=True)
    a = tiny.generate([[1, 2, 3], [4, 5]], p, use_tqdm=False)
    b = tiny.generate([[4, 5], [1, 2, 3]], p, use_tqdm=False)
    assert len(a) == 6 and [o.outputs.index for o in a] == [0, 1, 2, 0, 1, 2]
    assert [o.outputs.token_ids for o in a[:3]] == [o.outputs.token_ids for o in b[3:]]   # batch-independent
    assert len({tuple(o.outputs.token_ids) for o in a[:3]}) == 3                          # n samples differ


def test_per_prompt_params(tiny):
    outs = tiny.generate([[1, 2], [3, 4]], [SamplingParams(max_tokens=2, ignore_eos=True),
                                           SamplingParams(max_tokens=4, ignore_eos=True)], use_tqdm=False)
    assert [len(o.outputs.token_ids) for o in outs] == [2, 4]


def test_greedy_modes_agree(tiny):
    ref = tiny.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)
    for p in (SamplingParams(top_p=0, max_tokens=8, seed=1, ignore_eos=True),
              SamplingParams(top_k=1, max_tokens=8, seed=2, ignore_eos=True)):
        assert tiny.generate([[1, 2, 3]], p, use_tqdm=False)[0].outputs.token_ids == ref[0].outputs.token_ids


def test_stop_token_ids_min_tokens_bad_words(tiny):
    base = tiny.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True),
                         use_tqdm=False)[0].outputs.token_ids
    stop = base[3]
    out = tiny.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[stop]),
                        use_tqdm=False)[0].outputs
    assert out.token_ids == base[:base.index(stop) + 1] and out.finish_reason == "stop"
    out = tiny.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=10, bad_words_token_ids=[base[0]]),
                        use_tqdm=False)[0].outputs
    assert out.token_ids[0] != base[0]


def test_penalties_change_distribution(tiny):
    plain = tiny.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True),
                          use_tqdm=False)[0].outputs.token_ids
    pen = tiny.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True,
                                                    repetition_penalty=5.0), use_tqdm=False)[0].outputs.token_ids
    assert len(set(pen)) >= len(set(plain)) and pen != plain


def test_logprobs(tiny):
    out = tiny.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=3, logprobs=4, ignore_eos=True),
                        use_tqdm=False)[0].outputs
    ids = [1, 2, 3]
    for tok, entry in zip(out.token_ids, out.logprobs):
        lg = tiny.logits(np.asarray(ids))[0, -1].astype(np.float64)
        lp = lg - lg.max() - np.log(np.exp(lg - lg.max()).sum())
        assert entry[tok].rank == 1 and abs(entry[tok].logprob - lp[tok]) < 1e-4
        assert len(entry) == 4
        ids.append(tok)


def test_stop_strings_and_stream(stories):
    p = SamplingParams(temperature=0, max_tokens=40, stop=["Lily"])
    out = stories.generate("Once upon a time", p, use_tqdm=False)[0].outputs
    assert out.text == ", there was a little girl named " and out.finish_reason == "stop"
    pieces = list(stories.stream("Once upon a time", p))
    assert "".join(x.text for x in pieces) == out.text
    assert pieces[-1].finished and pieces[-1].finish_reason == "stop"
    full = SamplingParams(temperature=0, max_tokens=24)
    pieces = list(stories.stream("Once upon a time", full))
    gen = stories.generate("Once upon a time", full, use_tqdm=False)[0].outputs
    assert "".join(x.text for x in pieces) == gen.text
    assert [t for x in pieces for t in x.token_ids] == gen.token_ids


def test_stream_abandoned_returns_blocks(stories):
    free = stories.engine.blocks.num_free
    gen = stories.stream("Once upon a time", SamplingParams(temperature=0, max_tokens=50))
    next(gen)
    gen.close()
    assert stories.engine.blocks.num_free == free and not stories.engine.has_work()


def test_eos_ends_generation_and_is_excluded(tmp_path, tiny):
    import json
    import shutil

    base = tiny.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True),
                         use_tqdm=False)[0].outputs.token_ids
    d = tmp_path / "m"
    shutil.copytree(LLAMA, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["eos_token_id"] = base[4]
    (d / "config.json").write_text(json.dumps(cfg))
    with Model.load(d, device="cpu") as m:
        out = m.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=10), use_tqdm=False)[0].outputs
        assert out.finish_reason == "stop" and out.token_ids == base[:base.index(base[4])]
        out = m.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=10, min_tokens=8),
                         use_tqdm=False)[0].outputs
        assert len(out.token_ids) >= 8 and base[4] not in out.token_ids[:8]


def test_memory_report(tiny):
    r = tiny.memory_report()
    assert r["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 4       # layers * (k, v) * kv heads * head_dim * fp32
    assert r["weights_bytes"] > 0 and r["kv_cache_bytes"] >= r["kv_capacity_tokens"] * r["kv_bytes_per_token"]
