"""Architecture families: one module per family, each with ``ARCHITECTURES = {hf_name: config defaults}``,
``load_params(cfg, tensors, make_linear, backend)`` and ``forward(params, cfg, ids, meta, cache, rope, xp)``.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil

from ..errors import UnsupportedArchitectureError


@functools.lru_cache(maxsize=1)
def _table() -> dict[str, str]:
    table = {}
    for m in pkgutil.iter_modules(__path__):
        if m.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{m.name}")
        for arch in getattr(mod, "ARCHITECTURES", {}):
            table[arch] = m.name
    return table


def supported() -> list[str]:
    return sorted(_table())


def lookup(arch: str, where: str = "config.json"):
    """-> (family module, config defaults for ``arch``)."""
    table = _table()
    if arch not in table:
        raise UnsupportedArchitectureError(
            f"{where}: architecture {arch!r} is not supported; supported: {', '.join(sorted(table))}")
    mod = importlib.import_module(f"{__name__}.{table[arch]}")
    return mod, dict(mod.ARCHITECTURES[arch])
