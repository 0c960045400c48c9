"""Every bad input gets a specific, typed error naming what is at fault — never a deep traceback."""
import json
import shutil

import numpy as np
import pytest
from conftest import FIXTURES, SHARED_DATA

from fdlite import (CheckpointError, ConfigError, InputError, Model, ModelClosedError, SamplingParams, TokenizerError,
                    UnsupportedArchitectureError)
from fdlite.weights.safetensors import write_safetensors

LLAMA = FIXTURES / "hf" / "llama"


@pytest.fixture
def llama_copy(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(LLAMA, d)
    return d


@pytest.fixture(scope="module")
def llama():
    with Model.load(LLAMA, device="cpu", max_model_len=32) as m:
        yield m


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Model.load(tmp_path / "nope")


def test_unknown_preset_is_a_missing_path():
    with pytest.raises(FileNotFoundError, match="preset name"):
        Model.load("no-such-model")


def test_config_not_json(llama_copy):
    (llama_copy / "config.json").write_text("{ not json")
    with pytest.raises(ConfigError, match=r"config.json: not valid JSON"):
        Model.load(llama_copy)


def test_missing_config(llama_copy):
    (llama_copy / "config.json").unlink()
    with pytest.raises(ConfigError, match="config.json not found"):
        Model.load(llama_copy)


def test_unknown_architecture(llama_copy):
    cfg = json.loads((llama_copy / "config.json").read_text())
    cfg["architectures"] = ["GPTBigCodeForCausalLM"]
    (llama_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitectureError, match="GPTBigCodeForCausalLM.*supported: .*LlamaForCausalLM"):
        Model.load(llama_copy)


def test_config_missing_key(llama_copy):
    cfg = json.loads((llama_copy / "config.json").read_text())
    del cfg["hidden_size"]
    (llama_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="'hidden_size' is missing"):
        Model.load(llama_copy)


def test_shape_mismatch_names_tensor_and_shapes(llama_copy):
    cfg = json.loads((llama_copy / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (llama_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"gate_proj.weight' has shape \[128, 64\] but the config needs \[96, 64\]"):
        Model.load(llama_copy)


def test_missing_tensor(llama_copy, tmp_path):
    from fdlite.weights.safetensors import SafetensorsFile

    f = SafetensorsFile(llama_copy / "model.safetensors")
    tensors = {k: np.array(f.get(k)) for k in f.keys() if "layers.1.mlp.up_proj" not in k}
    f.close()
    write_safetensors(llama_copy / "model.safetensors", tensors)
    with pytest.raises(CheckpointError, match=r"model.layers.1.mlp.up_proj.weight.*missing"):
        Model.load(llama_copy)


def test_truncated_safetensors(llama_copy):
    p = llama_copy / "model.safetensors"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors.*truncated"):
        Model.load(llama_copy)


def test_corrupt_safetensors_header(llama_copy):
    p = llama_copy / "model.safetensors"
    data = bytearray(p.read_bytes())
    data[8:12] = b"\xff\xfe{["
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model.safetensors: header is not valid JSON"):
        Model.load(llama_copy)


def test_safetensors_unknown_dtype_and_bad_offsets(tmp_path):
    from fdlite.weights.safetensors import SafetensorsFile

    def write(header, payload=b"\0" * 16):
        raw = json.dumps(header).encode()
        p = tmp_path / "x.safetensors"
        p.write_bytes(len(raw).to_bytes(8, "little") + raw + payload)
        return p

    with pytest.raises(CheckpointError, match="unknown dtype 'Q7'"):
        SafetensorsFile(write({"a": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 2]}}))
    with pytest.raises(CheckpointError, match="needs 16 bytes but its offsets span 8"):
        SafetensorsFile(write({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}))
    with pytest.raises(CheckpointError, match="ends at byte 32 of the data but the file holds only 16"):
        SafetensorsFile(write({"a": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}))
    with pytest.raises(CheckpointError, match="overlap"):
        SafetensorsFile(write({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                               "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}))


def test_corrupt_and_truncated_gguf(tmp_path):
    data = (SHARED_DATA / "stories260K.gguf").read_bytes()
    p = tmp_path / "t.gguf"
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"t.gguf: not a readable GGUF file"):
        Model.load(p)
    p.write_bytes(b"GGUF" + b"\xff" * 64)
    with pytest.raises(CheckpointError, match=r"t.gguf"):
        Model.load(p)
    q = tmp_path / "weights.bin"
    q.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        Model.load(q)


def test_unknown_quantization_and_kv_cache():
    with pytest.raises(InputError, match=r"unknown quantization 'int3'; valid: .*dense"):
        Model.load(LLAMA, quantization="int3")
    with pytest.raises(InputError, match=r"unknown kv_cache 'fp4'; valid: .*bf16"):
        Model.load(LLAMA, kv_cache="fp4")
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        Model.load(LLAMA, device="tpu")


@pytest.mark.parametrize("kw, field", [
    ({"temperature": -1}, "temperature"), ({"top_p": 1.5}, "top_p"), ({"top_k": -2}, "top_k"),
    ({"max_tokens": 0}, "max_tokens"), ({"n": 0}, "n"), ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"presence_penalty": 3}, "presence_penalty"), ({"min_p": -0.1}, "min_p"), ({"logprobs": 21}, "logprobs"),
    ({"stop": [""]}, "stop"), ({"stop_token_ids": [-1]}, "stop_token_ids"), ({"seed": -5}, "seed"),
    ({"min_tokens": 10, "max_tokens": 5}, "min_tokens"), ({"temperature": float("nan")}, "temperature"),
])
def test_invalid_sampling_params(kw, field):
    with pytest.raises(ValueError, match=rf"SamplingParams.{field} = "):
        SamplingParams(**kw)


def test_token_id_outside_vocab(llama):
    with pytest.raises(InputError, match=r"token id 300 is outside the vocabulary \[0, 256\)"):
        llama.generate([[1, 2, 300]], use_tqdm=False)
    with pytest.raises(InputError, match=r"token id -1 is outside"):
        llama.logits(np.array([[1, -1]]))


def test_prompt_longer_than_context(llama):
    with pytest.raises(InputError, match=r"prompt 1 has 40 tokens but max_model_len is 32"):
        llama.generate([[1, 2], [3] * 40], use_tqdm=False)


def test_all_prompts_validated_before_work(llama):
    before = llama.engine.blocks.num_free
    with pytest.raises(InputError, match="prompt 2"):
        llama.generate([[1, 2], [3, 4], [999]], use_tqdm=False)
    assert llama.engine.blocks.num_free == before and not llama.engine.has_work()


def test_text_without_tokenizer(llama):
    with pytest.raises(TokenizerError, match="no tokenizer"):
        llama.generate("hello", use_tqdm=False)
    with pytest.raises(TokenizerError, match="no tokenizer"):
        llama.chat([{"role": "user", "content": "hi"}])


def test_bad_prompt_types(llama):
    with pytest.raises(InputError, match="must be a str or a non-empty list"):
        llama.generate([[1, 2], 3.5], use_tqdm=False)
    with pytest.raises(InputError, match="prompts must be"):
        llama.generate([], use_tqdm=False)


def test_closed_model_raises():
    m = Model.load(LLAMA, device="cpu")
    with m:
        m.generate([[1, 2]], SamplingParams(max_tokens=2), use_tqdm=False)
    with pytest.raises(ModelClosedError, match="was closed"):
        m.generate([[1, 2]], use_tqdm=False)
    with pytest.raises(ModelClosedError):
        m.logits([1, 2])
    m.close()  # idempotent


def test_kv_budget_too_small():
    with pytest.raises(InputError, match=r"holds 0 tokens .* max_model_len=64"):
        Model.load(LLAMA, max_model_len=64, kv_cache_bytes=100)
