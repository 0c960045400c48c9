"""Host-side parts of fdlite_kernels (no GPU): source loading with #line markers and the weight repacks that
define what each lane of a kernel reads."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fdlite_kernels
from fdlite_kernels.gemv_wint4 import pack_int4
from fdlite_kernels.mma_wq import KT, padded, repack


def test_source_inlines_includes_with_line_markers():
    src = fdlite_kernels.source("mma_wq")
    assert src.startswith('#line 1 "mma_wq.cu"')
    assert '#line 1 "common.cuh"' in src and '#include "common.cuh"' not in src
    assert "f32_to_bf16" in src
    with pytest.raises(FileNotFoundError, match="no nope.cu"):
        fdlite_kernels.source("nope")


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(1, 300), bits=st.sampled_from([8, 4]), seed=st.integers(0, 2**16))
def test_repack_puts_each_mma_fragment_in_its_lane(n, k, bits, seed):
    """Emulate the kernel's reads: lane 4g+t of tile (nt, kt), step j holds row 8nt+g at k = KT kt + 16j +
    {2t, 2t+1, 2t+8, 2t+9} (zero outside the matrix)."""
    rng = np.random.default_rng(seed)
    lo, hi = (-127, 128) if bits == 8 else (-8, 8)
    q = rng.integers(lo, hi, (n, k))
    qp = repack(q, bits)
    Np, Kp = padded(n, k, bits)
    kt_n = Kp // KT[bits]
    assert qp.dtype == np.uint8 and qp.size == Np * Kp * bits // 8
    tiles = qp.reshape(-1, 32, 16)
    qz = np.zeros((Np, Kp), np.int64)
    qz[:n, :k] = q
    for nt in range(Np // 8):
        for kt in range(kt_n):
            tile = tiles[nt * kt_n + kt]
            for lane in range(32):
                g, t = lane >> 2, lane & 3
                for j in range(KT[bits] // 16):
                    cols = kt * KT[bits] + 16 * j + np.array([2 * t, 2 * t + 1, 2 * t + 8, 2 * t + 9])
                    want = qz[8 * nt + g, cols]
                    if bits == 8:
                        got = tile[lane, 4 * j:4 * j + 4].view(np.int8)
                    else:
                        b = tile[lane, 2 * j:2 * j + 2].astype(np.int64)
                        got = np.array([b[0] & 15, b[0] >> 4, b[1] & 15, b[1] >> 4]) - 8
                    assert np.array_equal(got, want)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 8), k2=st.integers(1, 16), seed=st.integers(0, 2**16))
def test_pack_int4_round_trip(n, k2, seed):
    q = np.random.default_rng(seed).integers(-8, 8, (n, 2 * k2))
    p = pack_int4(q)
    back = np.stack([(p & 15), (p >> 4)], -1).reshape(n, -1).astype(np.int64) - 8
    assert np.array_equal(back, q)
