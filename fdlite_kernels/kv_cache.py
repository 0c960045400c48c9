"""Launchers for the paged KV cache kernels: kv_write.cu (RoPE + quantize-on-write) and paged_attention.cu.

A cache layer is described by a dict (built by each format in fdlite/kv, which hold the twins):
    fmt: format code of kv_codec.cuh (0 bf16, 1 int8, 2 float8_e4m3fn, 3 block_wise_fp8, 4 int4_zp)
    k, v: the layer's element arrays (num_blocks, kv_heads, block_size, D or D // 2 for int4)
    k_tok, v_tok: float32 (num_blocks, kv_heads, block_size) token scales (block_wise_fp8) or None
    k_w, v_w: write-side scales, k_r, v_r: read-side scales, k_z, v_z: zero points (kv_codec.cuh), or None
    round_to_int: bool (fp8 formats: round before the cast, as FastDeploy)
"""
from __future__ import annotations

import numpy as np

from . import load
from ._launch import BF16, COUNTERS, check, counters, expect, launch, ptr, sms

FORMATS = {0: "bf16", 1: "int8", 2: "float8_e4m3fn", 3: "block_wise_fp8", 4: "int4_zp"}
HEAD_DIMS = (8, 16, 32, 64, 128, 256)     # what paged_attention takes (rope_kv_write: any even D <= 256)
GMAX = (1, 2, 4, 8, 16)
CHUNKS = (32, 64, 128, 256)                # keys per split of paged attention (powers of two)


