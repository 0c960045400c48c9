"""Tensor-parallel sharding of packed weights on the host (NumPy): the arithmetic, no communication.

A weight is ``Packed`` with logical shape (N, K) (y = x @ W.T). Tensor parallelism of size ``tp`` cuts it
two ways:

* column-parallel (``take_rows``): each rank keeps some output rows (N). Its input x is replicated, its
  output a slice of y; the slices are concatenated (all-gather) or used locally (q/k/v heads, gate/up).
* row-parallel (``take_cols``): each rank keeps a contiguous K range. Its input is the matching slice of x,
  its output a partial y; the partials are summed (all-reduce). A bias is added once (rank 0 keeps it).

How each layout is cut (a shard is itself a valid Packed of the same method, so the method's own matmul
runs on it unchanged):

    dense: w (N, K)
        rows: any.  columns: any.
    grouped (wint8, wint4, nf4, w8a8, w4a8, w4afp8): quant_weight int8 (N, Kp) or uint8 (N, Kp/2) with
    k = 2j in the low nibble of byte j and 2j+1 in the high nibble; weight_scale float32 (N, G)
        rows: any; the scale rows follow.
        columns, G > 1: whole groups only (start and stop multiples of g, or stop = K: the last shard
        keeps the zero padding to Kp); scale columns [start / g, stop / g).
        columns, G = 1 (per channel): any range; the (N, 1) scale covers every column, so it is copied
        whole into each shard. 4-bit: even boundaries (two codes per byte).
    fp8 per channel (wfp8afp8): quant_weight uint8 (N, K), weight_scale (N, 1)
        rows: any.  columns: any; the scale copied whole.
    block_wise_fp8: quant_weight uint8 (N, K), weight_scale_inv float32 (ceil(N/bn), ceil(K/bk))
        rows: whole bn-row blocks (a segment may end at N in a partial block only as the shard's last).
        columns: whole bk-column blocks (or up to K); the scale rows / columns follow.
    ccq (wint2, FastDeploy's [K, N] orientation): quant_weight uint8 (Kp/4, N), weight_scale uint8 (Kp/128, N) (two
    64-row local scales a byte), super_scales bf16 / code_scale / code_zp float32 (N,)
        rows (N, the LAST axis of every array): any.
        columns: whole 128-row scale bytes (start, stop multiples of 128, or stop = K: the last shard keeps the
        padding to Kp); quant_weight rows [start / 4, stop / 4), weight_scale rows [start / 128, stop / 128); the
        per-column arrays are copied whole.
    activation_scale (1,) (a static per-tensor activation abs-max): copied whole either way.

Every shard records ``meta["tp"] = {"axis", "segments", "whole_shape", "whole_meta", "copied"}`` so
``reassemble`` rebuilds the original bit for bit. A cut the layout cannot express raises ``InputError``
quoting the numbers.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..quant import get as get_method
from ..quant.base import Packed

Segment = tuple[int, int]
CCQ_ARRAYS = ("quant_weight", "weight_scale", "super_scales", "code_scale", "code_zp")   # wint2, N last
CCQ_K = 128                     # K rows per wint2 weight_scale byte (two 64-row local scales)


# ------------------------------------------------------------------------------------------------ layouts

def layout(p: Packed) -> tuple[str, int]:
    """-> (kind, unit): kind in dense | grouped | channel | block | ccq; unit = bits (grouped), block rows (block) or
    the K rows of a scale byte (ccq: wint2)."""
    if p.meta.get("gpu"):
        raise InputError(f"{p.method} weight of shape {p.shape} is already repacked for a GPU kernel "
                         f"({p.meta['gpu']!r}); shard the host Packed before method.prepare")
    a = p.arrays
    if "w" in a:
        return "dense", 0
    if "weight_scale_inv" in a:
        return "block", int(p.meta.get("weight_block_size", [128, 128])[0])
    if set(a) == set(CCQ_ARRAYS):
        return "ccq", CCQ_K
    extra = sorted(set(a) - {"quant_weight", "weight_scale", "activation_scale"})
    if "quant_weight" in a and "weight_scale" in a and not extra:
        bits = getattr(get_method(p.method), "bits", None)
        if bits is None:                                 # wfp8afp8: e4m3 bytes, (N, 1) scale
            return "channel", 8
        return "grouped", int(bits)
    raise InputError(f"{p.method} weight of shape {p.shape}: no sharding rule for arrays {sorted(a)}")


def _block_k(p: Packed) -> int:
    return int(p.meta.get("weight_block_size", [128, 128])[1])


def n_unit(p: Packed) -> int:
    """Rows a column-parallel cut must be a multiple of (block_wise_fp8: its block rows; else 1)."""
    kind, unit = layout(p)
    return unit if kind == "block" else 1


def k_unit(p: Packed) -> int:
    """Columns a row-parallel cut must be a multiple of: the group (G > 1), 2 for per-channel int4 (bytes),
    the block columns (block_wise_fp8), else 1. split_even(K, tp, k_unit(p)) gives valid K ranges."""
    kind, unit = layout(p)
    if kind == "block":
        return _block_k(p)
    if kind == "ccq":
        return unit
    if kind == "grouped" and p.arrays["weight_scale"].shape[1] > 1:
        return int(p.meta["group_size"])
    return 2 if kind == "grouped" and unit == 4 else 1


# ---------------------------------------------------------------------------------------------- plan helpers

def split_even(n: int, parts: int, align: int = 1, what: str = "dimension") -> list[Segment]:
    """Contiguous ranges covering [0, n), one per part, each starting on a multiple of ``align``; sizes in
    units of ``align`` differ by at most one (the last range also takes the partial unit at n)."""
    units = -(-n // align)
    if parts < 1 or units < parts:
        raise InputError(f"cannot split {what} of {n} into {parts} parts of whole {align}-wide units "
                         f"({units} units)")
    bounds = [min(n, (units * r // parts) * align) for r in range(parts + 1)]
    return [(bounds[r], bounds[r + 1]) for r in range(parts)]


def heads_of(num_heads: int, tp: int, rank: int, what: str = "num_attention_heads") -> Segment:
    """The heads [h0, h1) of one rank: num_heads must be a multiple of tp."""
    if num_heads % tp:
        raise InputError(f"{what} = {num_heads} is not a multiple of tensor_parallel_size = {tp}")
    per = num_heads // tp
    return rank * per, (rank + 1) * per


def kv_heads_of(num_kv_heads: int, tp: int, rank: int) -> Segment:
    """KV heads of one rank. nkv % tp == 0: split (nkv / tp each); tp % nkv == 0: replicated, each KV head
    held by tp / nkv consecutive ranks (their q heads all read it, as vLLM does); otherwise refused."""
    if num_kv_heads % tp == 0:
        return heads_of(num_kv_heads, tp, rank, "num_key_value_heads")
    if tp % num_kv_heads == 0:
        h = rank // (tp // num_kv_heads)
        return h, h + 1
    raise InputError(f"num_key_value_heads = {num_kv_heads} and tensor_parallel_size = {tp}: one must "
                     "divide the other (split the KV heads, or replicate each over tp / nkv ranks)")


def qkv_segments(nh: int, nkv: int, D: int, tp: int, rank: int) -> list[Segment]:
    """Rows of the fused (q | k | v) weight ((nh + 2 nkv) D rows) that rank keeps: its q heads, then its
    kv heads (in k, then in v)."""
    q0, q1 = heads_of(nh, tp, rank)
    k0, k1 = kv_heads_of(nkv, tp, rank)
    if (q0 * nkv) // nh != k0:      # q head h reads kv head h // (nh / nkv): it must be local
        raise InputError(f"rank {rank}: q heads [{q0}, {q1}) do not read kv heads [{k0}, {k1})")
    qo, vo = nh * D, (nh + nkv) * D
    return [(q0 * D, q1 * D), (qo + k0 * D, qo + k1 * D), (vo + k0 * D, vo + k1 * D)]


def gate_up_segments(inter: int, tp: int, rank: int) -> list[Segment]:
    """Rows of the fused (gate | up) weight (2 I rows): the same slice of gate and of up, so silu(g) * u
    stays local."""
    if inter % tp:
        raise InputError(f"intermediate size {inter} is not a multiple of tensor_parallel_size = {tp}")
    s, e = rank * inter // tp, (rank + 1) * inter // tp
    return [(s, e), (inter + s, inter + e)]


# ------------------------------------------------------------------------------------------- the cuts

def _tag(p: Packed, axis: int, segments, shape, arrays, meta=None, copied=("activation_scale",)) -> Packed:
    info = {"axis": axis, "segments": [tuple(map(int, s)) for s in segments], "whole_shape": tuple(p.shape),
            "whole_meta": {k: v for k, v in p.meta.items() if k != "tp"}, "copied": tuple(copied)}
    return Packed(p.method, tuple(shape), arrays, {**(meta or p.meta), "tp": info})


def _check_segments(segments, n: int, what: str):
    for s, e in segments:
        if not 0 <= s < e <= n:
            raise InputError(f"{what}: segment [{s}, {e}) is empty or outside [0, {n})")


def take_rows(p: Packed, segments: list[Segment]) -> Packed:
    """Column-parallel piece: rows ``segments`` of p (concatenated in order) -> Packed (sum of lengths, K)."""
    kind, unit = layout(p)
    N, K = p.shape
    _check_segments(segments, N, f"{p.method} weight {p.shape} rows")
    out = {}
    if kind == "block":
        for i, (s, e) in enumerate(segments):
            tail_ok = e == N and i == len(segments) - 1
            if s % unit or (e % unit and not tail_ok):
                raise InputError(f"block_wise_fp8 weight {p.shape}: rows [{s}, {e}) do not fall on "
                                 f"{unit}-row block boundaries (a shard must hold whole blocks; N per rank "
                                 f"{e - s} % {unit} = {(e - s) % unit})")
        blocks = [(s // unit, -(-e // unit)) for s, e in segments]
        out["weight_scale_inv"] = np.concatenate([p.arrays["weight_scale_inv"][a:b] for a, b in blocks])
    for key, a in p.arrays.items():
        if key == "activation_scale":
            out[key] = a                                 # per tensor: the same on every rank
        elif kind == "ccq":                              # N is the last axis
            out[key] = np.concatenate([a[..., s:e] for s, e in segments], axis=-1)
        elif key not in out:
            out[key] = np.concatenate([a[s:e] for s, e in segments])          # (n_r, ...) rows follow N
    rows = sum(e - s for s, e in segments)
    return _tag(p, 0, segments, (rows, K), out)


def take_cols(p: Packed, start: int, stop: int) -> Packed:
    """Row-parallel piece: input columns [start, stop) of p -> Packed (N, stop - start)."""
    kind, unit = layout(p)
    N, K = p.shape
    _check_segments([(start, stop)], K, f"{p.method} weight {p.shape} columns")
    a, meta = p.arrays, dict(p.meta)
    out = {k: v for k, v in a.items() if k == "activation_scale"}
    copied = ["activation_scale"]
    if kind == "dense":
        out["w"] = a["w"][:, start:stop]
    elif kind == "channel":
        out["quant_weight"], out["weight_scale"] = a["quant_weight"][:, start:stop], a["weight_scale"]
        copied.append("weight_scale")
    elif kind == "ccq":
        if start % CCQ_K or (stop % CCQ_K and stop != K):
            raise InputError(f"wint2 weight {p.shape}: columns [{start}, {stop}) are not whole {CCQ_K}-column "
                             f"scale bytes (K per rank {stop - start} = {(stop - start) / CCQ_K:g} x {CCQ_K}); a K "
                             "shard must hold whole bytes of two 64-row local scales")
        hi = a["quant_weight"].shape[0] * 4 if stop == K else stop                 # the last shard keeps Kp
        out["quant_weight"] = a["quant_weight"][start // 4:hi // 4]
        out["weight_scale"] = a["weight_scale"][start // CCQ_K:hi // CCQ_K]
        for key in CCQ_ARRAYS[2:]:                       # per column (N): the same on every K shard
            out[key] = a[key]
            copied.append(key)
    elif kind == "block":
        bk = _block_k(p)
        if start % bk or (stop % bk and stop != K):
            raise InputError(f"block_wise_fp8 weight {p.shape}: columns [{start}, {stop}) do not fall on "
                             f"{bk}-column block boundaries (K per rank must be a whole number of blocks)")
        out["quant_weight"] = a["quant_weight"][:, start:stop]
        out["weight_scale_inv"] = a["weight_scale_inv"][:, start // bk:-(-stop // bk)]
    else:                                                                      # grouped
        s, bits = a["weight_scale"], unit
        G = s.shape[1]
        Kp = a["quant_weight"].shape[1] * (2 if bits == 4 else 1)
        hi = Kp if stop == K else stop                   # the last shard keeps the padding
        if G == 1:                                       # one scale per row: copy it whole
            if bits == 4 and (start % 2 or hi % 2):
                raise InputError(f"{p.method} weight {p.shape}: columns [{start}, {stop}) split a byte (int4 "
                                 "packs k = 2j, 2j+1 in one byte; boundaries must be even)")
            out["weight_scale"] = s
            copied.append("weight_scale")
            meta["group_size"] = hi - start
        else:
            g = int(p.meta["group_size"])
            if start % g or (stop % g and stop != K):
                raise InputError(f"{p.method} weight {p.shape}: columns [{start}, {stop}) are not whole "
                                 f"groups of {g} (K per rank {stop - start} = {(stop - start) / g:g} "
                                 "groups); a K shard must hold whole groups")
            out["weight_scale"] = s[:, start // g:hi // g]
        c0, c1 = (start // 2, hi // 2) if bits == 4 else (start, hi)
        out["quant_weight"] = a["quant_weight"][:, c0:c1]
    out = {k: np.ascontiguousarray(v) for k, v in out.items()}
    return _tag(p, 1, [(start, stop)], (N, stop - start), out, meta, copied)


# ------------------------------------------------------------------------------------------- whole layers

def column_shards(p: Packed, plans: list[list[Segment]]) -> list[Packed]:
    """One take_rows per rank; plans[r] = the row segments of rank r (e.g. qkv_segments)."""
    return [take_rows(p, segs) for segs in plans]


def row_shards(p: Packed, ranges: list[Segment]) -> list[Packed]:
    """One take_cols per rank; ranges[r] = rank r's K range (contiguous, covering K)."""
    return [take_cols(p, s, e) for s, e in ranges]


