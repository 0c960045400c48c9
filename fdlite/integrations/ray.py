"""Ray Data: one fdlite Model per actor, each batch of rows run through the continuous-batching engine.

    import ray
    from fdlite.integrations.ray import FdlitePredictor, init_local
    init_local()                                    # or ray.init(address=...) on a cluster
    ds = ray.data.read_json("prompts.jsonl")        # rows with a "prompt" column: text or token ids
    ds = ds.map_batches(FdlitePredictor, batch_size=64, concurrency=2, num_gpus=0,
                        fn_constructor_kwargs={"model": "smollm2-135m", "device": "cpu",
                                               "sampling_params": {"temperature": 0, "max_tokens": 64}})
    ds.write_json("out/")

Each output row keeps the input columns and adds ``generated_text``, ``token_ids`` (list of ints),
``finish_reason`` and ``num_generated``. With ``id_column``, a row without its own ``seed`` column samples
with a seed derived from its id, as ``fdlite batch`` does, so re-running a dataset reproduces it. Any other
column named like a SamplingParams field (``max_tokens``, ``temperature``, ...) overrides the defaults for
its row.
"""
from __future__ import annotations

import os
from dataclasses import fields

import numpy as np

from ..sampling_params import SamplingParams

_PARAM_COLUMNS = {f.name for f in fields(SamplingParams)} - {"n"}


def init_local(num_cpus: int = 2, **kw):
    """Start a local, offline Ray: usage statistics off, no dashboard, nothing listening beyond localhost."""
    import ray  # noqa: PLC0415 - optional dependency (pip install "fdlite[ray]")

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return ray.get_runtime_context()
    return ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                    configure_logging=False, **kw)


def _plain(v):
    """A NumPy/Arrow cell -> a Python value (token-id arrays -> list of int, np.str_ -> str)."""
    if isinstance(v, np.ndarray):
        return [int(t) for t in v.tolist()]
    if isinstance(v, np.generic):
        return v.item()
    return v


class FdlitePredictor:
    """Callable class for ``Dataset.map_batches``: loads the model once per actor (``Model.load(model,
    **load_kwargs)``); ``__call__`` takes a batch (dict of columns, or a pandas DataFrame) and returns it
    with the generation columns added, rows in input order."""

    def __init__(self, model: str, *, sampling_params=None, prompt_column: str = "prompt", id_column: str | None = None,
                 output_column: str = "generated_text", **load_kwargs):
        from ..batch import derived_seed  # noqa: PLC0415
        from ..model import Model  # noqa: PLC0415

        base = sampling_params if isinstance(sampling_params, SamplingParams) else \
            SamplingParams.from_dict(dict(sampling_params or {}))
        if base.n != 1:
            raise ValueError(f"sampling_params.n = {base.n}: one output per row (repeat rows for more samples)")
        self.base, self.prompt_column, self.id_column, self.output_column = base, prompt_column, id_column, \
            output_column
        self._seed_of = derived_seed
        self.model = Model.load(model, **load_kwargs)

    def __call__(self, batch):
        cols = {k: list(batch[k]) for k in batch.keys()} if not isinstance(batch, dict) else \
            {k: list(v) for k, v in batch.items()}
        if self.prompt_column not in cols:
            raise KeyError(f"batch has no {self.prompt_column!r} column; columns: {sorted(cols)}")
        n = len(cols[self.prompt_column])
        prompts = [_plain(p) for p in cols[self.prompt_column]]
        params = []
        for i in range(n):
            over = {k: _plain(cols[k][i]) for k in _PARAM_COLUMNS & cols.keys() if _plain(cols[k][i]) is not None}
            if "seed" not in over and self.id_column is not None and self.base.seed is None:
                over["seed"] = self._seed_of(_plain(cols[self.id_column][i]), None)
            params.append(SamplingParams.from_dict(over, base=self.base) if over else self.base)
        outs = self.model.generate(prompts, params, use_tqdm=False)
        cols[self.output_column] = [o.outputs.text for o in outs]
        cols["token_ids"] = [list(o.outputs.token_ids) for o in outs]
        cols["finish_reason"] = [o.outputs.finish_reason for o in outs]
        cols["num_generated"] = [len(o.outputs.token_ids) for o in outs]
        return cols

    def __del__(self):
        model = getattr(self, "model", None)
        if model is not None:
            model.close()
