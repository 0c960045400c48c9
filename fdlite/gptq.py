"""Calibrated rounding for the 4- and 2-bit methods: GPTQ (Frantar et al. 2022, arXiv:2210.17323).

Statistics: H = sum_x x x^T over the inputs each linear sees while the *dense* model runs the calibration ids
(fdlite.calibration: "self" = text the model generates, or a text file). Inputs are collected in one forward by
swapping each Linear's method for a recorder (the forward is not edited); the lm_head is skipped.
Rounding: columns k = 0..K-1 are quantized in order; each column's rounding error e = (w_k - q_k) / [H^-1]_kk is
fed back into the columns not yet quantized (w_j -= e [H^-1]_kj, through the upper Cholesky factor of H^-1), so
later columns compensate what earlier ones lost, weighted by how the inputs correlate. Group scales are chosen
when the loop reaches a group's first column, from the error-updated weights (so they see the feedback).
act_order (the default): visit columns by decreasing H_kk with the group scales fixed up front ("static
groups", each from a clip search weighted by H_kk), so the packed layout does not change. The result is packed
exactly as the method's own quantize packs it.
Hessian shrinkage: GPTQ rounds against (1 - 0.2) H + 0.2 diag(H) (shrink_hessian). The self sample (6144 tokens)
estimates the input correlations poorly and GPTQ fits whatever it is given; on SmolLM2 wint4 (group 128) the
wikitext ratio went 1.268 -> 1.257 / 1.223 / 1.231 at 0.1 / 0.2 / 0.3 (damping alone, 0.01..1, did not do it).
"""
from __future__ import annotations

import logging
import time

import numpy as np

from .errors import InputError
from .quant._common import check_weight
from .quant._grouped import Grouped

log = logging.getLogger("fdlite")


CALIBRATION_SEQS, CALIBRATION_LEN = 48, 128     # self-generated sequences x tokens (cached on disk)
HESSIAN_SHRINK = 0.2                            # weight of diag(H) in the shrunk Hessian (shrink_hessian)


class _Stop(Exception):
    """Raised by the lm_head recorder: everything GPTQ needs has been seen."""


class _Recorder:
    """Stands in for a Linear's method: adds x^T x to H[name], then computes as before."""

    def __init__(self, method, name, hessians):
        self.method, self.name, self.hessians = method, name, hessians

    def matmul(self, x, p, xp):
        xh = np.asarray(x.get() if hasattr(x, "get") else x, np.float64)               # (M, K)
        h = self.hessians.get(self.name)
        self.hessians[self.name] = xh.T @ xh + (0 if h is None else h)                  # (K, K)
        return self.method.matmul(x, p, xp)

    def matmul_swiglu(self, x, p, xp):
        return None                    # the unfused path: its matmul above records x


class _StopHead:
    def matmul(self, x, p, xp):
        raise _Stop


def collect_hessians(model, ids: list[list[int]]) -> dict[str, np.ndarray]:
    """name -> (K, K) float64 sum of x x^T for every named Linear of ``model`` (loaded with named linears)."""
    from .quant.base import iter_linears  # noqa: PLC0415

    hessians: dict[str, np.ndarray] = {}
    linears = [x for x in iter_linears(model.params) if getattr(x.method, "linear", None)]
    head = model.params.get("lm_head")
    saved = [(lin, lin.method) for lin in linears] + ([(head, head.method)] if head is not None else [])
    try:
        for lin in linears:
            lin.method = _Recorder(lin.method, lin.method.linear, hessians)
        if head is not None:
            head.method = _StopHead()
        by_len: dict[int, list] = {}
        for s in ids:
            by_len.setdefault(len(s), []).append(s)
        for seqs in by_len.values():
            try:
                model.logits(np.asarray(seqs, np.int64))          # (B, T): one batch per length
            except _Stop:
                pass
    finally:
        for lin, m in saved:
            lin.method = m
    return hessians


