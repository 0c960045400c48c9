"""Static KV-cache scales: calibration, scale files, and FastDeploy checkpoint keys.

Static formats (int8, float8_e4m3fn, int4_zp) take their scales as options stacked over layers, with
FastDeploy's meaning per layer (spec §5.2): int8 / fp8 the abs-max ``A`` (per channel ``kv_heads *
head_dim`` / per head ``kv_heads``), int4_zp the dequant step ``s`` and zero point ``zp`` per channel.

Where scales come from (``options_for`` / ``ensure_calibrated``, called by Model.load):
1. ``kv_scales=PATH``: a safetensors file written by ``fdlite calibrate``; keys
   ``{format}.layers.{L}.cache{k|v}_matmul.activation_{scale|zero_point}``, one 1-D float32 row per layer.
2. the checkpoint: ``....layers.{L}.self_attn.cache{k|v}_matmul.activation_{scale|zero_point}`` (FastDeploy).
3. otherwise a calibration run: the model generates (or reads) calibration text with the bf16 cache, a
   recording cache (fdlite/kv/_record.py) captures K after RoPE and V of every layer, and ``fit`` turns them
   into scales.

Fitting. K is recorded after RoPE at positions 0..127 only, but is read back at positions up to
max_model_len, where mid-frequency channel pairs have rotated further. RoPE is relative, so each recorded
key is un-rotated and re-rotated to ``ROTATIONS`` random positions below min(max_model_len, ``POSITIONS``):
the ranges then cover the positions the cache will hold (SmolLM2 int4_zp, 4096 wikitext tokens: ppl ratio
1.326 without it, 1.114 / 1.116 / 1.123 / 1.159 re-rotating below 512 / 1024 / 2048 / 4096 positions; a
wider span stretches the pairs' ranges and costs resolution at short contexts, hence the cap, which
``fdlite calibrate --positions`` overrides). Self-generated text is also tamer than real text (wikitext
abs-max per channel is up to 1.6x the calibration one even after the rotation), so int8 keeps a 1.5x
``MARGIN`` (it has resolution to spare). fp8 is relative-precision, so its margin only guards saturation;
what matters is where its rounding grid falls, so the per-head scale is searched over factors in [1, 2)
for the least e4m3 MSE. int4_zp (15 levels) picks, per channel, the clipped range [lo, hi] that minimises
the quantization MSE over the calibration values (plain min/max wastes most levels on rare extremes).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from . import kv as kv_formats
from .errors import CheckpointError, InputError

log = logging.getLogger("fdlite")

STATIC = ("int8", "float8_e4m3fn", "int4_zp")
ROTATIONS = 16          # random positions each recorded key is re-rotated to
MARGIN = {"int8": 1.5, "float8_e4m3fn": 2.0}
MIN_TOKENS = 256        # calibration needs at least this many tokens
POSITIONS = 2048        # keys are re-rotated to positions below min(max_model_len, POSITIONS) by default
_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:[\w.]*\.)?cache([kv])_matmul\.activation_(scale|zero_point)$")
_FILE_NAME = {"k_scale": ("k", "scale"), "v_scale": ("v", "scale"), "k_zero_point": ("k", "zero_point"),
              "v_zero_point": ("v", "zero_point")}


# ---- recording and fitting ---------------------------------------------------------------------------
def record(model, seqs: list[list[int]]):
    """Run each token sequence through the model with the recording bf16 cache -> the recorder."""
    from .kv import _record  # noqa: PLC0415
    from .kv.base import StepMeta  # noqa: PLC0415

    total = sum(len(s) for s in seqs)
    if total < MIN_TOKENS:
        raise InputError(f"calibration has {total} tokens; at least {MIN_TOKENS} are needed to calibrate KV "
                         "scales")
    bs = model.cache.block_size
    longest = max(len(s) for s in seqs)
    rec = _record.Format(model.config, -(-longest // bs), bs, model.backend)
    for s in seqs:
        meta = StepMeta.build([(0, len(s), list(range(-(-len(s) // bs))))], bs, logits="last")
        with model._lock:
            model._run(np.asarray(s, np.int64), meta, rec)
    return rec


def _rotated_keys(k, pos, rope, max_pos: int, rng) -> np.ndarray:
    """k: (T, Hkv, D) after RoPE at positions pos -> (T * (1 + ROTATIONS), Hkv, D) incl. re-rotated copies."""
    from .rope import apply_rope  # noqa: PLC0415

    cos, sin = rope.cos_sin(pos)                                                 # (T, D/2), scaling folded in
    g = np.float32(rope.attention_scaling) ** 2
    k0 = apply_rope(k, cos / g, -sin / g, rope.interleaved, np)                  # before RoPE
    out = [k]
    for _ in range(ROTATIONS):
        c, s = rope.cos_sin(rng.integers(0, max_pos, len(pos)))
        out.append(apply_rope(k0, c, s, rope.interleaved, np))
    return np.concatenate(out)


def _mse_range(x: np.ndarray, bins: int = 256, steps: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """x: (T, C) -> per-channel (lo, hi) minimising the int4 (15-level) quantization MSE, over a grid of
    trims from either end of [min, max]. Evaluated on a per-channel histogram, so cost is bins x grid."""
    mn, mx = x.min(0), x.max(0)                                                  # (C,)
    width = np.maximum(mx - mn, 1e-12)
    idx = np.clip(((x - mn) / width * bins).astype(np.int64), 0, bins - 1)       # (T, C)
    C = x.shape[1]
    counts = np.zeros((C, bins))
    np.add.at(counts, (np.broadcast_to(np.arange(C), idx.shape), idx), 1)
    centers = mn[:, None] + (np.arange(bins) + 0.5)[None] / bins * width[:, None]    # (C, bins)
    trims = np.linspace(0, 0.45, steps)
    best = np.full(C, np.inf)
    lo_best, hi_best = mn.copy(), mx.copy()
    for a in trims:
        for b in trims:
            if a + b >= 0.9:
                continue
            lo, hi = mn + a * width, mx - b * width                              # (C,)
            s = (hi - lo) / 14
            q = np.clip(np.rint((centers - lo[:, None]) / s[:, None]), 0, 14)
            err = ((lo[:, None] + q * s[:, None] - centers) ** 2 * counts).sum(1)
            better = err < best
            best[better], lo_best[better], hi_best[better] = err[better], lo[better], hi[better]
    return lo_best, hi_best


def _fp8_scale(x: np.ndarray, base: np.ndarray, rng, rows: int = 2048, steps: int = 32) -> np.ndarray:
    """x: (T, Hkv, D), base: (Hkv,) abs-max -> per-head A in [base, 2 base) minimising the e4m3 MSE.
    e4m3 is scale-invariant under powers of two, so only the factor in [1, 2) matters: it decides where the
    rounding grid falls, e.g. whether a head's dominant channel lands on a representable value."""
    from .kv._quant import e4m3_decode, e4m3_encode  # noqa: PLC0415

    x = x[rng.choice(len(x), min(rows, len(x)), replace=False)]
    best, err = base.copy(), np.full(base.shape, np.inf)
    for f in 2.0 ** (np.arange(steps) / steps):
        a = (base * f).astype(np.float32)
        step = a[:, None] / np.float32(448)                                      # (Hkv, 1)
        y = e4m3_decode(e4m3_encode(x / step, np), np) * step
        e = ((y - x) ** 2).sum(axis=(0, 2))                                      # (Hkv,)
        better = e < err
        best[better], err[better] = a[better], e[better]
    return best


