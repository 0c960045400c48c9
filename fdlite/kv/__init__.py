"""KV-cache formats. The name is the file: ``get("int8")`` imports ``fdlite/kv/int8.py``."""
from __future__ import annotations

import importlib
import pkgutil

from ..errors import InputError

_NOT_FORMATS = {"base"}


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_FORMATS
                  and not m.name.startswith("_"))


def get(name: str):
    names = available()
    if not isinstance(name, str) or name not in names:
        raise InputError(f"unknown kv_cache {name!r}; valid: {', '.join(names)}")
    return importlib.import_module(f"{__name__}.{name}").Format