def attach(quant, calibration, quantize_lm_head, load_dense):
    """Model.load's hook: add quantize_lm_head and, when calibration is set and the method rounds with it,
    the Hessians collected on a dense copy of the model (load_dense(**kw) -> Model)."""
    name, params = quant[0], dict(quant[1])
    if quantize_lm_head:
        params["quantize_lm_head"] = True
    if calibration is None:
        return name, params
    if not (calibration == "self" or isinstance(calibration, str)):
        raise InputError(f"calibration={calibration!r} must be None, 'self' or the path of a text file")
    if params.get("_packed") is not None:
        log.warning("fdlite: calibration=%r ignored: the checkpoint is already quantized", calibration)
        return name, params
    from .quant_config import make_method  # noqa: PLC0415

    probe = make_method(name, {k: v for k, v in params.items() if k not in ("quantize_lm_head", "_hessians")})
    if not probe.needs_calibration:
        log.info("fdlite: calibration=%r ignored: %s rounds to nearest (only 4- and 2-bit methods use it)",
                 calibration, name)
        return name, params
    from .calibration import calibration_ids  # noqa: PLC0415

    t0 = time.time()
    dense = load_dense(quantization={"quantization": "dense", "_hessians": {}})    # linears carry their names
    try:
        ids = calibration_ids(dense, calibration, num_seqs=CALIBRATION_SEQS, seq_len=CALIBRATION_LEN)
        t1 = time.time()
        params["_hessians"] = collect_hessians(dense, ids)
    finally:
        dense.close()
    log.info("fdlite: calibration ids %.1f s, Hessians of %d linears %.1f s", t1 - t0, len(params["_hessians"]),
             time.time() - t1)
    return name, params


def shrink_hessian(H: np.ndarray, lam: float) -> np.ndarray:
    """(1 - lam) H + lam diag(H): the off-diagonal correlations pulled toward 0, the per-input energies kept.
    6144 self-generated tokens estimate a 1536 x 1536 H poorly, and GPTQ fits whatever correlations it is given."""
    if lam == 0:
        return H
    S = (1 - lam) * np.asarray(H, np.float64)
    S[np.diag_indices_from(S)] = np.diag(H)
    return S


def _hinv_chol(H: np.ndarray, percdamp: float) -> tuple[np.ndarray, np.ndarray]:
    """-> (upper Cholesky factor of (H + damp I)^-1, dead columns). Dead inputs (never active) get H_kk = 1."""
    H = np.array(H, np.float64)
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    damp = percdamp * float(np.mean(np.diag(H)))
    for _ in range(6):     # raise the damping until H is positive definite (float64 rounding on tiny models)
        try:
            L = np.linalg.cholesky(H + damp * np.eye(len(H)))
            Linv = np.linalg.inv(L)                       # H^-1 = L^-T L^-1
            return np.linalg.cholesky(Linv.T @ Linv).T, dead
        except np.linalg.LinAlgError:
            damp *= 10
    raise InputError("GPTQ: the calibration Hessian is not positive definite even with damping")


def _search_amax(m, w, d, g, grid=np.linspace(0.6, 1.0, 9)):
    """Per (row, group): the clipped abs-max alpha * amax (alpha in grid) whose round-to-nearest error,
    weighted by the input energy d_k = H_kk, is smallest (a clipped scale spends fewer codes on outliers)."""
    N, K = w.shape
    pad = -K % g
    wg = np.pad(w, ((0, 0), (0, pad))).reshape(N, -1, g)                          # (N, G, g)
    dg = np.pad(d, (0, pad)).reshape(1, -1, g).astype(np.float32)                 # (1, G, g)
    amax = np.abs(wg).max(-1, keepdims=True)                                      # (N, G, 1)
    best, best_err = amax[..., 0].copy(), np.full(amax.shape[:2], np.inf, np.float32)
    for alpha in grid:
        a = (amax * np.float32(alpha)).astype(np.float32)
        err = (((wg - m.values(m.codes(wg, a), m.scale_of(a))) ** 2) * dg).sum(-1)   # (N, G)
        better = err < best_err
        best[better], best_err[better] = a[..., 0][better], err[better]
    return best


