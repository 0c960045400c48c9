"""HF model directory: config.json + model.safetensors or a sharded model.safetensors.index.json."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from .safetensors import SafetensorsFile


class HFTensors:
    """name -> array across one or more safetensors shards, each opened (mmap) once."""

    def __init__(self, directory: Path):
        self.directory = directory
        single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
        self._files: dict[str, SafetensorsFile] = {}
        self._where: dict[str, SafetensorsFile] = {}
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: not a valid safetensors index ({e!r})") from None
            for name, fname in weight_map.items():
                if fname not in self._files:
                    shard = directory / fname
                    if not shard.is_file():
                        raise CheckpointError(f"{index}: shard {fname!r} (tensor {name!r}) does not exist")
                    self._files[fname] = SafetensorsFile(shard)
                f = self._files[fname]
                if name not in f.keys():
                    raise CheckpointError(f"{index}: tensor {name!r} is mapped to {fname} but is not in it")
                self._where[name] = f
        elif single.is_file():
            f = SafetensorsFile(single)
            self._files[single.name] = f
            self._where = {name: f for name in f.keys()}
        else:
            found = sorted(p.name for p in directory.glob("*.safetensors"))
            if len(found) == 1:
                f = SafetensorsFile(directory / found[0])
                self._files[found[0]], self._where = f, {name: f for name in f.keys()}
            else:
                raise CheckpointError(f"{directory}: no model.safetensors or model.safetensors.index.json "
                                      f"(found {found or 'no .safetensors files'})")

    def keys(self):
        return self._where.keys()

    def __contains__(self, name):
        return name in self._where

    def shape(self, name):
        return self._where[name].shape(name)

    def dtype(self, name):
        return self._where[name].dtype(name)

    def get(self, name) -> np.ndarray:
        if name not in self._where:
            raise CheckpointError(f"{self.directory}: tensor {name!r} is missing from the checkpoint")
        return self._where[name].get(name)

    def source(self, name) -> str:
        return str(self._where[name].path) if name in self._where else str(self.directory)

    def close(self):
        for f in self._files.values():
            f.close()
        self._files, self._where = {}, {}
