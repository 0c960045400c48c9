"""wint8 (W8A16): int8 weights, symmetric, per output channel by default, exactly as FastDeploy/Paddle
weight_quantize.

Packed layout: quant_weight int8 (N, K) (K contiguous; FastDeploy's [-127, 127], -128 unused),
weight_scale float32 (N, 1) (FastDeploy keeps it in bf16; fdlite keeps fp32).
Math (spec §4.1): amax[n] = max_k |W[n, k]|; q = lround(clip(W / amax * 127, -127, 127)) (half away from zero);
W_hat = q * amax / 127. Activations stay in the compute dtype (bf16 on the GPU, float32 on the CPU).
An all-zero row gets scale 0 and codes 0 (Paddle would divide 0/0; we guard). Round-trip error <= scale / 2.
group_size=g (a positive even number) gives one scale per (row, g columns): weight_scale (N, Kp / g), the same
math per group (fdlite/quant/_grouped.py). GGUF Q8_0 tensors load into group_size=32 as they are (codes and fp16
block scales; fdlite/weights/gguf.py), -128 included. The GPU kernels are per channel only: group-wise int8 runs
the reference formula there (fdlite/quant/_gpu.py grouped_supported).
"""
from __future__ import annotations

from ._grouped import Grouped


class Method(Grouped):
    name = "wint8"
    bits = 8
    qmin, qmax = -127, 127
    default_group = -1
    needs_calibration = False     # 8 bits: round-to-nearest is already within 0.1% of the dense ppl
