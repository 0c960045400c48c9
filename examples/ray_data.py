"""Ray Data: a dataset of prompts through fdlite actors (one model each), on a local offline Ray.

On a cluster: ray.init(address="auto") instead of init_local(), concurrency = number of actors, and
num_gpus=1 per actor with device="cuda".
"""
import ray

from fdlite.integrations.ray import FdlitePredictor, init_local

init_local(num_cpus=2)            # usage stats off, no dashboard, local only
ds = ray.data.from_items([{"id": i, "prompt": p} for i, p in enumerate(
    ["The capital of France is", "Water boils at", "The largest planet is", "Bees make"])])
ds = ds.map_batches(FdlitePredictor, batch_size=4, concurrency=1, num_cpus=1,
                    fn_constructor_kwargs={"model": "smollm2-135m", "device": "cpu", "id_column": "id",
                                           "sampling_params": {"temperature": 0, "max_tokens": 8}})
for row in sorted(ds.take_all(), key=lambda r: r["id"]):
    print(f"{row['prompt']!r} -> {row['generated_text']!r}")
ray.shutdown()
