"""Launchers for moe.cu — an MoE layer's routed experts on the GPU with no host sync (graph-capturable).

Shapes: N tokens, H hidden, E experts (E <= MAX_E), k = top_k, R = N k rows; row r is (token r // k, slot r % k).

moe_route(x, router_w, bias, top_k, norm_min) -> (weights f32 [N, k], ids int32 [N, k])
    x bf16 [N, H] (H % 8 == 0); router_w f32 [E, H]; bias f32 [E] or None. logits = x @ router_w.T (fp32),
    p = softmax, ids = top-k of p + bias (ties -> lower expert, each row in decreasing score), weights =
    p[ids] / max(sum, norm_min). Twin: fdlite.moe.route.
moe_align(ids, num_experts) -> Plan: the R rows sorted by expert (stable), the experts used (ascending) and
    each one's range of sorted rows; ids int32 [N, k]. Twin: fdlite.moe_gpu.align.
moe_gemm(x, stack, plan, xdiv) -> y bf16 [R, N]: y[r] = x[r // xdiv] @ W_{ids[r]}.T, x bf16 [R / xdiv, Kx], W_e the
    (N, K) weight of expert e in ``stack`` (an ExpertStack) over its first Kx columns (packed: Kx even and <= the
    padded K, x reads as zero past Kx; bf16: Kx = K). The down projection takes x = fused_ops.silu_mul(gu).
    From SK_MIN_TOKENS tokens (with Kx = K) it runs mma_sk.cu's tensor-core GATHER variant (each used expert's
    weights read once per 16 of its rows), below that moe.cu's GEMV. Twin: fdlite.moe_gpu.gemm_ref.
moe_combine(y, weights) -> out bf16 [N, H] = sum over slots j of weights[:, j] * y[j::k] (fp32, slot order,
    one rounding). Twin: fdlite.moe_gpu.combine.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import load
from ._launch import BF16, check, expect, sms
from .mma_wq import KT

MAX_E = 1024          # moe.cu MAX_E
_LTOK = 4             # moe.cu LTOK: tokens per moe_logits block
_MMAX = (1, 4, 8)     # rows of one expert per GEMV pass; an expert has at most one row per token
_NAMES = ("moe_logits", "moe_topk", "moe_align", "moe_combine") + tuple(
    f"moe_gemm_packed<{b}, {m}>" for b in (8, 4) for m in _MMAX) + tuple(f"moe_gemm_bf16<{m}>" for m in _MMAX)


def _fn(name: str):
    return load("moe", name_expressions=_NAMES).get_function(name)


@dataclass(frozen=True)
class ExpertStack:
    """One projection (gate_up or down) of all E routed experts in one array per tensor, W_e: (N, K).

    kind "packed": arrays qp uint8 [E, Np K bits / 8] (row e = fdlite_kernels.mma_wq.repack of expert e's codes;
    Np = N rounded up to 16, K the padded K: a multiple of mma_wq.KT[bits]) and scale f32 [E, Np, G] (bits 8: per
    channel, G = 1, group = K; bits 4: G = K / group, group a multiple of 16).
    kind "bf16": arrays w bf16 [E, N, K] row-major (K % 8 == 0).
    """

    kind: str
    N: int
    K: int
    arrays: dict
    bits: int = 16
    group: int = 0

    @property
    def num_experts(self) -> int:
        return int(next(iter(self.arrays.values())).shape[0])


@dataclass(frozen=True)
class Plan:
    """moe_align's result: buf int32 [R + 2 S + 1] = sorted [R] | experts [S] | offsets [S + 1], S = min(E, R).

    sorted: row indices r = token k + slot ordered by expert (stable); experts[s]: the s-th used expert
    (ascending); its rows are sorted[offsets[s]:offsets[s + 1]]; slots past the used experts are empty."""

    buf: object
    tokens: int
    top_k: int
    num_experts: int

    @property
    def R(self) -> int:
        return self.tokens * self.top_k

    @property
    def S(self) -> int:
        return min(self.num_experts, self.R)

    @property
    def sorted(self):
        return self.buf[:self.R]

    @property
    def experts(self):
        return self.buf[self.R:self.R + self.S]

    @property
    def offsets(self):
        return self.buf[self.R + self.S:]


def moe_route(x, router_w, bias, top_k: int, norm_min: float, out=None):
    """out: None or (weights, ids) arrays to write (f32 [N, k], int32 [N, k])."""
    import cupy as cp  # noqa: PLC0415

    expect(x, "x", BF16, 2)
    expect(router_w, "router_w", np.float32, 2)
    N, H = x.shape
    E = router_w.shape[0]
    check(router_w.shape[1] == H, f"router_w has shape {router_w.shape} but x has H = {H} columns")
    check(H % 8 == 0, f"H = {H} must be a multiple of 8 (16-byte loads of x and router rows)")
    check(1 <= E <= MAX_E, f"E = {E} experts; the kernels take 1 to {MAX_E}")
    check(isinstance(top_k, (int, np.integer)) and 1 <= top_k <= E, f"top_k = {top_k} must be in [1, E = {E}]")
    check(norm_min > 0, f"norm_min = {norm_min} must be > 0")
    check(-(-N // _LTOK) <= 65535, f"N = {N} tokens: at most {65535 * _LTOK} per launch")
    if bias is not None:
        expect(bias, "bias", np.float32, 1)
        check(bias.shape[0] == E, f"bias has {bias.shape[0]} entries for E = {E} experts")
    logits = cp.empty((N, E), np.float32)
    weights, ids = out if out is not None else (cp.empty((N, top_k), np.float32), cp.empty((N, top_k), np.int32))
    expect(weights, "weights", np.float32, 2)
    expect(ids, "ids", np.int32, 2)
    check(weights.shape == ids.shape == (N, top_k), f"out shapes {weights.shape}, {ids.shape}; expected {(N, top_k)}")
    if N:
        _fn("moe_logits")((E, -(-N // _LTOK)), (256,), (x, router_w, logits, np.int32(N), np.int32(H), np.int32(E)))
        _fn("moe_topk")((-(-N // 4),), (128,), (logits, logits if bias is None else bias, weights, ids, np.int32(N),
                                                 np.int32(E), np.int32(top_k), np.int32(bias is not None),
                                                 np.float32(norm_min)))
    return weights, ids


def moe_align(ids, num_experts: int, out=None) -> Plan:
    """out: None or the int32 [R + 2 S + 1] buffer of the Plan. Rows with an id outside [0, E) are left out (their
    sorted entries stay unwritten); routing never makes one."""
    import cupy as cp  # noqa: PLC0415

    expect(ids, "ids", np.int32, 2)
    check(1 <= num_experts <= MAX_E, f"num_experts = {num_experts}; the kernels take 1 to {MAX_E}")
    N, k = ids.shape
    size = N * k + 2 * min(num_experts, N * k) + 1
    buf = out if out is not None else cp.empty(size, np.int32)
    expect(buf, "out", np.int32, 1)
    check(buf.size == size, f"out has {buf.size} entries, expected R + 2 S + 1 = {size}")
    plan = Plan(buf, N, k, num_experts)
    if not plan.R:
        buf.fill(0)                      # offsets = [0]
    else:
        _fn("moe_align")((1,), (1024,), (ids, plan.buf, np.int32(plan.R), np.int32(num_experts), np.int32(plan.S)))
    return plan


def _check_stack(st: ExpertStack, Kx: int) -> None:
    E, N, K = st.num_experts, st.N, st.K
    if st.kind == "bf16":
        w = st.arrays["w"]
        expect(w, "w", BF16, 3)
        check(w.shape == (E, N, K), f"w has shape {w.shape}, expected {(E, N, K)}")
        check(K % 8 == 0 and Kx == K, f"bf16 experts need x with K = {K} columns (a multiple of 8), got {Kx}")
        return
    check(st.kind == "packed", f"unknown expert stack kind {st.kind!r} (expected 'packed' or 'bf16')")
    check(st.bits in KT, f"bits = {st.bits}, expected 8 or 4")
    kt, Np = KT[st.bits], -(-N // 16) * 16
    qp, scale = st.arrays["qp"], st.arrays["scale"]
    expect(qp, "qp", np.uint8, 2)
    expect(scale, "scale", np.float32, 3)
    check(K % kt == 0, f"packed K = {K} must be a multiple of {kt}")
    check(qp.shape == (E, Np * K * st.bits // 8), f"qp has shape {qp.shape}, expected {(E, Np * K * st.bits // 8)} "
          f"for N = {N}, K = {K}, bits = {st.bits}")
    group = st.group
    check(group > 0 and group % 16 == 0 and K % group == 0, f"group = {group} must be a multiple of 16 dividing K = {K}")
    check(scale.shape == (E, Np, K // group), f"scale has shape {scale.shape}, expected {(E, Np, K // group)}")
    check(st.bits == 4 or group == K, f"int8 experts are per channel: group = {group} must equal K = {K}")
    check(Kx % 2 == 0 and Kx <= K, f"x has Kx = {Kx} columns for the packed K = {K}: Kx must be even and <= K")


def moe_gemm(x, stack: ExpertStack, plan: Plan, xdiv: int, out=None):
    import cupy as cp  # noqa: PLC0415

    expect(x, "x", BF16, 2)
    rows, cols = x.shape
    check(isinstance(xdiv, (int, np.integer)) and xdiv >= 1 and rows * xdiv == plan.R,
          f"x has {rows} rows and xdiv = {xdiv}, so it covers {rows * xdiv} rows, but the plan has R = {plan.R} "
          f"({plan.tokens} tokens x top_k {plan.top_k})")
    Kx = cols
    check(stack.num_experts == plan.num_experts, f"the stack holds {stack.num_experts} experts, the plan routes "
          f"over {plan.num_experts}")
    _check_stack(stack, Kx)
    R, S, N = plan.R, plan.S, stack.N
    y = out if out is not None else cp.empty((R, N), dtype=BF16)
    expect(y, "out", BF16, 2)
    check(y.shape == (R, N), f"out has shape {y.shape}, expected {(R, N)}")
    if not R:
        return y
    if plan.tokens >= SK_MIN_TOKENS and _sk_ok(stack, Kx):
        return _moe_sk(x, stack, plan, xdiv, y)
    mmax = next((m for m in _MMAX if plan.tokens <= m), _MMAX[-1])     # rows per expert <= tokens
    ints = [np.int32(v) for v in (R, S, N, stack.K)]
    if stack.kind == "packed":
        a = stack.arrays
        fn = _fn(f"moe_gemm_packed<{stack.bits}, {mmax}>")
        fn((-(-N // 16), S), (256,), (x, a["qp"], a["scale"], plan.buf, y, *ints, np.int32(Kx), np.int32(stack.group),
                                      np.int32(xdiv)))
    else:
        fn = _fn(f"moe_gemm_bf16<{mmax}>")
        fn((-(-N // 32), S), (256,), (x, stack.arrays["w"], plan.buf, y, *ints, np.int32(xdiv)))
    return y


SK_MIN_TOKENS = 5     # from here the experts' rows go through mma_sk's tensor-core GATHER variant, below the GEMV


def _sk_ok(stack: ExpertStack, Kx: int) -> bool:
    """mma_sk reads x in 16-byte chunks of the stack's whole K, and stages int4 scales it can hold."""
    from .mma_sk import KT as SK_KT  # noqa: PLC0415
    from .mma_sk import supports  # noqa: PLC0415

    if Kx != stack.K:
        return False
    return stack.K % SK_KT[16] == 0 if stack.kind == "bf16" else supports(stack.bits, stack.group)


