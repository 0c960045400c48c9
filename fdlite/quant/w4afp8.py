"""w4afp8 (W4Afp8): group-128 int4 weights x fp8 e4m3 activations.

Weights (spec §4.9, group_wise_int4_weight_quantize): per (row, group of 128 K columns) amax;
q = clip(round(W / amax * 7), -8, 7) (-8 is reachable only through GPTQ's error feedback, never by rounding);
W_hat = q * amax / 7. Packed layout: quant_weight uint8 (N, Kp/2), two's-complement nibbles, low nibble = even
k; weight_scale float32 (N, G) = amax / 7 (FastDeploy's kernel scale amax / (448 * 7 * 2^-9) is this times the
fp8 normalisation its kernel uses). Activations: dynamic fp8 per token and group of 128 K columns,
s_x = max(amax, 1e-10) / 448, x_hat = e4m3(x / s_x) * s_x (partial last group allowed).
Not done: FastDeploy's block-Hadamard rotation of down_proj (hadamard_block_size) for MoE experts.
"""
from __future__ import annotations

from ._common import act_fp8
from ._grouped import Grouped


class Method(Grouped):
    name = "w4afp8"
    qmin, qmax = -8, 7
    device_matmul = "matmul_w4afp8"    # gemv_rows (decode) / mma_q8 (prefill), groups of 128, sm_89+

    def act(self, x, p, xp):
        return act_fp8(x, 128, xp)
