"""Offline quantization: ``fdlite quantize SRC DST --quantization NAME [--calibration self|PATH|none]`` writes a
pre-quantized checkpoint, and Model.load(DST) reads its packed tensors as they are (no re-quantization).

DST layout:
    model.safetensors  each quantized linear under its fdlite (fused) name, one tensor per packed array:
                       "model.layers.0.self_attn.qkv_proj.quant_weight", "....weight_scale", ... (the method's
                       layout, documented in fdlite/quant/<method>.py); every other tensor (embeddings, norms,
                       biases, unquantized linears) under its HF name, in the dtype the source gave (GGUF: f32).
                       __metadata__["fdlite"] = JSON {linears: {name: {method, shape [N, K], meta}},
                       replaced: {HF weight name: shape}} (the HF weights the packed linears stand for).
    config.json        the source's HF config + quantization_config {quantization, quant_method, is_quantized:
                       true, the method's keys (group_size, weight_block_size, dense_quant_type, ...),
                       kv_cache_quant_type when the scheme named one, quantize_lm_head, calibration}.
    tokenizer files    copied from an HF source; from a GGUF source the tokenizer is saved through the
                       tokenizers / sentencepiece objects fdlite built from the GGUF vocabulary (tokenizer.json or
                       tokenizer.model) + tokenizer_config.json (special tokens, add_bos_token, chat_template).
HF checkpoints with quant_method "fp8" + weight_block_size load as block_wise_fp8 (weight e4m3 [N, K] +
weight_scale_inv per projection; fused here when the parts' N are multiples of the block).
GGUF files loaded without quantization=: a linear whose parts are all Q8_0 / Q4_0 keeps its codes and block
scales (fdlite/weights/gguf.py codes): all Q4_0 -> wint4, else (Q8_0, or Q8_0 and Q4_0 mixed: Q4_0 codes widened
to int8, exactly) -> wint8, both with groups of 32; any other type among the parts (F32, F16, Q4_1, K-quants)
dequantizes the linear to the compute dtype as before. The lm_head stays dense unless quantize_lm_head=True.
An explicit quantization= re-quantizes every linear from the dequantized float weights.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from .errors import CheckpointError, ConfigError
from .quant import get as get_method
from .quant.base import Packed

log = logging.getLogger("fdlite")

_FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
_FUSED_INTO = {part: fused for fused, parts in _FUSED.items() for part in parts}      # "q_proj" -> "qkv_proj"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                    "generation_config.json", "chat_template.jinja")


def _linear_of(hf: str) -> str | None:
    """HF weight name -> the fdlite linear that holds it ("...q_proj.weight" -> "...qkv_proj"); None if none."""
    if hf == "lm_head.weight":
        return "lm_head"
    if not hf.endswith("_proj.weight"):
        return None
    head, _, proj = hf.removesuffix(".weight").rpartition(".")
    return f"{head}.{_FUSED_INTO.get(proj, proj)}"


def hf_parts(name: str) -> list[str]:
    """fdlite linear name -> the HF weight names it fuses ("...qkv_proj" -> q/k/v_proj.weight)."""
    head, _, last = name.rpartition(".")
    return [f"{head}.{p}.weight" for p in _FUSED[last]] if last in _FUSED else [name + ".weight"]


# ---------------------------------------------------------------------------------------------- loading

class PackedSource:
    """Packed tensors of a pre-quantized checkpoint; also stands in for the HF weights they replace."""

    def __init__(self, tensors, table: dict, hf_fp8: bool):
        self.tensors, self.hf_fp8 = tensors, hf_fp8
        self.linears, self.replaced = table.get("linears", {}), {k: tuple(v) for k, v in
                                                                 table.get("replaced", {}).items()}

    def has(self, name: str) -> bool:
        return name in self.linears or (self.hf_fp8 and all(p + "_scale_inv" in self.tensors for p in hf_parts(name)))

    def method(self, name: str, m):
        """The method that reads linear ``name``: the config's (the checkpoint was written by it)."""
        return m

    def _get(self, key: str):
        if key not in self.tensors:
            raise CheckpointError(f"{self.tensors.source(key)}: pre-quantized tensor {key!r} is missing")
        return self.tensors.get(key)

    def packed(self, name: str, m, shape) -> Packed:
        if self.hf_fp8:
            return self._hf_fp8(name, m, shape)
        info = self.linears.get(name)
        if info is None:
            raise CheckpointError(f"pre-quantized checkpoint has no packed tensors for linear {name!r} "
                                  f"(expected {name}.quant_weight and its scales)")
        if info["method"] != m.name or tuple(info["shape"]) != tuple(shape):
            raise CheckpointError(f"linear {name!r} was packed by {info['method']} with shape {info['shape']} but "
                                  f"the config asks for {m.name} with shape {list(shape)}")
        arrays = {k: self._get(f"{name}.{k}") for k in info["keys"]}
        return Packed(m.name, tuple(shape), arrays, dict(info.get("meta", {})))

    def _hf_fp8(self, name, m, shape) -> Packed:
        bn, bk = m.block
        ws, ss = [], []
        for p in hf_parts(name):
            w, s = self._get(p), self._get(p + "_scale_inv")
            if len(hf_parts(name)) > 1 and w.shape[0] % bn:
                raise CheckpointError(f"{p}: fp8 weight of shape {list(w.shape)} cannot be fused block-wise "
                                      f"(rows not a multiple of {bn})")
            ws.append(np.asarray(w).view(np.uint8))
            ss.append(np.asarray(s, np.float32))
        q, s = np.concatenate(ws), np.concatenate(ss)                            # (N, K), (N/bn, K/bk)
        if q.shape != tuple(shape) or s.shape != (-(-shape[0] // bn), -(-shape[1] // bk)):
            raise CheckpointError(f"{name}: fp8 weight {list(q.shape)} / weight_scale_inv {list(s.shape)} do not "
                                  f"match the linear's shape {list(shape)} with blocks [{bn}, {bk}]")
        return Packed(m.name, tuple(shape), {"quant_weight": q, "weight_scale_inv": s},
                      {"weight_block_size": [bn, bk]})


class GGUFPackedSource:
    """The Q8_0 / Q4_0 linears of a GGUF file, read into wint8 / wint4 group-32 layouts (module docstring)."""

    def __init__(self, gguf):
        self.gguf = gguf
        self.methods = {k: get_method(k)(group_size=32) for k in ("wint8", "wint4")}
        kinds = {lin: {gguf.qtype(p) if p in gguf else None for p in hf_parts(lin)}
                 for lin in filter(None, map(_linear_of, gguf.keys()))}
        self.linears = {lin: "wint4" if k == {"Q4_0"} else "wint8" for lin, k in kinds.items()
                        if k <= {"Q8_0", "Q4_0"}}                                 # linear -> method
        # the lm_head is read as float too: whether it stays packed is decided later (quantize_lm_head)
        self.replaced = {p: gguf.shape(p) for lin in self.linears if lin != "lm_head" for p in hf_parts(lin)}

    def has(self, name: str) -> bool:
        return name in self.linears

    def method(self, name: str, m):
        return self.methods[self.linears[name]]

    def packed(self, name: str, m, shape) -> Packed:
        parts = [self.gguf.codes(p) for p in hf_parts(name)]
        q = np.concatenate([c for c, _ in parts])                                  # (N, K) int8
        s = np.concatenate([s for _, s in parts])                                  # (N, K / 32) float32
        if q.shape != tuple(shape):
            raise CheckpointError(f"{self.gguf.path}: linear {name!r} reads as {list(q.shape)} from the GGUF file "
                                  f"but the config needs {list(shape)}")
        return m.pack(q, s, shape)


class _Tensors:
    """The checkpoint's tensors plus zero-size stand-ins (int8 zeros, broadcast) for the replaced HF weights,
    so an architecture's load_params runs unchanged; its make_linear then reads the packed tensors."""

    def __init__(self, inner, replaced: dict):
        self.inner, self.replaced = inner, replaced

    def keys(self):
        return set(self.inner.keys()) | set(self.replaced)

    def __contains__(self, name):
        return name in self.replaced or name in self.inner

    def shape(self, name):
        return self.replaced[name] if name in self.replaced else self.inner.shape(name)

    def dtype(self, name):
        return np.dtype(np.int8) if name in self.replaced else self.inner.dtype(name)

    def get(self, name):
        return np.broadcast_to(np.int8(0), self.replaced[name]) if name in self.replaced else self.inner.get(name)

    def source(self, name):
        return self.inner.source(name)

    def close(self):
        self.inner.close()


def checkpoint_quantization(ckpt, quant, explicit: bool):
    """Model.load's hook -> (quant, tensors). A config.json quantization_config wins: quantized weights are read
    packed; a config without is_quantized quantizes online with the config's method. A GGUF file without an
    explicit quantization keeps its Q8_0 / Q4_0 linears packed (GGUFPackedSource)."""
    from .quant_config import parse  # noqa: PLC0415

    if ckpt.kind == "gguf":
        src = None if explicit else GGUFPackedSource(ckpt.tensors)
        if src is None or not src.linears:
            return quant, ckpt.tensors
        return (quant[0], {**quant[1], "_packed": src}), _Tensors(ckpt.tensors, src.replaced)
    qc = ckpt.config.get("quantization_config") if ckpt.kind == "safetensors" else None
    if not qc:
        return quant, ckpt.tensors
    name, params = parse(qc)
    if explicit and quant[0] != name:
        raise ConfigError(f"{ckpt.path}: the checkpoint is quantized with {name!r} (config.json "
                          f"quantization_config) but quantization={quant[0]!r} was asked for")
    quantized = params.get("is_quantized", "kv_cache_quant_type" not in params)    # FastDeploy's default
    if not quantized:
        return (name, {**params, **quant[1]}) if explicit else (name, params), ckpt.tensors
    table = {}
    st = Path(ckpt.path) / "model.safetensors"
    if st.is_file():
        from .weights.safetensors import SafetensorsFile  # noqa: PLC0415

        raw = SafetensorsFile(st).metadata.get("fdlite")
        table = json.loads(raw) if raw else {}
    hf_fp8 = name == "block_wise_fp8" and not table
    src = PackedSource(ckpt.tensors, table, hf_fp8)
    return (name, {**params, "_packed": src}), _Tensors(ckpt.tensors, src.replaced)


# ---------------------------------------------------------------------------------------------- writing

def _save_tokenizer(tok, src: Path, dst: Path) -> str:
    if src.is_dir():
        copied = [f for f in _TOKENIZER_FILES if (src / f).is_file()]
        for f in copied:
            shutil.copy2(src / f, dst / f)
        return "copied " + ", ".join(copied) if copied else "none"
    if tok is None:
        return "none"
    vocab = getattr(tok, "_tk", None)
    piece = tok.id_to_piece
    cfg = {"bos_token": None if tok.bos_token_id is None else piece(tok.bos_token_id),
           "eos_token": None if tok.eos_token_id is None else piece(tok.eos_token_id),
           "pad_token": None if tok.pad_token_id is None else piece(tok.pad_token_id),
           "add_bos_token": tok.add_bos_token, "add_eos_token": tok.add_eos_token, "chat_template": tok.chat_template}
    if vocab is not None:
        vocab.save(str(dst / "tokenizer.json"))
        out = "tokenizer.json"
    else:
        (dst / "tokenizer.model").write_bytes(tok._sp_bare.serialized_model_proto())
        cfg["add_prefix_space"] = bool(tok._add_prefix)
        out = "tokenizer.model"
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1))
    extra = [i for i in tok.eos_token_ids if i != tok.eos_token_id]
    if extra:
        (dst / "generation_config.json").write_text(json.dumps({"eos_token_id": list(tok.eos_token_ids)}))
    return f"{out} + tokenizer_config.json (from the GGUF vocabulary)"


