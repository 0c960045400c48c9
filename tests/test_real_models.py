"""The real models: stories260K (GGUF, SentencePiece vocab) and SmolLM2-135M (Q4_1 GGUF, gpt2 BPE)."""
import subprocess
import sys

import numpy as np
import pytest
from conftest import FIXTURES, SHARED_DATA, rel_err

from fdlite import Model, SamplingParams

STORIES = SHARED_DATA / "stories260K.gguf"


@pytest.fixture(scope="module")
def stories():
    if not STORIES.is_file():
        pytest.skip(f"{STORIES} not present")
    with Model.load(STORIES, device="cpu") as m:
        yield m


def test_stories260k_logits_and_greedy(stories):
    ref = np.load(FIXTURES / "real" / "stories260K.npz")
    assert rel_err(stories.logits(ref["input_ids"]), ref["logits"]) < 1e-5
    out = stories.generate([[1, 403, 407, 261, 378]], SamplingParams(temperature=0, max_tokens=32), use_tqdm=False)
    assert out[0].outputs.token_ids == ref["greedy_ids"].tolist()
    assert out[0].outputs.text.startswith(", there was a little girl named Lily.")


def test_stories260k_text_prompt_gets_bos(stories):
    # llama SPM metadata: BOS is added to text prompts, never with add_special_tokens=False
    assert stories.tokenizer.encode("Once upon a time") == [1, 403, 407, 261, 378]
    assert stories.tokenizer.encode("Once upon a time", add_special_tokens=False) == [403, 407, 261, 378]
    out = stories.generate("Once upon a time", SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)[0]
    assert out.prompt_token_ids == [1, 403, 407, 261, 378]


def test_smollm2_prompt_ids_logits_greedy(smollm2, smollm2_ref):
    arrays, meta = smollm2_ref
    prompt = meta["prompt"]
    assert smollm2.tokenizer.encode(prompt["text"]) == prompt["ids"]        # no BOS: the GGUF says add_bos false
    assert rel_err(smollm2.logits(arrays["prompt_ids"]), arrays["logits"]) < 1e-4
    out = smollm2.generate(prompt["text"], SamplingParams(temperature=0, max_tokens=32), use_tqdm=False)[0]
    eos_at = prompt["eos_positions"][0]
    assert out.outputs.token_ids == prompt["greedy_ids"][:eos_at]           # EOS ends it and is not included
    assert out.outputs.finish_reason == "stop"
    assert out.outputs.text == " Paris.\n\nThe answer is: 2018-01-22 12:12:53."


def test_smollm2_chat_template_and_greedy(smollm2, smollm2_ref):
    _, meta = smollm2_ref
    chat = meta["chat"]
    text = smollm2.tokenizer.apply_chat_template(chat["messages"], add_generation_prompt=True)
    assert text == chat["text"]
    assert smollm2.tokenizer.encode(text, add_special_tokens=False) == chat["ids"]
    out = smollm2.chat(chat["messages"], SamplingParams(temperature=0, max_tokens=24), use_tqdm=False)[0]
    assert out.prompt_token_ids == chat["ids"]
    assert out.outputs.token_ids == chat["greedy_ids"][:chat["eos_positions"][0]]
    assert out.outputs.text == "The capital of France is Paris."


def test_smollm2_wikitext_tokens(smollm2, smollm2_ref):
    arrays, meta = smollm2_ref
    text = (SHARED_DATA / "wikitext-2-raw-test.txt").read_text(encoding="utf-8")
    ids = smollm2.tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == meta["wikitext"]["total_tokens"]
    assert ids[:4096] == arrays["wikitext_ids"].tolist()


@pytest.mark.slow
def test_smollm2_perplexity_4096(smollm2, smollm2_ref):
    arrays, meta = smollm2_ref
    ppl = smollm2.perplexity(arrays["wikitext_ids"].tolist(), window=512)
    assert abs(ppl / meta["wikitext"]["ppl_4096"] - 1) < 1e-4, ppl


def test_cli_generate_and_ppl(tmp_path):
    run = [sys.executable, "-m", "fdlite.cli"]
    r = subprocess.run(run + ["generate", "Once upon a time", "--model", str(STORIES), "--max-tokens", "8"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Once upon a time, there was a little girl")
    r2 = subprocess.run(run + ["generate", "Once upon a time", "--model", str(STORIES), "--max-tokens", "8",
                               "--tensor-parallel-size", "2"], capture_output=True, text=True, timeout=120)
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout == r.stdout                                  # 2 ranks (8 q / 4 kv heads), the same text
    r3 = subprocess.run(run + ["generate", "x", "--model", str(STORIES), "--tensor-parallel-size", "3"],
                        capture_output=True, text=True, timeout=120)
    assert r3.returncode == 2 and "not a multiple of tensor_parallel_size = 3" in r3.stderr
    f = tmp_path / "t.txt"
    f.write_text("Once upon a time, there was a little girl named Lily. She loved to play outside in the park.")
    r = subprocess.run(run + ["ppl", str(f), "--model", str(STORIES), "--window", "16"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    import json

    res = json.loads(r.stdout)
    assert 1.0 < res["perplexity"] < 50
    r = subprocess.run(run + ["generate", "x", "--model", str(tmp_path / "missing")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_cli_chat_smollm2():
    r = subprocess.run([sys.executable, "-m", "fdlite.cli", "chat", "--message", "What is the capital of France?",
                        "--max-tokens", "16"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
