"""w8a8 (W8A8): int8 weights per output channel (as wint8) x int8 activations.

Activations: dynamic per token by default, s_x[m] = amax_m / 127, q_x = rint(x / s_x) in [-127, 127] (RNE);
static per tensor when the packed weight carries FastDeploy's ``activation_scale`` (the activation abs-max A,
q_x = clip(rint(127 x / A))). Packed layout: quant_weight int8 (N, K), weight_scale float32 (N, 1)
[, activation_scale float32 (1,)]. GEMM: y[m, n] = (sum_k q_x q_w) * s_x[m] * s_w[n] (int32 accumulate on the
GPU; the reference computes x_hat @ W_hat.T in float32, equal up to float reassociation).
"""
from __future__ import annotations

from ._common import act_int8_per_token
from ._grouped import Grouped


class Method(Grouped):
    name = "w8a8"
    device_matmul = "matmul_w8a8"      # gemv_rows (decode) / mma_q8 (prefill), per-channel weights
    bits = 8
    qmin, qmax = -127, 127
    default_group = -1
    needs_calibration = False

    def act(self, x, p, xp):
        a = p.arrays.get("activation_scale")
        return act_int8_per_token(x, xp, None if a is None else float(a.reshape(-1)[0]))
