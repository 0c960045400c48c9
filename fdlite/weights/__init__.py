"""Checkpoint readers. ``open_checkpoint(path)`` -> Checkpoint(config dict, tensors, tokenizer).

Tensors are read lazily under their Hugging Face names whatever the file format, so architecture
modules see one naming scheme.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import read_config_json
from ..errors import CheckpointError


@dataclass
class Checkpoint:
    path: Path
    kind: str            # "safetensors" | "gguf"
    config: dict         # HF config.json layout
    tensors: Any         # .keys() .shape(n) .dtype(n) .get(n) .source(n) .close()
    tokenizer: Any       # fdlite.tokenizer.Tokenizer | None

    def close(self):
        self.tensors.close()


def open_checkpoint(path: str | Path) -> Checkpoint:
    from ..tokenizer import load_tokenizer, tokenizer_from_gguf  # noqa: PLC0415

    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"model path {str(p)!r} does not exist (give an HF model directory, a .gguf file, "
                                "or a preset name such as 'smollm2-135m')")
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            with open(p, "rb") as f:
                magic = f.read(4)
            if magic != b"GGUF":
                raise CheckpointError(f"{p}: not a GGUF file (magic {magic!r}); for safetensors give the model "
                                      "directory that holds config.json")
        from .gguf import GGUFCheckpoint  # noqa: PLC0415

        g = GGUFCheckpoint(p)
        return Checkpoint(p, "gguf", g.config, g, tokenizer_from_gguf(g.metadata, source=str(p),
                                                                      extra_eos_ids=()))
    from .hf import HFTensors  # noqa: PLC0415

    config = read_config_json(p / "config.json")
    extra_eos = ()
    gen = p / "generation_config.json"
    if gen.is_file():
        try:
            eos = json.loads(gen.read_text(encoding="utf-8")).get("eos_token_id")
            extra_eos = tuple(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            raise CheckpointError(f"{gen}: not valid JSON") from None
    return Checkpoint(p, "safetensors", config, HFTensors(p), load_tokenizer(p, extra_eos_ids=extra_eos))