def gptq_quantize(m, w, H, what: str = "weight", percdamp: float = 0.1, act_order: bool = True,
                  blocksize: int = 128, shrink: float = HESSIAN_SHRINK):
    """w (N, K), H (K, K) -> Packed in m's layout with GPTQ-rounded codes (m: a grouped scalar method or wint2)."""
    w = check_weight(w, what)
    N, K = w.shape
    if H.shape != (K, K):
        raise InputError(f"{what}: Hessian of shape {H.shape} does not match the weight's K = {K}")
    H = shrink_hessian(H, shrink)
    if not isinstance(m, Grouped):
        return m.quantize(w, what=what, hessian=H)          # wint2 runs its own vector GPTQ
    g = m.group_of(K)
    G = -(-K // g)
    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(K)
    U, dead = _hinv_chol(H[np.ix_(perm, perm)] if act_order else H, percdamp)   # in visiting order
    W = np.array(w, np.float64)
    W[:, perm[dead]] = 0.0
    amax = _search_amax(m, w, np.diag(H), g) if act_order else None               # (N, G) static scales
    if act_order:
        W = W[:, perm]
    if amax is None:
        amax = np.zeros((N, G), np.float32)
    codes = np.zeros((N, G * g), np.int8)
    bs = g if (not act_order and g <= 256) else blocksize
    for i1 in range(0, K, bs):
        i2 = min(i1 + bs, K)
        W1 = W[:, i1:i2].copy()                                                    # (N, B)
        E1 = np.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            grp = col // g
            if not act_order and col % g == 0:   # a group starts: its scale sees the feedback so far
                amax[:, grp] = np.abs(W1[:, i:i + g]).max(1) if g <= bs else np.abs(W[:, col:col + g]).max(1)
            a = amax[:, grp:grp + 1].astype(np.float32)                            # (N, 1)
            q = m.codes(W1[:, i:i + 1].astype(np.float32), a)                      # (N, 1)
            v = m.values(q, m.scale_of(a)).astype(np.float64)[:, 0]
            codes[:, col] = q[:, 0]
            e = (W1[:, i] - v) / U1[i, i]
            W1[:, i:] -= np.outer(e, U1[i, i:])
            E1[:, i] = e
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    return m.pack(codes, m.scale_of(amax), (N, K))


def gptq_vector(W, H, scale, book, percdamp: float = 0.1, blocksize: int = 128):
    """GPTQ over 4-column chunks for a vector codebook (wint2): W (N, Kp), H (Kp, Kp), scale (N, Kp) per
    column, book (256, 4) in code units -> (N, Kp/4) uint8 codeword indices. Each chunk takes its nearest
    codeword, then its 4 column errors are fed forward one by one."""
    from .quant.wint2 import _nearest  # noqa: PLC0415

    N, Kp = W.shape
    U, dead = _hinv_chol(H, percdamp)
    W = np.array(W, np.float64)
    W[:, dead] = 0.0
    codes = np.zeros((N, Kp // 4), np.uint8)
    for i1 in range(0, Kp, blocksize):
        i2 = min(i1 + blocksize, Kp)
        W1, U1 = W[:, i1:i2].copy(), U[i1:i2, i1:i2]                              # (N, B)
        E1 = np.zeros_like(W1)
        for i in range(0, i2 - i1, 4):
            s = scale[:, i1 + i:i1 + i + 4]                                        # (N, 4)
            idx = _nearest((W1[:, i:i + 4] / s).astype(np.float32), book)         # (N,)
            codes[:, (i1 + i) // 4] = idx
            v = book[idx] * s                                                      # (N, 4)
            for j in range(4):
                e = (W1[:, i + j] - v[:, j]) / U1[i + j, i + j]
                W1[:, i + j:] -= np.outer(e, U1[i + j, i + j:])
                E1[:, i + j] = e
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    return codes
