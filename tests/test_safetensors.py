"""safetensors reading: zero-copy mmap views, sharded indexes, mixed dtypes, round trip of the writer."""
import json
import shutil

import ml_dtypes
import numpy as np
from conftest import FIXTURES, rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

from fdlite import Model
from fdlite.weights.safetensors import SafetensorsFile, write_safetensors

LLAMA = FIXTURES / "hf" / "llama"


def test_views_are_zero_copy_and_mixed_dtypes():
    f = SafetensorsFile(LLAMA / "model.safetensors")
    dtypes = {str(f.dtype(k)) for k in f.keys()}
    assert {"bfloat16", "float32"} <= dtypes                      # bf16 linears next to fp32 norms
    a = f.get("model.norm.weight")
    assert not a.flags.owndata and not a.flags.writeable          # a view into the read-only mmap


def test_sharded_index_equals_single_file(tmp_path):
    d = tmp_path / "sharded"
    shutil.copytree(LLAMA, d)
    f = SafetensorsFile(d / "model.safetensors")
    names = sorted(f.keys())
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    weight_map = {}
    for fname, keys in shards.items():
        write_safetensors(d / fname, {k: np.array(f.get(k)) for k in keys}, {"format": "pt"})
        weight_map.update({k: fname for k in keys})
    f.close()
    (d / "model.safetensors").unlink()
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    ids = np.load(LLAMA / "reference.npz")["input_ids"]
    with Model.load(LLAMA, device="cpu") as a, Model.load(d, device="cpu") as b:
        assert rel_err(b.logits(ids), a.logits(ids)) == 0.0


@settings(max_examples=25, deadline=None)
@given(shapes=st.lists(st.lists(st.integers(0, 5), min_size=0, max_size=3), min_size=1, max_size=5),
       dtype=st.sampled_from([np.float32, np.float16, ml_dtypes.bfloat16, np.int8, np.uint8, np.int64]))
def test_writer_reader_round_trip(tmp_path_factory, shapes, dtype):
    rng = np.random.default_rng(len(shapes))
    tensors = {f"t{i}": (rng.standard_normal(s) * 10).astype(dtype) for i, s in enumerate(shapes)}
    p = tmp_path_factory.mktemp("st") / "x.safetensors"
    write_safetensors(p, tensors, {"k": "v"})
    f = SafetensorsFile(p)
    assert f.metadata == {"k": "v"} and set(f.keys()) == set(tensors)
    for k, v in tensors.items():
        got = f.get(k)
        assert got.dtype == v.dtype and got.shape == v.shape and got.tobytes() == v.tobytes()