def fit(name: str, rec, cfg, rope, max_pos: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Recorder -> the options of static format ``name`` (scales stacked over layers, FastDeploy meaning)."""
    if name not in STATIC:
        raise InputError(f"kv_cache {name!r} has no static scales to fit; static formats: "
                         f"{', '.join(STATIC)}")
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {}
    for layer in range(cfg.num_hidden_layers):
        pos = rec.positions(layer)
        for kind in ("k", "v"):
            x = rec.values(layer, kind)                                          # (T, Hkv, D)
            if kind == "k":
                x = _rotated_keys(x, pos, rope, max_pos, rng)
            if name == "int8":
                rows = {"scale": np.abs(x).max(0).reshape(-1) * MARGIN[name]}                # (Hkv*D,)
            elif name == "float8_e4m3fn":
                rows = {"scale": _fp8_scale(x, np.abs(x).max(axis=(0, 2)) * MARGIN[name], rng)}  # (Hkv,)
            else:
                lo, hi = _mse_range(x.reshape(len(x), -1))                                   # (Hkv*D,)
                s = np.maximum((hi - lo) / 14, np.maximum(np.abs(lo), np.abs(hi)) * 1e-6 + 1e-12)
                rows = {"scale": s, "zero_point": -7 - lo / s}
            for what, row in rows.items():
                out.setdefault(f"{kind}_{what}", []).append(row.astype(np.float32))
    return {k: np.stack(v) for k, v in out.items()}


def calibrate(model, source="self", formats=STATIC, positions: int | None = None) -> dict[str, dict]:
    """-> {format: options}: record K/V on ``calibration_ids(model, source)`` with a bf16 cache, then fit for
    keys at positions below ``positions`` (default min(max_model_len, POSITIONS))."""
    from .calibration import calibration_ids  # noqa: PLC0415
    from .engine.block_manager import BlockManager  # noqa: PLC0415

    bf16 = kv_formats.get("bf16")
    with model._lock:
        # generation for "self" runs on a small bf16 cache: the model's own may be an uncalibrated format
        saved = model.cache, model.engine.blocks
        bs = saved[0].block_size
        n = model.engine.max_num_seqs * (-(-256 // bs) + 1) + 4
        model.cache, model.engine.blocks = bf16(model.config, n, bs, model.backend), BlockManager(n, bs)
        try:
            seqs = calibration_ids(model, source)
            rec = record(model, seqs)
        finally:
            model.cache.close()
            model.cache, model.engine.blocks = saved
    positions = int(positions or min(model.max_model_len, POSITIONS))
    if positions < 1:
        raise InputError(f"positions={positions} must be >= 1")
    return {f: fit(f, rec, model.config, model.rope, positions) for f in formats}


# ---- where Model.load gets them ------------------------------------------------------------------------
def options_for(fmt, cfg, tensors=None, path=None) -> dict | None:
    """Options for format class ``fmt``: from ``path`` (a scale file), else the checkpoint's FastDeploy keys;
    {} for a dynamic format; None when a static format found none (Model.load then calibrates)."""
    if not fmt.scale_shapes(cfg):
        if path is not None:
            raise InputError(f"kv_scales={str(path)!r} given but kv_cache {fmt.name!r} takes no static "
                             f"scales (static formats: {', '.join(STATIC)})")
        return {}
    if path is not None:
        return load(path, fmt, cfg)
    if tensors is not None:
        return from_checkpoint(tensors, fmt, cfg)
    return None


def ensure_calibrated(model, source="self"):
    """If the model's KV format is static and has no scales yet: calibrate (logged), rebuild the cache."""
    fmt, opts = model._kv_format, model._kv_options
    shapes = fmt.scale_shapes(model.config)
    if not shapes or all(opts.get(n) is not None for n in shapes):
        return model
    log.warning("fdlite: kv_cache %r has no static scales (no kv_scales= file, none in the checkpoint): "
                "calibrating them on %s calibration text", fmt.name, source)
    opts = {**opts, **calibrate(model, source, (fmt.name,))[fmt.name]}
    cache = model.cache
    model.cache = fmt(model.config, cache.num_blocks, cache.block_size, model.backend, **opts)
    if "attention" in vars(cache):       # the CPU engine's batch-invariant attention (engine/invariant.py)
        model.cache.attention = cache.attention
    model._kv_options = opts
    cache.close()
    return model


def _collect(items, fmt, cfg, where: str, error) -> dict[str, np.ndarray]:
    """items: {(layer, 'k'|'v', 'scale'|'zero_point'): 1-D array} -> stacked options, shape-checked."""
    shapes = fmt.scale_shapes(cfg)
    opts = {}
    for name, shape in shapes.items():
        kind, what = _FILE_NAME[name]
        rows = []
        for layer in range(shape[0]):
            a = items.get((layer, kind, what))
            key = f"layers.{layer}.cache{kind}_matmul.activation_{what}"
            if a is None:
                raise error(f"{where}: {fmt.name!r} scale {key!r} is missing")
            a = np.asarray(a, np.float32).reshape(-1)
            if a.shape != shape[1:]:
                raise error(f"{where}: {key} has shape {list(a.shape)} but kv_cache {fmt.name!r} needs "
                            f"{list(shape[1:])} per layer")
            rows.append(a)
        opts[name] = np.stack(rows)
    return opts


def from_checkpoint(tensors, fmt, cfg) -> dict | None:
    items = {}
    for key in tensors.keys():
        m = _KEY.search(key)
        if m:
            items[(int(m.group(1)), m.group(2), m.group(3))] = tensors.get(key)
    if not items:
        return None
    log.info("fdlite: kv_cache %r scales from the checkpoint (%d tensors)", fmt.name, len(items))
    return _collect(items, fmt, cfg, "checkpoint", CheckpointError)


def save(path, scales: dict[str, dict[str, np.ndarray]], metadata: dict | None = None) -> None:
    """scales: {format: options}. One 1-D float32 tensor per layer, K/V and scale/zero point."""
    from .weights.safetensors import write_safetensors  # noqa: PLC0415

    tensors = {}
    for fmt_name, opts in scales.items():
        for name, stacked in opts.items():
            kind, what = _FILE_NAME[name]
            for layer, row in enumerate(stacked):
                tensors[f"{fmt_name}.layers.{layer}.cache{kind}_matmul.activation_{what}"] = \
                    np.ascontiguousarray(row, np.float32)
    meta = {"fdlite": "kv_scales", "formats": ",".join(sorted(scales)), **(metadata or {})}
    write_safetensors(Path(path), tensors, {k: str(v) for k, v in meta.items()})


def load(path, fmt, cfg) -> dict[str, np.ndarray]:
    from .weights.safetensors import SafetensorsFile  # noqa: PLC0415

    p = Path(path)
    if not p.is_file():
        raise InputError(f"kv_scales={str(path)!r}: no such file (write one with `fdlite calibrate --out`)")
    f = SafetensorsFile(p)
    try:
        items, held = {}, set()
        for key in f.keys():
            head, _, rest = key.partition(".")
            m = _KEY.search(rest)
            if m:
                held.add(head)
                if head == fmt.name:
                    items[(int(m.group(1)), m.group(2), m.group(3))] = np.array(f.get(key))
    finally:
        f.close()
    if not items:
        raise InputError(f"kv_scales file {p} holds no scales for kv_cache {fmt.name!r}; it has: "
                         f"{', '.join(sorted(held)) or 'none'}")
    return _collect(items, fmt, cfg, str(p), CheckpointError)


# ---- `fdlite calibrate` --------------------------------------------------------------------------------
def cmd_calibrate(args) -> int:
    import json  # noqa: PLC0415

    from .cli import _load  # noqa: PLC0415

    args.kv_cache, args.kv_scales = None, None
    if args.tensor_parallel_size != 1:     # rank 0 sees only its own KV heads: the file would miss the others
        raise InputError(f"fdlite calibrate runs on one process (--tensor-parallel-size "
                         f"{args.tensor_parallel_size}): its scales cover every KV head, and the ranks of a "
                         "tensor-parallel load each cut their heads from that file (--kv-scales)")
    formats = tuple(args.formats.split(",")) if args.formats else STATIC
    bad = [f for f in formats if f not in STATIC]
    if bad:
        raise InputError(f"--formats {bad}: static KV formats are {', '.join(STATIC)}")
    model = _load(args)
    source = args.text or "self"
    scales = calibrate(model, source, formats, args.positions)
    save(args.out, scales, {"model": args.model, "calibration": source,
                            "positions": args.positions or min(model.max_model_len, POSITIONS)})
    print(json.dumps({"out": args.out, "formats": list(formats), "calibration": source}))
    return 0


def register(sub) -> None:
    from .cli import _model_args  # noqa: PLC0415

    p = sub.add_parser("calibrate", help="calibrate static KV-cache scales (int8, float8_e4m3fn, int4_zp)")
    p.add_argument("--text", default=None, help="calibration text file (default: text the model generates)")
    p.add_argument("--out", required=True, help="scale file to write (safetensors); load with --kv-scales")
    p.add_argument("--positions", type=int, default=None,
                   help=f"fit K for positions below this (default min(max_model_len, {POSITIONS}))")
    p.add_argument("--formats", default=None,
                   help=f"comma-separated subset of {','.join(STATIC)} (default: all)")
    _model_args(p)
    p.set_defaults(func=cmd_calibrate)
