"""Generate from a few prompts in one batch (CPU, or the GPU when one is present)."""
import sys

from fdlite import Model, SamplingParams

model_path = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"
with Model.load(model_path) as model:
    prompts = ["The capital of France is", "Water boils at", "The three primary colors are"]
    outs = model.generate(prompts, SamplingParams(temperature=0, max_tokens=24), use_tqdm=False)
    for out in outs:
        print(f"{out.prompt!r} -> {out.outputs.text!r} ({out.outputs.finish_reason})")
