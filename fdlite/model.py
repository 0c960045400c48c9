"""Model: the one object users hold. load / generate / stream / chat / logits / perplexity / close."""
from __future__ import annotations

import logging
import math
import threading
import uuid
from pathlib import Path

import numpy as np

from . import kv as kv_formats
from . import kv_scales as kv_scale_io
from . import models, ops, presets, prompts
from .backend import get_backend
from .config import ModelConfig
from .engine.block_manager import BlockManager
from .engine.engine import Engine
from .engine import driver, invariant
from .engine.sequence import Sequence
from .errors import InputError, ModelClosedError, TokenizerError
from .kv.base import StepMeta
from . import gptq, offline, quant_config
from .quant import base as quant_base
from .quant import get as get_method
from .rope import Rope
from .sampling_params import RequestOutput, SamplingParams
from .weights import open_checkpoint

log = logging.getLogger("fdlite")

DEFAULT_BLOCK_SIZE = 64            # FastDeploy's default
DEFAULT_CPU_KV_BYTES = 1 << 30     # 1 GiB of KV cache on the CPU unless told otherwise


def _parse_quantization(q):
    """None | name | WxAyCz scheme | dict | JSON string -> (method name, params); see fdlite.quant_config."""
    return quant_config.parse(q)


class Model:
    _workers = None         # tensor parallelism: rank 0's group of worker processes (fdlite/parallel/runtime.py)

    def __init__(self, *, cfg, params, family, backend, tokenizer, kv_format, kv_options, num_blocks, block_size,
                 max_model_len, max_num_seqs, max_num_batched_tokens, source, cuda_graphs=True):
        self.config, self.params, self.family, self.backend = cfg, params, family, backend
        self.tokenizer = tokenizer
        self.max_model_len, self.source = max_model_len, source
        self._kv_format, self._kv_options = kv_format, kv_options
        self.rope = Rope(cfg)
        self.rope.table_len = max_model_len
        # GPU: one block more than the engine hands out, the scratch block CUDA-graph padding rows write to
        self.cache = kv_format(cfg, num_blocks + int(backend.is_gpu), block_size, backend, **kv_options)
        self._stop_ids = frozenset(cfg.eos_token_ids) | frozenset(tokenizer.eos_token_ids if tokenizer else ())
        self.engine = Engine(self._run, BlockManager(num_blocks, block_size), tokenizer, max_num_seqs,
                             max_num_batched_tokens, max_model_len)
        if backend.is_gpu:          # decode steps from CUDA graphs; logits stay on the GPU for its sampler
            from .engine.cuda_graph import GraphRunner  # noqa: PLC0415

            self.engine.runner = GraphRunner(self, enabled=cuda_graphs)
        else:                       # the CPU reference is batch-invariant (fdlite/engine/invariant.py)
            invariant.apply(self)
        self._lock = threading.RLock()
        self._closed = False

    # --- loading -------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path_or_preset, *, device: str = "auto", quantization=None, kv_cache: str | None = None,
             dtype=None, max_model_len: int | None = None, max_num_seqs: int = 8,
             max_num_batched_tokens: int | None = None, block_size: int = DEFAULT_BLOCK_SIZE,
             kv_cache_bytes: int | None = None, gpu_memory_utilization: float = 0.9, calibration=None,
             quantize_lm_head: bool = False, kv_scales=None, enable_prefix_caching: bool = True,
             batch_invariant: bool = True, cuda_graphs: bool = True, tensor_parallel_size: int = 1,
             _shard=None) -> "Model":
        """Load an HF directory, a .gguf file or a preset name (e.g. "smollm2-135m").

        quantization: a method name, dict / JSON string, or WxAyCz scheme (fdlite.quant_config); its KV part
        (C8, ...) picks the KV format unless kv_cache= is given. calibration: None (round-to-nearest), "self" or
        a text file: GPTQ rounding for the 4- and 2-bit methods (fdlite.gptq). A pre-quantized checkpoint
        (config.json quantization_config, is_quantized) loads its packed tensors as they are (fdlite.offline).
        A static KV format (int8, float8_e4m3fn, int4_zp) takes its scales from kv_scales= (a file from
        `fdlite calibrate`), else from the checkpoint, else calibrates them on `calibration` (default "self";
        fdlite/kv_scales.py).
        Engine: max_num_seqs, max_num_batched_tokens, block_size, kv_cache_bytes (CPU) / gpu_memory_utilization
        (GPU) as FastDeploy; enable_prefix_caching reuses full KV blocks of shared prompt prefixes;
        batch_invariant (CPU) makes each request's output independent of its batch (fdlite/engine/invariant.py);
        cuda_graphs (GPU) replays decode steps from CUDA graphs (fdlite/engine/cuda_graph.py).
        tensor_parallel_size=N > 1: N processes on this host, this one rank 0 (fdlite/parallel/runtime.py;
        docs/parallel.md); _shard is the per-rank hook that runtime passes."""
        if type(tensor_parallel_size) is not int or tensor_parallel_size != 1:
            from .parallel import runtime  # noqa: PLC0415

            kwargs = {k: v for k, v in locals().items() if k not in ("cls", "path_or_preset", "tensor_parallel_size",
                                                                     "_shard", "runtime")}
            return runtime.load(cls, path_or_preset, tensor_parallel_size, kwargs)
        backend = get_backend(device)
        if dtype is not None and np.dtype(dtype) != backend.compute_dtype:
            raise InputError(f"dtype={dtype!r} is not available on {backend.name}; it computes in "
                             f"{backend.compute_dtype} there")
        quant = _parse_quantization(quantization)   # an unknown method name fails before any file is read
        if kv_cache is not None:
            kv_formats.get(kv_cache)
        path = presets.resolve(path_or_preset) if isinstance(path_or_preset, str) else None
        ckpt = open_checkpoint(path or path_or_preset)
        try:
            cfg = ModelConfig.from_hf(ckpt.config, where=str(ckpt.path if ckpt.kind == "gguf"
                                                             else Path(ckpt.path) / "config.json"))
            quant, tensors = offline.checkpoint_quantization(ckpt, quant, explicit=quantization is not None)
            kv_format = kv_formats.get(quant_config.kv_choice(kv_cache, quant))
            quant = gptq.attach(quant, calibration, quantize_lm_head,
                                lambda **kw: cls.load(path_or_preset, device=device, **kw))
            # static KV scales: kv_scales= file, else the checkpoint's, else calibrated below (kv_scales.py)
            kv_options = kv_scale_io.options_for(kv_format, cfg, ckpt.tensors, kv_scales)
            model = cls._build(cfg, tensors, ckpt.tokenizer, str(ckpt.path), backend, quant, kv_format,
                               max_model_len, max_num_seqs, max_num_batched_tokens, block_size,
                               kv_cache_bytes, gpu_memory_utilization, kv_options, cuda_graphs, _shard)
            model.engine.blocks.enable_prefix_caching = bool(enable_prefix_caching)
            if not batch_invariant:
                invariant.disable(model)
            return kv_scale_io.ensure_calibrated(model, calibration or "self")
        finally:
            ckpt.close()

    @classmethod
    def from_config(cls, name_or_config, *, seed: int = 0, device: str = "auto", quantization=None,
                    kv_cache: str | None = None, max_model_len: int | None = None, max_num_seqs: int = 8,
                    max_num_batched_tokens: int | None = None, block_size: int = DEFAULT_BLOCK_SIZE,
                    kv_cache_bytes: int | None = None, gpu_memory_utilization: float = 0.9,
                    enable_prefix_caching: bool = True, batch_invariant: bool = True, cuda_graphs: bool = True,
                    tensor_parallel_size: int = 1, _shard=None, **overrides) -> "Model":
        """A model with random weights (normal, std = initializer_range; norms at 1), drawn on the device, for a
        preset of fdlite.model_configs ("llama-3-8b", "ernie-4.5-0.3b", ...) or an HF config.json dict;
        ``overrides`` replace config keys (e.g. num_hidden_layers=4). No tokenizer: prompts are token ids.
        tensor_parallel_size=N > 1: N processes as Model.load's (fdlite/parallel/runtime.py). Each rank draws every
        weight it needs on its device, as one process does (each tensor from its own (seed, name) stream), and
        keeps its cut. It never draws another rank's routed experts, and quantizes the experts it keeps (never cut)
        where they were drawn. So the N ranks hold the one-process model's weights."""
        if type(tensor_parallel_size) is not int or tensor_parallel_size != 1:
            from .parallel import runtime  # noqa: PLC0415

            kwargs = {k: v for k, v in locals().items() if k not in ("cls", "name_or_config", "tensor_parallel_size",
                                                                     "_shard", "overrides", "runtime")}
            return runtime.load(cls, name_or_config, tensor_parallel_size, {**kwargs, **overrides},
                                builder="from_config")
        from . import model_configs, random_weights  # noqa: PLC0415

        backend = get_backend(device)
        quant = _parse_quantization(quantization)
        kv_format = kv_formats.get(quant_config.kv_choice(kv_cache, quant))    # as load: a scheme's C part
        raw, source = model_configs.resolve(name_or_config, overrides)
        cfg = ModelConfig.from_hf(raw, where=source)
        tensors = random_weights.RandomWeights(cfg, backend, seed)
        model = cls._build(cfg, tensors, None, f"{source} (random weights, seed {seed})", backend, quant,
                           kv_format, max_model_len, max_num_seqs, max_num_batched_tokens, block_size,
                           kv_cache_bytes, gpu_memory_utilization, cuda_graphs=cuda_graphs, shard=_shard)
        model.engine.blocks.enable_prefix_caching = bool(enable_prefix_caching)
        if not batch_invariant:
            invariant.disable(model)
        if _shard is not None:      # a static KV format needs scales given to every rank (RankPlan refuses it)
            return model
        return kv_scale_io.ensure_calibrated(model, "self")     # a static KV format: scales from self-text

    @classmethod
    def _build(cls, cfg, tensors, tokenizer, source, backend, quant, kv_format, max_model_len, max_num_seqs,
               max_num_batched_tokens, block_size, kv_cache_bytes, gpu_memory_utilization, kv_options=None,
               cuda_graphs=True, shard=None) -> "Model":
        """Shared by load and from_config: quantize + place the weights, size the paged KV cache."""
        family, _ = models.lookup(cfg.architecture)
        # A family may map a method name to what it means there (ERNIE: "wint4" -> mix_quant wint8 + wint4).
        qname, qparams = getattr(family, "resolve_quantization", lambda _cfg, n, p: (n, p))(cfg, *quant)
        if qname == "dense":        # unquantized linears keep the compute dtype (bf16 on the GPU, not float32)
            qparams = {"dtype": backend.compute_dtype, **qparams}
        method = quant_config.make_method(qname, qparams)
        if shard is None:
            params = family.load_params(cfg, tensors, _linear_factory(method, backend), backend)
        else:                       # one tensor-parallel rank: its heads, its shards (fdlite/parallel/load.py)
            cfg, params, kv_options = shard.build(family, cfg, tensors, method, backend, kv_format, kv_options)
        backend.free_memory()       # the quantization temporaries CuPy's pool cached: freed before sizing KV
        limit = cfg.context_limit
        max_model_len = int(max_model_len or min(limit, 4096))
        if not 1 < max_model_len <= limit:
            raise InputError(f"max_model_len={max_model_len} must be in [2, {limit}] (the model's context, "
                             "max_position_embeddings)")
        if not isinstance(block_size, int) or block_size < 1:
            raise InputError(f"block_size={block_size!r} must be a positive integer")
        if not isinstance(max_num_seqs, int) or max_num_seqs < 1:
            raise InputError(f"max_num_seqs={max_num_seqs!r} must be a positive integer")
        max_num_batched_tokens = int(max_num_batched_tokens or max(2048, block_size))
        probe = kv_format(cfg, 1, block_size, backend)
        per_token = probe.bytes_per_token()
        probe.close()
        need = max_num_seqs * -(-max_model_len // block_size) * block_size * per_token   # whole blocks
        if kv_cache_bytes is None:
            if backend.is_gpu:
                free, _total = backend.xp.cuda.runtime.memGetInfo()
                kv_cache_bytes = int(min(need, free * gpu_memory_utilization))
            else:
                kv_cache_bytes = int(min(need, max(DEFAULT_CPU_KV_BYTES, max_model_len * per_token)))
        num_blocks = int(kv_cache_bytes // (per_token * block_size))
        if num_blocks * block_size < max_model_len:
            raise InputError(f"a KV budget of {kv_cache_bytes} bytes holds {num_blocks * block_size} tokens "
                             f"({per_token:.0f} bytes each) but max_model_len={max_model_len} needs at least that "
                             "many: raise kv_cache_bytes or lower max_model_len")
        log.info("fdlite: %s on %s, %d KV blocks of %d tokens (%.1f MiB)", cfg.architecture, backend.name,
                 num_blocks, block_size, num_blocks * block_size * per_token / 2**20)
        return cls(cfg=cfg, params=params, family=family, backend=backend, tokenizer=tokenizer,
                   kv_format=kv_format, kv_options=kv_options or {}, num_blocks=num_blocks, block_size=block_size,
                   max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                   max_num_batched_tokens=max_num_batched_tokens, source=source, cuda_graphs=cuda_graphs)

    # --- lifecycle -----------------------------------------------------------------------------------
    def _check_open(self):
        if self._closed:
            raise ModelClosedError(f"this Model ({self.source}) was closed; load it again with Model.load")

    def close(self) -> None:
        """Free the weights and the KV cache (device memory included). Idempotent."""
        with self._lock, self.engine.lock if self.engine is not None else self._lock:   # not mid-step
            if self._closed:
                return
            self._closed = True
            if self.engine is not None:
                self.engine.close()         # no step of the device may still read what is freed below
            self.params = None
            self.cache.close()
            self.engine = None
            self.backend.free_memory()
            if self._workers is not None:
                self._workers.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- the forward ---------------------------------------------------------------------------------
    def _run(self, ids: np.ndarray, meta: StepMeta, cache=None) -> np.ndarray:
        out = self.family.forward(self.params, self.config, ids, meta, cache or self.cache, self.rope,
                                  self.backend.xp)
        return self.backend.to_host(out).astype(np.float32, copy=False)

    def logits(self, ids) -> np.ndarray:
        """Full forward without the cache: ids (B, T) ints (1-D taken as (1, T)) -> float32 (B, T, V)."""
        self._check_open()
        a = np.asarray(ids)
        if a.ndim == 1:
            a = a[None]
        if a.ndim != 2 or a.shape[1] == 0 or not np.issubdtype(a.dtype, np.integer):
            raise InputError(f"logits() takes a (B, T) array of int token ids with T >= 1, got shape {a.shape} "
                             f"dtype {a.dtype}")
        V, limit = self.config.vocab_size, self.config.context_limit
        bad = a[(a < 0) | (a >= V)]
        if bad.size:
            raise InputError(f"token id {int(bad[0])} is outside the vocabulary [0, {V})")
        B, T = a.shape
        if T > limit:
            raise InputError(f"sequence of {T} tokens exceeds the model's context of {limit} tokens")
        bs = self.cache.block_size
        nb = -(-T // bs)
        scratch = self._kv_format(self.config, B * nb, bs, self.backend, **self._kv_options)
        try:
            meta = StepMeta.build([(0, T, list(range(b * nb, (b + 1) * nb))) for b in range(B)], bs, logits="all")
            with self._lock:
                out = self._run(a.reshape(-1).astype(np.int64), meta, scratch)
        finally:
            scratch.close()
        return out.reshape(B, T, V)

    def _window_logits(self, w: list[int], chunk: int | None = None) -> np.ndarray:
        """(T,) ids -> (T, V) logits for perplexity. The forward writes the window into a scratch cache of the
        model's KV format and attends by reading it back (write first, then attend), so a quantized format
        is seen at every position. chunk=N feeds N tokens per forward instead, as decode does; quantization
        is per token (static or per-token scales), so this equals the one-shot path up to float rounding
        (tests/test_kv_smollm2.py) at ~10x the time on the CPU (small-M GEMMs), hence not the default."""
        if not chunk:
            return self.logits(np.asarray(w))[0]
        a = np.asarray(w, np.int64)
        V, T, bs = self.config.vocab_size, len(a), self.cache.block_size
        if ((a < 0) | (a >= V)).any() or T > self.config.context_limit:
            return self.logits(a)[0]        # raises the InputError that names the bad id / length
        table = list(range(-(-T // bs)))
        scratch = self._kv_format(self.config, len(table), bs, self.backend, **self._kv_options)
        out = []
        try:
            for s in range(0, T, chunk):
                n = min(chunk, T - s)
                meta = StepMeta.build([(s, n, table)], bs, logits="all")
                with self._lock:
                    out.append(self._run(a[s:s + n], meta, scratch))                # (n, V)
        finally:
            scratch.close()
        return np.concatenate(out)

    def perplexity(self, text_or_ids, window: int = 512, max_tokens: int | None = None) -> float:
        """exp(mean NLL) over non-overlapping windows (the last may be partial); no BOS inserted; every token
        after the first of each window is scored."""
        self._check_open()
        if isinstance(text_or_ids, str):
            if self.tokenizer is None:
                raise TokenizerError("perplexity() got text but this model has no tokenizer; pass token ids")
            ids = self.tokenizer.encode(text_or_ids, add_special_tokens=False)
        else:
            ids = list(prompts.split_prompts(list(text_or_ids))[0]) if len(text_or_ids) else []
        if max_tokens is not None:
            ids = ids[:max_tokens]
        if not isinstance(window, int) or window < 2:
            raise InputError(f"window={window!r} must be an integer >= 2")
        nll, count = 0.0, 0
        for s in range(0, len(ids), window):
            w = ids[s:s + window]
            if len(w) < 2:
                continue
            lp = ops.log_softmax(self._window_logits(w)[:-1], np)                      # (len-1, V)
            nll -= float(lp[np.arange(len(w) - 1), w[1:]].astype(np.float64).sum())
            count += len(w) - 1
        if count == 0:
            raise InputError(f"perplexity needs at least 2 tokens, got {len(ids)}")
        return math.exp(nll / count)

    # --- generation ----------------------------------------------------------------------------------
    def _sequences(self, prepared, params_list, start: int = 0) -> list[list[Sequence]]:
        groups = []
        for i, (pr, sp) in enumerate(zip(prepared, params_list), start):
            rid = f"{i}-{uuid.uuid4().hex[:8]}"
            base = sp.seed if sp.seed is not None else int(np.random.SeedSequence().entropy % (2**63))
            seqs = []
            for j in range(sp.n):
                seed = base if sp.n == 1 else int(np.random.SeedSequence([base, j]).generate_state(1)[0])
                detok = self.tokenizer.detokenizer() if self.tokenizer else None
                seqs.append(Sequence(rid, j, pr.text, pr.ids, sp, seed, detok, self._stop_ids))
            groups.append(seqs)
        return groups

    def _prepare(self, prompt_list, sampling_params, add_special_tokens=True):
        return self._sequences(*self._validated(prompt_list, sampling_params, add_special_tokens))

    def _validated(self, prompt_list, sampling_params, add_special_tokens=True):
        """Tokenize and check every prompt and its SamplingParams before any work starts."""
        self._check_open()
        prepared = prompts.prepare(prompt_list, self.tokenizer, self.config.vocab_size, self.max_model_len,
                                   add_special_tokens)
        params_list = prompts.per_prompt_params(sampling_params, len(prepared))
        bad_words = [p for p in params_list if p.bad_words]
        if bad_words:
            params_list = [self._with_bad_word_ids(p) for p in params_list]
        return prepared, params_list

    def _with_bad_word_ids(self, p: SamplingParams) -> SamplingParams:
        if not p.bad_words:
            return p
        if self.tokenizer is None:
            raise TokenizerError("bad_words needs a tokenizer; use bad_words_token_ids instead")
        ids = list(p.bad_words_token_ids or [])
        for w in p.bad_words:  # single-token words only, as FastDeploy (both with and without a leading space)
            for variant in (w, " " + w):
                toks = self.tokenizer.encode(variant, add_special_tokens=False)
                if len(toks) == 1:
                    ids.append(toks[0])
        return SamplingParams.from_dict({"bad_words_token_ids": sorted(set(ids)), "bad_words": None}, base=p)

    def generate(self, prompts_, sampling_params=None, use_tqdm: bool = True, add_special_tokens: bool = True
                 ) -> list[RequestOutput]:
        """Prompts: str | list[str] | list[int] | list[list[int]]. Returns one RequestOutput per prompt
        (n > 1: n consecutive outputs per prompt), in input order."""
        prepared, params_list = self._validated(prompts_, sampling_params, add_special_tokens)
        # Sequences are made as the engine has room (fdlite/engine/driver.py): memory stays flat in the count.
        return driver.generate(self.engine, len(prepared), lambda i: self._sequences(
            [prepared[i]], [params_list[i]], i)[0], use_tqdm and len(prepared) > 1)

    def stream(self, prompt, sampling_params: SamplingParams | None = None, add_special_tokens: bool = True):
        """Yield StreamPiece(text, token_ids, finished, finish_reason) as tokens are generated."""
        seq, hold = self._stream_seq(prompt, sampling_params, add_special_tokens)
        return driver.stream(self.engine, seq, hold)

    def _stream_seq(self, prompt, sampling_params, add_special_tokens):
        sp = sampling_params or SamplingParams()
        if sp.n != 1:
            raise InputError(f"stream() generates one sequence; got SamplingParams.n = {sp.n}")
        groups = self._prepare([prompt] if not isinstance(prompt, list) or prompts._is_ids(prompt) else prompt,
                               sp, add_special_tokens)
        if len(groups) != 1:
            raise InputError(f"stream() takes one prompt, got {len(groups)}")
        seq = groups[0][0]
        hold = max((len(s) for s in sp.stop or []), default=1) - 1   # text that may still become a stop string
        return seq, hold

    def astream(self, prompt, sampling_params: SamplingParams | None = None, add_special_tokens: bool = True):
        """``async for piece in model.astream(...)``: stream() for asyncio; steps run in a worker thread and
        share the batch with other tasks' and threads' requests. Cancelling the task aborts the request."""
        seq, hold = self._stream_seq(prompt, sampling_params, add_special_tokens)
        return driver.astream(self.engine, seq, hold)

    def chat(self, messages, sampling_params=None, use_tqdm: bool = True, chat_template: str | None = None,
             chat_template_kwargs: dict | None = None) -> list[RequestOutput]:
        """One conversation (list of {"role", "content"}) or a batch of them, through the chat template."""
        self._check_open()
        if self.tokenizer is None:
            raise TokenizerError("chat() needs a tokenizer with a chat template; this model has no tokenizer")
        convs = [messages] if messages and isinstance(messages[0], dict) else messages
        if not convs or not all(isinstance(c, list) and c and all(isinstance(m, dict) for m in c) for c in convs):
            raise InputError("chat() takes a list of {'role', 'content'} dicts, or a list of such lists")
        texts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, chat_template=chat_template,
                                                    **(chat_template_kwargs or {})) for c in convs]
        return self.generate(texts, sampling_params, use_tqdm=use_tqdm, add_special_tokens=False)

    def memory_report(self) -> dict:
        self._check_open()
        seen: dict[int, int] = {}   # id -> bytes, so a tied embedding / lm_head counts once

        def walk(x):
            if isinstance(x, quant_base.Linear):
                for a in [*x.packed.arrays.values(), x.bias]:
                    walk(a)
            elif isinstance(x, (dict, list)):
                for v in (x.values() if isinstance(x, dict) else x):
                    walk(v)
            elif hasattr(x, "nbytes"):
                base = x.base if getattr(x, "base", None) is not None else x
                seen[id(base)] = max(seen.get(id(base), 0), int(x.nbytes))

        walk(self.params)
        weights = sum(seen.values())
        return {"device": self.backend.name, "weights_bytes": weights, "kv_cache_format": self.cache.name,
                "kv_cache_bytes": self.cache.nbytes, "kv_bytes_per_token": self.cache.bytes_per_token(),
                "kv_capacity_tokens": self.cache.num_blocks * self.cache.block_size,
                "kv_bytes_per_token_by_format": {n: kv_formats.get(n)(self.config, 1, self.cache.block_size,
                                                                      self.backend).bytes_per_token()
                                                 for n in kv_formats.available()}}


def _linear_factory(method, backend):
    """make_linear(role, name, w, bias): the method picks per role (method.for_layer); a shape the method
    cannot take (e.g. K not a multiple of its group) stays dense.
    On the GPU a method that quantizes on the device (round-to-nearest wint8/wint4/w8a8/w4a8/w4afp8) gets w
    there: random weights are drawn there already; a checkpoint's host tensor is uploaded in its own dtype
    (bf16: half the bytes of float32) and quantized on the device, bit-identical to NumPy and far faster (the
    8B took ~200 s on the host). One weight's temporaries are alive at a time; they return to CuPy's pool."""
    dense = get_method("dense")(dtype=backend.compute_dtype)

    def make(role, name, w, bias):
        m = method.for_layer(role, name) or dense
        if not m.accepts(tuple(w.shape)):
            log.info("fdlite: %s %s stays dense (%s does not accept shape %s)", role, name, m.name, tuple(w.shape))
            m = dense
        if backend.is_gpu and m.quantizes_on_device:
            w = backend.asarray(w)                  # no copy for a device array
        packed = m.prepare(m.quantize(w), backend)
        return quant_base.Linear(m, packed, bias, backend.xp)

    return make
