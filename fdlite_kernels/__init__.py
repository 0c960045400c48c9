"""CUDA kernels for fdlite, compiled at run time through CuPy (NVRTC) and cached per device.

``load(name, **defines)`` reads ``<name>.cu`` from this package, prefixes ``#line 1 "<name>.cu"`` so
compile errors point into the file, turns ``defines`` into ``-DNAME=value``, compiles once per
(device, name, defines) and returns the ``cupy.RawModule``. This package imports nothing from ``fdlite``:
it can be tested and benchmarked alone; the NumPy twins that define what each kernel computes live in
``fdlite/quant`` and ``fdlite/kv``.
"""
from __future__ import annotations

import functools
import re
from importlib import resources

_HERE = resources.files(__package__)


def source(name: str) -> str:
    """The CUDA source of ``name`` with its includes inlined and a #line directive per file."""
    path = _HERE.joinpath(f"{name}.cu")
    if not path.is_file():
        raise FileNotFoundError(f"fdlite_kernels has no {name}.cu")
    return _inline(f"{name}.cu", set())


# a local include, a trailing // comment allowed (left out, NVRTC would not find the file at run time)
_LOCAL_INCLUDE = re.compile(r'\s*#\s*include\s+"([^"]+)"\s*(?://.*)?$')


def _inline(fname: str, seen: set[str]) -> str:
    # NVRTC has no include path into package data, so local "x.cuh" includes are inlined here.
    if fname in seen:
        return ""
    seen.add(fname)
    out = [f'#line 1 "{fname}"']
    for i, line in enumerate(_HERE.joinpath(fname).read_text().splitlines(), start=1):
        m = _LOCAL_INCLUDE.match(line)
        if m:
            out.append(_inline(m.group(1), seen))
            out.append(f'#line {i + 1} "{fname}"')
        else:
            out.append(line)
    return "\n".join(out)


def _arch(cp) -> str:
    major, minor = cp.cuda.Device().compute_capability[:-1], cp.cuda.Device().compute_capability[-1]
    return f"sm_{major}{minor}" + ("a" if (major, minor) == ("9", "0") else "")


@functools.lru_cache(maxsize=None)
def _compile(device_id: int, name: str, defines: tuple[tuple[str, object], ...], name_expressions: tuple[str, ...]):
    import cupy as cp  # noqa: PLC0415

    with cp.cuda.Device(device_id):
        # FDLITE_NVRTC hides the explicit template instantiations kept for nvcc (CI's compile check): here
        # name_expressions instantiate just the kernels a launcher asks for, so a module compiles in seconds
        opts = ("-std=c++17", f"--gpu-architecture={_arch(cp)}", "-DFDLITE_NVRTC=1") + tuple(
            f"-D{k}={v}" for k, v in defines)
        mod = cp.RawModule(code=source(name), options=opts, name_expressions=name_expressions or None,
                           backend="nvrtc")
        mod.compile()
        return mod


def load(name: str, name_expressions: tuple[str, ...] = (), **defines):
    """Compiled module for ``name`` on the current device (memoized)."""
    import cupy as cp  # noqa: PLC0415

    return _compile(cp.cuda.Device().id, name, tuple(sorted(defines.items())), tuple(name_expressions))
