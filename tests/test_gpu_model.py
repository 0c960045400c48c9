"""Whole models on the GPU (bf16 activations) against the CPU float32 reference (pytest -m gpu)."""
import numpy as np
import pytest
from conftest import FIXTURES, HF_CASES, SHARED_DATA, rel_err

from fdlite import Model, SamplingParams

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("case", HF_CASES)
def test_tiny_fixture_gpu_vs_cpu(case):
    d = FIXTURES / "hf" / case
    ref = dict(np.load(d / "reference.npz"))
    with Model.load(d, device="cuda") as m:
        assert m.backend.name == "cuda"
        assert rel_err(m.logits(ref["input_ids"]), ref["logits"]) < 3e-2


@pytest.mark.skipif(not (SHARED_DATA / "stories260K.gguf").is_file(), reason="../shared/data is not on this machine")
def test_stories260k_gpu_greedy():
    ref = np.load(FIXTURES / "real" / "stories260K.npz")
    with Model.load(SHARED_DATA / "stories260K.gguf", device="cuda") as m:
        assert rel_err(m.logits(ref["input_ids"]), ref["logits"]) < 3e-2
        out = m.generate([[1, 403, 407, 261, 378]], SamplingParams(temperature=0, max_tokens=32), use_tqdm=False)
    got, want = out[0].outputs.token_ids, ref["greedy_ids"].tolist()
    assert got[:8] == want[:8]


@pytest.mark.parametrize("quant", ["wint8", "wint4", "block_wise_fp8", "w4afp8", "nf4"])
@pytest.mark.parametrize("case", ["llama", "qwen3", "ernie4_5_moe"])
def test_quantized_gpu_vs_cpu(case, quant):
    """The GPU kernels (repacked weights) against the CPU reference of the same method on the same weights."""
    d = FIXTURES / "hf" / case
    if not d.is_dir():
        pytest.skip(f"no fixture {case}")
    ids = dict(np.load(d / "reference.npz"))["input_ids"]
    with Model.load(d, device="cpu", quantization=quant) as m:
        cpu_full, cpu_step = m.logits(ids), m.logits(ids[:, :1])
    # fp8 activations amplify the bf16-vs-float32 difference of their inputs: an input that moves by a bf16
    # ulp can cross an e4m3 rounding boundary (a 6% step), so the dynamic-fp8 method gets a wider bound
    # (its kernels alone match their NumPy twin within 1e-2 in test_gpu_kernels.py)
    # nf4: its MoE experts take the generic per-expert path on the GPU (moe.cu stacks wint8 / wint4 / bf16 only);
    # measured on the H100, 2026-11-25: ERNIE prefill 0.0315 (wint4 0.0088), llama 0.0087, every decode step < 0.008
    tol = 1e-1 if quant in ("block_wise_fp8", "w4afp8") else 5e-2 if quant == "nf4" else 3e-2
    with Model.load(d, device="cuda", quantization=quant) as m:
        assert rel_err(m.logits(ids), cpu_full) < tol             # prefill shapes (M = B * T)
        assert rel_err(m.logits(ids[:, :1]), cpu_step) < tol      # decode shapes (M = 2)
        out = m.generate([ids[0, :8].tolist()], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True),
                         use_tqdm=False)[0]
    assert len(out.outputs.token_ids) == 4