def _moe_sk(x, stack: ExpertStack, plan: Plan, xdiv: int, y):
    """Every used expert's rows (at most one per token, so tokens / 16 row tiles) times its weights: grid (column
    blocks, slots x row tiles, K splits); empty slots and tiles exit at once. Same result as the GEMV path."""
    import cupy as cp  # noqa: PLC0415

    from . import mma_sk as sk  # noqa: PLC0415
    from ._launch import ptr  # noqa: PLC0415

    packed = stack.kind == "packed"
    bits, N, K, R, S = (stack.bits if packed else 16), stack.N, stack.K, plan.R, plan.S
    Np = -(-N // 16) * 16 if packed else -(-N // 8) * 8
    rowtiles, cols = -(-plan.tokens // 16), -(-Np // sk.BN)
    # the K splits of a plain launch over one 16-row tile per expert slot (most experts hold fewer than 16 rows)
    _, splits, per, _ = sk.plan(16 * S, Np, K, bits, 1, None, 8, sms(cp.cuda.Device().id))
    if packed:
        qp, scale, group = stack.arrays["qp"], stack.arrays["scale"], stack.group
        qp_es, scale_es = qp.shape[1] // 16, scale.shape[1] * scale.shape[2]     # per expert: uint4s, floats
    else:
        qp, scale, group, qp_es, scale_es = stack.arrays["w"], ptr(None), K, N * K // 8, 0
    sk.launch(bits, bits == 4 and group % KT[4] == 0, 1, 8, (cols, S * rowtiles, splits), per, x, qp, scale, y, R, N,
              Np, K, group, gather=(plan.buf, S, rowtiles, xdiv, qp_es, scale_es))
    return y


def moe_combine(y, weights, out=None):
    import cupy as cp  # noqa: PLC0415

    expect(y, "y", BF16, 2)
    expect(weights, "weights", np.float32, 2)
    N, k = weights.shape
    R, H = y.shape
    check(R == N * k, f"y has {R} rows but weights are ({N}, {k}): expected N k = {N * k}")
    o = out if out is not None else cp.empty((N, H), dtype=BF16)
    expect(o, "out", BF16, 2)
    check(o.shape == (N, H), f"out has shape {o.shape}, expected {(N, H)}")
    if N * H:
        _fn("moe_combine")((min(-(-N * H // 256), 132 * 32),), (256,), (y, weights, o, np.int32(N), np.int32(H),
                                                                      np.int32(k)))
    return o