def reassemble(shards: list[Packed]) -> Packed:
    """The inverse of column_shards / row_shards: the whole Packed, bit for bit (replicated rows are
    written once)."""
    if not shards or any("tp" not in s.meta for s in shards):
        raise InputError("reassemble takes the non-empty list of shards that column_shards / row_shards made")
    info = shards[0].meta["tp"]
    axis, (N, K) = info["axis"], info["whole_shape"]
    first = shards[0]
    kind, unit = layout(Packed(first.method, first.shape, first.arrays, info["whole_meta"]))
    segs = sorted(seg for s in shards for seg in s.meta["tp"]["segments"])
    end = 0
    for b, e in segs:                                   # the shards must cover the whole axis, with no gap
        if b > end:
            break
        end = max(end, e)
    if end != (K if axis == 1 else N) or segs[0][0] != 0:
        raise InputError(f"shards cover {segs} of the {'K' if axis == 1 else 'N'} axis of a {(N, K)} weight, "
                         "not all of it")
    out = {}
    if axis == 1:
        shards = sorted(shards, key=lambda s: s.meta["tp"]["segments"][0])
        for key in first.arrays:
            parts = [s.arrays[key] for s in shards]
            out[key] = parts[0] if key in info["copied"] else np.concatenate(parts, axis=0 if kind == "ccq" else 1)
    elif kind == "ccq":                                 # N is the last axis of every array
        for key in first.arrays:
            a0 = first.arrays[key]
            whole = np.empty(a0.shape[:-1] + (N,), a0.dtype)
            for s in shards:
                at = 0
                for b, e in s.meta["tp"]["segments"]:
                    whole[..., b:e] = s.arrays[key][..., at:at + e - b]
                    at += e - b
            out[key] = whole
    else:
        for key in first.arrays:
            if key == "activation_scale":
                out[key] = first.arrays[key]
                continue
            div = unit if (kind == "block" and key == "weight_scale_inv") else 1
            a0 = first.arrays[key]
            whole = np.empty((-(-N // div),) + a0.shape[1:], a0.dtype)
            for s in shards:
                at = 0
                for b, e in s.meta["tp"]["segments"]:
                    n = -(-e // div) - b // div
                    whole[b // div:b // div + n] = s.arrays[key][at:at + n]
                    at += n
            out[key] = whole
    return Packed(first.method, (N, K), out, dict(info["whole_meta"]))


def activation_scope(method, p: Packed):
    """How the method quantizes its input x, which decides whether row-parallel partial sums equal the whole.

    None: no activation quantization, or one static per-tensor scale (any K split is exact).
    int g: dynamic per token and group of g columns (exact when every K boundary is a multiple of g).
    "row": dynamic per token over all of K (each rank scales its own slice: close to the single-GPU result,
    not equal to it)."""
    name = p.method
    if name == "block_wise_fp8":
        return None if method.activation == "bf16" else _block_k(p)
    if name == "w4afp8":
        return 128
    if name == "wfp8afp8":
        return "row"
    if name in ("w8a8", "w4a8"):
        return None if "activation_scale" in p.arrays else "row"
    if name == "nf4" and method.activation == "int8":
        return "row"
    return None
