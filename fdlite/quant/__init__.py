"""Weight quantization methods. The name is the file: ``get("wint8")`` imports ``fdlite/quant/wint8.py``.

``available()`` lists the method files, so tests parametrize over every method without a registry.
"""
from __future__ import annotations

import importlib
import pkgutil

from ..errors import InputError

_NOT_METHODS = {"base"}


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_METHODS
                  and not m.name.startswith("_"))


def get(name: str):
    """The method class for ``name`` (e.g. "dense", "wint8")."""
    names = available()
    if not isinstance(name, str) or name not in names:
        raise InputError(f"unknown quantization {name!r}; valid: {', '.join(names)}")
    return importlib.import_module(f"{__name__}.{name}").Method