def split_chunk(visible: int) -> int:
    """Keys per split for contexts up to ``visible``: about 16 splits, at least 32 keys each (a decode row then
    spreads over many CTAs instead of a few long ones, each a short chain of loads; the merge's work grows with
    the split count)."""
    want = -(-visible // 16)
    return next((c for c in CHUNKS if c >= want), CHUNKS[-1])


def min_chunk(rows: int, nkv: int, visible: int, n_sm: int = 132) -> int:
    """Fewest keys per split for ``rows`` query rows (paged_attention.cu: row_chunk starts there): the smallest
    chunk from 32 whose splits of the longest context keep the grid within about 4 CTAs per SM. A batch-1 decode
    (8 (row, kv head) pairs) splits down to 32 keys; at batch 32 the 256 pairs fill the GPU alone, and one split
    of 200 keys took 33 µs where two took 47 (H100, BENCHMARKS.md): each split adds its CTA's fixed work and a
    share of the merge. At batch 8, 4 CTAs per SM beat 2 (19.6 against 23.7 µs at 200 keys)."""
    c = CHUNKS[0]
    while c < CHUNKS[-1] and rows * nkv * -(-visible // c) > 4 * n_sm:
        c *= 2
    return c


def _check_cache(c: dict, nkv: int, D: int):
    check(c["fmt"] in FORMATS, f"cache fmt = {c['fmt']}, expected one of {sorted(FORMATS)}")
    width = D // 2 if c["fmt"] == 4 else D
    for name in ("k", "v"):
        a = c[name]
        check(a.ndim == 4 and a.shape[1] == nkv and a.shape[3] == width,
              f"cache {name} has shape {a.shape}, expected (blocks, {nkv}, block_size, {width})")
        check(a.flags.c_contiguous, f"cache {name} is not C-contiguous")
    if c["fmt"] == 3:
        for name in ("k_tok", "v_tok"):
            check(c.get(name) is not None and c[name].shape == c["k"].shape[:3],
                  f"block_wise_fp8 needs {name} of shape {c['k'].shape[:3]}")


def rope_kv_write(qkv, nh: int, nkv: int, D: int, cos_t, sin_t, rope_idx, slots, cache: dict, *,
                  q_norm=None, k_norm=None, eps: float = 1e-6, interleaved: bool = False, out=None):
    """qkv: bf16 [N, (nh + 2 nkv) D]; cos_t, sin_t: float32 [T, D/2]; rope_idx, slots: int32 [N].
    Writes K (normed if k_norm, rotated) and V into ``cache`` at ``slots``; returns q: bf16 [N, nh, D]."""
    import cupy as cp  # noqa: PLC0415

    expect(qkv, "qkv", BF16, 2)
    N = qkv.shape[0]
    check(qkv.shape[1] == (nh + 2 * nkv) * D, f"qkv has {qkv.shape[1]} columns, expected (nh + 2 nkv) D = "
          f"({nh} + 2*{nkv}) * {D} = {(nh + 2 * nkv) * D}")
    check(D % 2 == 0 and D <= 256, f"head_dim = {D} must be even and <= 256")
    for name, a in (("cos_t", cos_t), ("sin_t", sin_t)):
        expect(a, name, np.float32, 2)
        check(a.shape[1] == D // 2, f"{name} has {a.shape[1]} columns, expected D/2 = {D // 2}")
    for name, a in (("rope_idx", rope_idx), ("slots", slots)):
        expect(a, name, np.int32, 1)
        check(a.shape[0] == N, f"{name} has {a.shape[0]} entries for N = {N} tokens")
    check((q_norm is None) == (k_norm is None), "q_norm and k_norm come together")
    _check_cache(cache, nkv, D)
    q = out if out is not None else cp.empty((N, nh, D), dtype=BF16)
    fmt = cache["fmt"]
    fn = load("kv_write", name_expressions=(f"rope_kv_write<{fmt}>",)).get_function(f"rope_kv_write<{fmt}>")
    if N:
        c, p = cache, ptr
        launch(fn, (-(-N * (nh + 2 * nkv) // 4),), (128,),
           (qkv, np.int32(N), np.int32(nh), np.int32(nkv), np.int32(D), cos_t, sin_t, rope_idx, slots,
            p(q_norm), p(k_norm), np.int32(q_norm is not None), np.float32(eps), np.int32(bool(interleaved)), q,
            c["k"], c["v"], p(c.get("k_tok")), p(c.get("v_tok")), p(c.get("k_w")), p(c.get("v_w")),
            p(c.get("k_z")), p(c.get("v_z")), np.int32(bool(c.get("round_to_int"))), np.int32(c["k"].shape[2])),
           pdl=True)
    return q


TC_HEAD_DIMS = (64, 128)                   # paged_attn_tc (tensor cores); other head dims take paged_attn


def paged_attention(q, cache: dict, block_tables, row_seq, row_pos, *, window: int | None, scale: float,
                    max_len: int, out=None, tensor_cores: bool | None = None, warps: int | None = None,
                    min_keys: int | None = None, ctas_per_row: int | None = None):
    """q: bf16 [N, nh, D]; block_tables: int32 [B, max_blocks]; row_seq, row_pos: int32 [N] (sequence row and
    position of each query). max_len bounds every row's visible keys (it sizes the split grid, so a captured
    graph stays valid for any context up to it). Returns o: bf16 [N, nh, D].
    tensor_cores (default: head_dim in TC_HEAD_DIMS) picks paged_attn_tc over paged_attn; warps (4 or 8) and
    min_keys (a power of two in CHUNKS: the fewest keys per split) override the launch plan, for benchmarks;
    ctas_per_row (paged_attn_tc) caps the CTAs that share a row's splits (each loops over several)."""
    import cupy as cp  # noqa: PLC0415

    expect(q, "q", BF16, 3)
    N, nh, D = q.shape
    nkv = cache["k"].shape[1]
    check(D in HEAD_DIMS, f"head_dim = {D}: paged attention takes {HEAD_DIMS}")
    check(nh % nkv == 0 and nh // nkv <= GMAX[-1], f"{nh} query heads over {nkv} kv heads: the group must be "
          f"a whole number <= {GMAX[-1]}")
    _check_cache(cache, nkv, D)
    expect(block_tables, "block_tables", np.int32, 2)
    for name, a in (("row_seq", row_seq), ("row_pos", row_pos)):
        expect(a, name, np.int32, 1)
        check(a.shape[0] == N, f"{name} has {a.shape[0]} entries for N = {N} rows")
    g = nh // nkv
    gmax = next(x for x in GMAX if x >= g)
    visible = min(max_len, window) if window else max_len
    chunk = split_chunk(visible)
    S = max(1, -(-visible // chunk))
    n_sm = sms(cp.cuda.Device().id)
    tc = D in TC_HEAD_DIMS if tensor_cores is None else bool(tensor_cores)
    check(not tc or D in TC_HEAD_DIMS, f"head_dim = {D}: paged_attn_tc takes {TC_HEAD_DIMS}")
    if warps is None:   # batch 1/2 (<= 16 (row, kv head) pairs): fatter CTAs, fewer splits (BENCHMARKS.md)
        warps = 8 if N * nkv <= 16 and (not tc or 4 * 8 * gmax * D <= 48 * 1024) else 4
    check(warps in (4, 8), f"warps = {warps}, expected 4 or 8")
    cmin = max(min_chunk(N, nkv, visible, n_sm), 64 if warps == 8 else 32)
    if min_keys is not None:
        check(min_keys in CHUNKS, f"min_keys = {min_keys}, expected one of {CHUNKS}")
        cmin = min_keys
    # Every row's splits hold at least cmin keys (row_chunk), so no row uses more than ceil(visible / cmin) of them:
    # where cmin is the larger, the grid stops there. Its other CTAs would only exit, and at batch 32 they were
    # most of the grid (2304 CTAs for 512 busy ones, max_len 264).
    S = min(S, -(-visible // cmin))
    o = out if out is not None else cp.empty((N, nh, D), dtype=BF16)
    if not N:
        return o
    check(o.shape == (N, nh, D) and o.dtype == BF16 and o.flags.c_contiguous,
          f"out: {o.dtype} {o.shape}, expected C-contiguous bf16 {(N, nh, D)}")
    po = cp.empty((N, nh, S, D), np.float32) if S > 1 else o       # partials: read only where a row splits
    pm = cp.empty((N, nh, S), np.float32) if S > 1 else o
    pl = cp.empty((N, nh, S), np.float32) if S > 1 else o
    fmt = cache["fmt"]
    name = f"paged_attn{'_tc' if tc else ''}<{fmt}, {gmax}, {D}, {warps}>"
    smem = 4 * warps * gmax * D if tc else 4 * g * D     # tc: each warp's output
    check(smem <= 48 * 1024, f"paged_attn_tc with {warps} warps, {gmax} heads per kv head and head_dim {D} needs "
          f"{smem} bytes of shared memory (> 49152): use warps=4")
    fn = load("paged_attention", name_expressions=(name,)).get_function(name)
    c, p = cache, ptr
    step = min(COUNTERS // nkv, 65535)             # rows per launch: a counter per (row, kv head); grid z <= 65535
    for r0 in range(0, N, step):
        r1 = min(N, r0 + step)
        # paged_attn_tc loops over a row's splits: about 4 CTAs per SM over all (row, kv head) pairs, at most S each
        # (batch 32 with max_len 4096: 3 CTAs a row instead of 16, most of which only exited at a short context)
        sx = min(S, ctas_per_row or -(-4 * n_sm // ((r1 - r0) * nkv))) if tc else S
        launch(fn, (sx, nkv, r1 - r0), (32 * warps,), (
            q[r0:r1], np.int32(nh), np.int32(nkv), c["k"], c["v"], p(c.get("k_tok")), p(c.get("v_tok")),
            p(c.get("k_r")), p(c.get("v_r")), p(c.get("k_z")), p(c.get("v_z")), block_tables,
            np.int32(block_tables.shape[1]), np.int32(c["k"].shape[2]), row_seq[r0:r1], row_pos[r0:r1],
            np.int32(window or 0), np.float32(scale), np.int32(cmin), np.int32(chunk), np.int32(S), po[r0:r1],
            pm[r0:r1], pl[r0:r1], counters(), o[r0:r1]), shared_mem=smem, pdl=True)
    return o
