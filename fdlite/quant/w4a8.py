"""w4a8 (W4A8): int4 weights x int8 activations, on any linear (FastDeploy applies it to MoE experts only).

Weights: as wint4 (symmetric, -7..7, two's-complement nibbles, low nibble = even k), groups of 128 by default;
group_size=-1 is FastDeploy's per-channel layout, whose kernel scale Wm * A / (127 * 112) is the same number as
s_w * s_x below with the nibble read as a value in +-112 (q << 4). Activations: dynamic int8 per token and
weight group (s_x[m, g] = amax over the token's group / 127, RNE; per token when group_size=-1), or static per
tensor from ``activation_scale`` (abs-max A) when the checkpoint has it.
Packed layout: quant_weight uint8 (N, Kp/2), weight_scale float32 (N, G) [, activation_scale float32 (1,)].
GEMM: y[m, n] = sum_g (sum_{k in g} q_x q_w) * s_x[m, g] * s_w[n, g]; reference x_hat @ W_hat.T in float32.
"""
from __future__ import annotations

from ._common import act_int8_per_token
from ._grouped import Grouped


class Method(Grouped):
    name = "w4a8"
    device_matmul = "matmul_w4a8"      # gemv_rows (decode) / mma_q8 (prefill), groups of 128

    def act(self, x, p, xp):
        a = p.arrays.get("activation_scale")
        if a is not None:
            return act_int8_per_token(x, xp, float(a.reshape(-1)[0]))
        # dynamic: per token and weight group (the int8 dot products are formed per group anyway, so one more
        # per-(token, group) scale costs nothing in the kernel); per channel (FastDeploy) -> per token
        return act_int8_per_token(x, xp, group=None if self.group_size == -1 else self.group_size)
