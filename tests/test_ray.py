"""Ray Data on a local, offline Ray (usage stats off, no dashboard): map_batches with one model per actor gives
the same outputs as Model.generate."""
from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import FIXTURES

ray = pytest.importorskip("ray", reason="Ray is in the test and ray extras: pip install 'ray[data]'")

from fdlite import Model, SamplingParams  # noqa: E402
from fdlite.integrations.ray import FdlitePredictor, init_local  # noqa: E402

LLAMA = FIXTURES / "hf" / "llama"


@pytest.fixture(scope="module")
def local_ray():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    init_local(num_cpus=2)
    yield
    ray.shutdown()


def test_predictor_without_ray():
    """The callable alone (what each actor runs): columns kept, rows in order, per-row overrides and id seeds."""
    pred = FdlitePredictor(str(LLAMA), device="cpu", id_column="id",
                           sampling_params={"temperature": 0.7, "max_tokens": 4})
    prompts = [np.arange(3 + i) for i in range(5)]
    out = pred({"id": np.arange(5), "prompt": np.array(prompts, dtype=object), "max_tokens": np.array([1, 2, 3, 4, 5])})
    assert list(out["id"]) == list(range(5)) and out["num_generated"] == [1, 2, 3, 4, 5]
    again = pred({"id": np.arange(5), "prompt": np.array(prompts, dtype=object),
                  "max_tokens": np.array([1, 2, 3, 4, 5])})
    assert again["token_ids"] == out["token_ids"]              # seeds derived from the ids
    with pytest.raises(KeyError, match="no 'prompt' column"):
        pred({"text": np.array(["x"])})


@pytest.mark.slow
def test_map_batches_two_actors(local_ray):
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 256, rng.integers(2, 12)).tolist() for _ in range(24)]
    sp = {"temperature": 0, "max_tokens": 6, "ignore_eos": True}
    ds = ray.data.from_items([{"id": i, "prompt": p} for i, p in enumerate(prompts)])
    out = ds.map_batches(FdlitePredictor, batch_size=8, concurrency=2, num_cpus=1,
                         fn_constructor_kwargs={"model": str(LLAMA), "device": "cpu", "sampling_params": sp})
    rows = sorted(out.take_all(), key=lambda r: r["id"])
    with Model.load(LLAMA, device="cpu") as m:
        ref = m.generate(prompts, SamplingParams(**sp), use_tqdm=False)
    assert [list(r["token_ids"]) for r in rows] == [o.outputs.token_ids for o in ref]
    assert all(r["finish_reason"] == "length" for r in rows)
