"""Command line: ``fdlite generate | chat | ppl`` (more subcommands register themselves in SUBCOMMANDS)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from .errors import FdliteError


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="HF directory, .gguf file or preset (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: %(default)s)")
    p.add_argument("--quantization", default=None, help="weight method: name, JSON dict, or WxAyCz scheme")
    p.add_argument("--kv-cache", default=None, help="KV-cache format (default bf16)")
    p.add_argument("--kv-scales", default=None, help="static KV scales file from `fdlite calibrate`")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--tensor-parallel-size", type=int, default=1,
                   help="processes (GPUs with --device cuda) the model is split over, on this host (default 1)")


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")


def _load(args):
    from .model import Model  # noqa: PLC0415 - keep `fdlite --help` fast

    kw = {"device": args.device, "quantization": args.quantization, "kv_cache": args.kv_cache,
          "max_model_len": args.max_model_len, "tensor_parallel_size": args.tensor_parallel_size}
    for extra in ("calibration", "kv_scales"):   # options some subcommands add
        if getattr(args, extra, None) is not None:
            kw[extra] = getattr(args, extra)
    return Model.load(args.model, **kw)


def _params(args):
    from .sampling_params import SamplingParams  # noqa: PLC0415

    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                          seed=args.seed, stop=args.stop)


def cmd_generate(args) -> int:
    prompts = list(args.prompt)
    if args.file:
        with open(args.file, encoding="utf-8") as f:
            prompts += [line.rstrip("\n") for line in f if line.strip()]
    if not prompts:
        raise FdliteError("give a prompt (fdlite generate \"The capital of France is\") or --file")
    model, params = _load(args), _params(args)
    if len(prompts) == 1 and not args.json:
        t0, n = time.time(), 0
        sys.stdout.write(prompts[0])
        for piece in model.stream(prompts[0], params):
            sys.stdout.write(piece.text)
            sys.stdout.flush()
            n += len(piece.token_ids)
        dt = time.time() - t0
        sys.stdout.write("\n")
        print(f"[{n} tokens in {dt:.2f} s, {n / max(dt, 1e-9):.1f} tok/s, {model.backend.name}]", file=sys.stderr)
        return 0
    for out in model.generate(prompts, params, use_tqdm=True):
        if args.json:
            print(json.dumps({"prompt": out.prompt, "text": out.outputs.text, "token_ids": out.outputs.token_ids,
                              "finish_reason": out.outputs.finish_reason}, ensure_ascii=False))
        else:
            print(f"{out.prompt}{out.outputs.text}\n---")
    return 0


def cmd_chat(args) -> int:
    model, params = _load(args), _params(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    turns = list(args.message) if args.message else None
    while True:
        if turns is not None:
            if not turns:
                return 0
            user = turns.pop(0)
        else:
            try:
                user = input("you> ")
            except EOFError:
                return 0
            if user.strip() in ("/exit", "/quit"):
                return 0
        messages.append({"role": "user", "content": user})
        reply = model.chat(messages, params, use_tqdm=False)[0].outputs.text
        print(reply if turns is not None else f"assistant> {reply}")
        messages.append({"role": "assistant", "content": reply})


def cmd_ppl(args) -> int:
    with open(args.file, encoding="utf-8") as f:
        text = f.read()
    model = _load(args)
    t0 = time.time()
    ppl = model.perplexity(text, window=args.window, max_tokens=args.max_tokens)
    print(json.dumps({"file": args.file, "model": args.model, "window": args.window, "max_tokens": args.max_tokens,
                      "quantization": args.quantization, "kv_cache": args.kv_cache, "perplexity": ppl,
                      "seconds": round(time.time() - t0, 2)}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fdlite", description="Quantized LLM inference on NumPy / CuPy")
    ap.add_argument("-v", "--verbose", action="store_true", help="log loading and scheduling details")
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="complete one or more prompts")
    g.add_argument("prompt", nargs="*")
    g.add_argument("--file", help="one prompt per line")
    g.add_argument("--json", action="store_true", help="print one JSON line per prompt")
    _model_args(g)
    _sampling_args(g)
    g.set_defaults(func=cmd_generate)
    c = sub.add_parser("chat", help="chat through the model's chat template (interactive unless --message)")
    c.add_argument("--message", action="append", help="a user turn (repeatable); without it, read stdin")
    c.add_argument("--system", default=None)
    _model_args(c)
    _sampling_args(c)
    c.set_defaults(func=cmd_chat, max_tokens=256)
    p = sub.add_parser("ppl", help="perplexity of a text file")
    p.add_argument("file")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens")
    _model_args(p)
    p.set_defaults(func=cmd_ppl)
    from .offline import register_cli  # noqa: PLC0415 - `fdlite quantize` (fdlite/offline.py)

    register_cli(sub)
    from .kv_scales import register as register_calibrate  # noqa: PLC0415 - `fdlite calibrate`

    register_calibrate(sub)
    from .batch import register_cli as register_batch  # noqa: PLC0415 - `fdlite batch` (fdlite/batch.py)

    register_batch(sub)
    for register in SUBCOMMANDS:
        register(sub)
    return ap


SUBCOMMANDS: list = []   # callables(subparsers) added by modules that own a subcommand


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except (FdliteError, FileNotFoundError, ValueError) as e:
        print(f"fdlite: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
