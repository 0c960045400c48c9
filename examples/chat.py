"""A two-turn conversation through the model's own chat template."""
import sys

from fdlite import Model, SamplingParams

model_path = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"
params = SamplingParams(temperature=0, max_tokens=64)
with Model.load(model_path) as model:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    reply = model.chat(messages, params, use_tqdm=False)[0].outputs.text
    print("assistant:", reply)
    messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "And of Italy?"}]
    print("assistant:", model.chat(messages, params, use_tqdm=False)[0].outputs.text)
