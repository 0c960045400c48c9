"""wint4 (W4A16): int4 weights, symmetric, one scale per (row, group of 128 K columns) by default.

group_size=-1 is FastDeploy's WINT4 (per channel: scale = amax / 7 over the whole row); groups of 64/128 are
fdlite's default because per-channel int4 loses far more accuracy (SmolLM2 ppl x2.14 vs x1.48 round-to-nearest).
Packed layout: quant_weight uint8 (N, Kp/2): byte j of row n holds k = 2j in the low nibble and k = 2j+1 in the
high nibble, two's complement (the quantizer writes -7..7; a stored -8 dequantizes as -8, which GGUF Q4_0 uses);
weight_scale float32 (N, G) = amax / 7 per group;
Kp = G * group >= K with the partial last group zero-padded. Math: q = lround(clip(W / amax * 7, -7, 7)),
W_hat = q * amax / 7. With calibration (Model.load(calibration="self")) the codes come from GPTQ (fdlite/gptq.py)
in the same layout. Round-trip error (round-to-nearest) <= scale / 2.
GGUF Q4_0 tensors load into group_size=32 as they are (codes nibble - 8 in -8..7, fp16 block scales;
fdlite/weights/gguf.py); the GPU kernels decode -8 too (fdlite_kernels/mma_wq.py stores code + 8).
"""
from __future__ import annotations

from ._grouped import Grouped


class Method(Grouped):
    name = "wint4"
