"""Stream tokens as they are generated, with per-token timing."""
import sys
import time

from fdlite import Model, SamplingParams

model_path = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"
with Model.load(model_path) as model:
    t0, n = time.perf_counter(), 0
    for piece in model.stream("Once upon a time", SamplingParams(temperature=0.7, top_p=0.9, seed=0, max_tokens=48)):
        print(piece.text, end="", flush=True)
        n += len(piece.token_ids)
    print(f"\n[{n} tokens, {n / (time.perf_counter() - t0):.1f} tok/s]")