def quantize_checkpoint(src, dst, quantization, calibration="self", quantize_lm_head: bool = False) -> dict:
    """Quantize SRC (HF dir, .gguf or preset) into DST; -> a report dict (bytes per method, seconds)."""
    from . import presets  # noqa: PLC0415
    from .model import Model  # noqa: PLC0415
    from .quant.base import iter_linears  # noqa: PLC0415
    from .quant_config import make_method, parse  # noqa: PLC0415
    from .weights import open_checkpoint  # noqa: PLC0415
    from .weights.safetensors import write_safetensors  # noqa: PLC0415

    t0 = time.time()
    name, params = parse(quantization)
    clean = {k: v for k, v in params.items() if not k.startswith("_")}
    model = Model.load(src, device="cpu", quantization={"quantization": name, **clean, "_hessians": {}},
                       calibration=calibration, quantize_lm_head=quantize_lm_head, max_model_len=64,
                       max_num_seqs=1)
    path = presets.resolve(src) if isinstance(src, str) else None
    ckpt = open_checkpoint(path or src)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    try:
        linears, replaced, tensors, per_method = {}, {}, {}, {}

        for x in iter_linears(model.params):
            if getattr(x.method, "linear", None) and x.packed.method != "dense":
                lin, p = x.method.linear, x.packed
                linears[lin] = {"method": p.method, "shape": list(p.shape), "keys": sorted(p.arrays), "meta": p.meta}
                for k, a in p.arrays.items():
                    tensors[f"{lin}.{k}"] = np.asarray(a)
                per_method[p.method] = per_method.get(p.method, 0) + p.nbytes
                for hf in hf_parts(lin):
                    if hf in ckpt.tensors:
                        replaced[hf] = list(ckpt.tensors.shape(hf))
        for k in ckpt.tensors.keys():
            if k not in replaced:
                tensors[k] = np.asarray(ckpt.tensors.get(k))
        write_safetensors(dst / "model.safetensors", tensors,
                          {"fdlite": json.dumps({"linears": linears, "replaced": replaced})})
        qc = {**make_method(name, clean).config(), "quant_method": name, "is_quantized": True,
              "quantize_lm_head": bool(quantize_lm_head), "calibration": calibration}
        qc.update({k: v for k, v in clean.items() if k == "kv_cache_quant_type"})
        (dst / "config.json").write_text(json.dumps({**ckpt.config, "quantization_config": qc}, indent=1))
        tok = _save_tokenizer(ckpt.tokenizer, Path(ckpt.path), dst)
    finally:
        ckpt.close()
        model.close()
    return {"src": str(src), "dst": str(dst), "quantization_config": qc, "tokenizer": tok,
            "packed_bytes": per_method, "file_bytes": (dst / "model.safetensors").stat().st_size,
            "seconds": round(time.time() - t0, 1)}


def register_cli(sub) -> None:
    """Adds ``fdlite quantize`` to the CLI's subparsers."""
    q = sub.add_parser("quantize", help="write a pre-quantized checkpoint (safetensors + config.json)")
    q.add_argument("src", help="HF directory, .gguf file or preset")
    q.add_argument("dst", help="output directory")
    q.add_argument("--quantization", required=True, help="method name, JSON dict or WxAyCz scheme")
    q.add_argument("--calibration", default="self", help="self (default) | PATH of a text file | none")
    q.add_argument("--quantize-lm-head", action="store_true")
    q.set_defaults(func=_cmd)


def _cmd(args) -> int:
    cal = None if str(args.calibration).lower() == "none" else args.calibration
    print(json.dumps(quantize_checkpoint(args.src, args.dst, args.quantization, cal, args.quantize_lm_head)))
    return 0


def main(argv=None) -> int:
    """``python -m fdlite.offline SRC DST --quantization ...`` (same as ``fdlite quantize``)."""
    import sys  # noqa: PLC0415

    from .cli import main as cli_main  # noqa: PLC0415

    return cli_main(["quantize", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
