"""Tokenizers: text <-> token ids, incremental detokenization, chat templates.

Supported sources, each giving the ids transformers gives for the same files:

* HF directory with ``tokenizer.json``: loaded by the ``tokenizers`` library, with ``tokenizer_config.json``
  for the named special tokens and the chat template (``chat_template.jinja`` beside it wins). What
  ``encode(add_special_tokens=True)`` adds is what tokenizer.json's post-processor adds (as in
  transformers 5).
* HF directory with only ``tokenizer.model``: SentencePiece; ``add_bos_token`` (default True, as
  LlamaTokenizer) / ``add_eos_token`` from ``tokenizer_config.json``.
* GGUF metadata, ``tokenizer.ggml.model`` = ``gpt2`` (byte-level BPE rebuilt from tokens + merges exactly as
  transformers' GGUF loader builds it) or ``llama`` (SentencePiece BPE: a ``ModelProto`` is serialized here
  from tokens / scores / token types and handed to ``sentencepiece``; no protobuf package needed).

SentencePiece text is cut at special / added token strings first (transformers matches those whole), and the
dummy-prefix space follows transformers' ``Metaspace(prepend_scheme="first")``: it is added only to the first
piece of text, and not when that text already starts with a space.
"""

from __future__ import annotations

import functools
import json
import re
import struct
from datetime import datetime
from pathlib import Path

from fdlite.errors import TokenizerError

_SPACE = "\u2581"  # SentencePiece's visible space
_GGUF_NONE = 0xFFFFFFFF  # llama.cpp writes this for "no such token"

# GGUF pre-tokenizer names -> the split regex transformers installs for them (gguf_tokenizer_mapping.py).
# Names not listed (gpt2, smollm, ...) keep the GPT-2 ByteLevel regex.
_C, _T = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)", r"|\s*[\r\n]+|\s+(?!\S)|\s+"  # contractions, whitespace tail
_UP, _LO = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
_LLAMA3 = _C + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*" + _T
_QWEN2 = _C + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*" + _T
_QWEN35 = _C + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*" + _T
_TEKKEN = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UP}*{_LO}+|[^\r\n\p{{L}}\p{{N}}]?{_UP}+{_LO}*"
           r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*" + _T)
_GPT4O = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UP}*{_LO}+{_C}?|[^\r\n\p{{L}}\p{{N}}]?{_UP}+{_LO}*{_C}?"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*" + _T)
_PRE_SPLITS = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                     "jina-v5-nano", "dbrx", "smaug-bpe"), _LLAMA3),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"), _QWEN2),
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _GPT4O),
    "qwen35": _QWEN35, "tekken": _TEKKEN,
}
_SUPPORTED_GGUF = ("gpt2", "llama")


class Tokenizer:
    """Common surface; `_HFTokenizer` (tokenizers library) and `_SPTokenizer` (sentencepiece) fill it in."""

    vocab_size: int
    bos_token_id: int | None
    eos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    pad_token_id: int | None
    add_bos_token: bool
    add_eos_token: bool
    chat_template: str | None
    special_ids: frozenset[int]

    def _finish(self, *, bos, eos, pad, unk=None, add_bos, add_eos, chat_template, special_ids, eot=(),
                extra_eos_ids=(), source):
        def valid(i):  # GGUF files spell "none" as 0xFFFFFFFF or -1
            return i if i is not None and 0 <= int(i) < self.vocab_size else None
        self.bos_token_id, self.eos_token_id, self.pad_token_id = valid(bos), valid(eos), valid(pad)
        self._unk_id = valid(unk)
        self.add_bos_token = bool(add_bos) and self.bos_token_id is not None
        self.add_eos_token = bool(add_eos) and self.eos_token_id is not None
        self.chat_template = chat_template or None
        self.special_ids = frozenset(special_ids)
        ends = [self.eos_token_id, *(valid(i) for i in eot), *(int(i) for i in extra_eos_ids)]
        self.eos_token_ids = tuple(dict.fromkeys(i for i in ends if i is not None))
        self.source = source

    def __repr__(self):
        return f"{type(self).__name__}({self.source!r}, vocab_size={self.vocab_size})"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise TokenizerError(f"encode() takes a str, got {type(text).__name__}: {text!r:.80}")
        return self._encode(text, add_special_tokens)

    def encode_batch(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        return [self.encode(t, add_special_tokens) for t in texts]

    def _check_ids(self, ids) -> list[int]:
        ids = [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise TokenizerError(f"token id {i} is outside the vocabulary of {self.source} "
                                     f"(size {self.vocab_size})")
        return ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self._decode(self._check_ids(ids), skip_special_tokens)

    def id_to_piece(self, i: int) -> str:
        return self._piece(self._check_ids([i])[0])

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            chat_template: str | None = None, **kwargs) -> str:
        template = chat_template or self.chat_template
        if not template:
            raise TokenizerError(f"{self.source} has no chat template; pass one as "
                                 "apply_chat_template(messages, chat_template='{% for m in messages %}...')")
        # Same variables as transformers: the named special tokens, tools/documents None, then the caller's.
        named = {"bos_token": self.bos_token_id, "eos_token": self.eos_token_id, "unk_token": self._unk_id,
                 "pad_token": self.pad_token_id}
        variables = {**{k: self.id_to_piece(i) for k, i in named.items() if i is not None},  # set ones only
                     "tools": None, "documents": None,
                     **kwargs, "messages": messages, "add_generation_prompt": add_generation_prompt}
        try:
            return _compile_template(template).render(**variables)
        except TokenizerError:
            raise
        except Exception as e:  # jinja2 syntax/sandbox/undefined errors: say where they came from
            raise TokenizerError(f"chat template of {self.source} failed: {type(e).__name__}: {e}") from e

    def detokenizer(self, skip_special_tokens: bool = True) -> "IncrementalDetokenizer":
        return IncrementalDetokenizer(self, skip_special_tokens)


class _HFTokenizer(Tokenizer):
    """Backed by a `tokenizers.Tokenizer`: tokenizer.json, or a GGUF byte-level BPE vocabulary."""

    def __init__(self, backend, *, named: dict, add_bos, add_eos, **info):
        from tokenizers import AddedToken, processors
        self._tk = backend
        # transformers adds every named special token (bos/eos/unk/pad) that is not yet an added token.
        have = {t.content for t in backend.get_added_tokens_decoder().values()}
        missing = [AddedToken(s, special=True, normalized=False) for s in dict.fromkeys(named.values())
                   if s is not None and s not in have]
        if missing:
            backend.add_special_tokens(missing)
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        ids = {k: (None if v is None else backend.token_to_id(v)) for k, v in named.items()}
        # Explicit add_bos/add_eos (or no post-processor at all) -> transformers' update_post_processor().
        if add_bos is not None or add_eos is not None or backend.post_processor is None:
            bos = named.get("bos") if add_bos and ids.get("bos") is not None else None
            eos = named.get("eos") if add_eos and ids.get("eos") is not None else None
            head, tail = (f"{bos}:0 " if bos else ""), (f" {eos}:0" if eos else "")
            pair = f"{head}$A:0{tail}{f' {bos}:1' if bos else ''} $B:1{f' {eos}:1' if eos else ''}"
            marks = dict.fromkeys([(bos, ids.get("bos"))] * bool(bos) + [(eos, ids.get("eos"))] * bool(eos))
            backend.post_processor = processors.TemplateProcessing(single=f"{head}$A:0{tail}", pair=pair,
                                                                   special_tokens=list(marks))
        specials = {i for i, t in backend.get_added_tokens_decoder().items() if t.special}
        # What encode(add_special_tokens=True) adds is whatever the post-processor adds: ask it.
        probe = backend.encode("", add_special_tokens=True).ids
        adds_bos = bool(probe) and probe[0] == ids.get("bos")
        self._finish(bos=ids.get("bos"), eos=ids.get("eos"), pad=ids.get("pad"), unk=ids.get("unk"),
                     add_bos=adds_bos, add_eos=len(probe) > adds_bos and probe[-1] == ids.get("eos"),
                     special_ids=specials, **info)

    def _encode(self, text, add_special_tokens):
        return self._tk.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts, add_special_tokens=True):
        if not all(isinstance(t, str) for t in texts):
            raise TokenizerError("encode_batch() takes a list of str")
        return [e.ids for e in self._tk.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def _decode(self, ids, skip_special_tokens):
        return self._tk.decode(ids, skip_special_tokens=skip_special_tokens)

    def _piece(self, i):
        return self._tk.id_to_token(i)


class _SPTokenizer(Tokenizer):
    """Backed by SentencePiece; special/added tokens are matched in the text here, as transformers does."""

    def __init__(self, proto: bytes, *, add_prefix: bool, prefix_every_segment: bool = False, added: dict,
                 source: str, **info):
        import sentencepiece as spm

        def processor(dummy_prefix):
            # A second normalizer_spec appended to the proto is merged into the first (protobuf semantics),
            # so this switches add_dummy_prefix without parsing the model.
            override = _field(3, _field(3, dummy_prefix))
            return spm.SentencePieceProcessor(model_proto=proto + override)
        try:
            self._sp, self._sp_bare = processor(True), processor(False)
        except (RuntimeError, OSError) as e:
            raise TokenizerError(f"{source}: sentencepiece cannot load this model: {e}") from e
        self._add_prefix, self._prefix_every = add_prefix, prefix_every_segment
        sp = self._sp
        self.vocab_size = sp.get_piece_size()
        self._pieces = [sp.id_to_piece(i) for i in range(self.vocab_size)]
        # Bytes each id decodes to: byte pieces are raw bytes, the rest text with the visible space undone.
        self._bytes = [bytes([int(p[3:5], 16)]) if sp.is_byte(i) else p.replace(_SPACE, " ").encode()
                       for i, p in enumerate(self._pieces)]
        self._added = {s: i for s, i in added.items() if 0 <= i < self.vocab_size}
        # Longest first, so a regex alternation finds the leftmost-longest token as tokenizers' matcher does.
        alts = sorted(self._added, key=len, reverse=True)
        self._split = re.compile("|".join(map(re.escape, alts))) if alts else None
        self._finish(source=source, **info)

    def _encode_text(self, text, first):
        # transformers' Metaspace(prepend_scheme="first"): dummy prefix on the first piece of text only, and
        # not when it already starts with a space; "always" (legacy=True) prefixes every piece.
        prefix = self._add_prefix and (first or self._prefix_every) and not text.startswith((" ", _SPACE))
        return (self._sp if prefix else self._sp_bare).encode(text)

    def _encode(self, text, add_special_tokens):
        ids, pos = [], 0
        for m in self._split.finditer(text) if self._split else ():
            if m.start() > pos:
                ids += self._encode_text(text[pos:m.start()], pos == 0)
            ids.append(self._added[m.group()])
            pos = m.end()
        if pos < len(text):
            ids += self._encode_text(text[pos:], pos == 0)
        if add_special_tokens:
            ids = [self.bos_token_id] * self.add_bos_token + ids + [self.eos_token_id] * self.add_eos_token
        return ids

    def _decode(self, ids, skip_special_tokens):
        out = [self._bytes[i] for i in ids if not (skip_special_tokens and i in self.special_ids)]
        # errors="replace" keeps decoding prefix-stable (the incremental detokenizer relies on it);
        # transformers' ByteFallback writes one U+FFFD per byte of an invalid run: the only difference.
        text = b"".join(out).decode("utf-8", errors="replace")
        # transformers' decoder Strip(left=1): drop the one dummy-prefix space at the start.
        return text[1:] if self._add_prefix and text.startswith(" ") else text

    def _piece(self, i):
        return self._pieces[i]


class IncrementalDetokenizer:
    """Turns a stream of ids into text deltas whose concatenation (plus flush()) equals decode(all ids).

    Like vLLM/TGI: decode a short window of ids twice (up to the last emitted id, and with the new ones) and
    emit the difference. Decoding a window, not each id alone, keeps SentencePiece's leading spaces right;
    holding text that ends in U+FFFD keeps a multi-byte character split over tokens from coming out broken.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self._tok, self._skip = tokenizer, skip_special_tokens
        self._ids: list[int] = []
        self._prefix = self._read = 0  # window start; ids before _read are already emitted
        self.text = ""

    def _delta(self, final):
        window = self._ids[self._prefix:]
        before = self._tok.decode(window[:self._read - self._prefix], self._skip)
        now = self._tok.decode(window, self._skip)
        if not final and (len(now) <= len(before) or now.endswith("\ufffd")):
            return ""  # nothing new yet, or an incomplete UTF-8 sequence: wait for the next id
        self._prefix, self._read = self._read, len(self._ids)
        delta = now[len(before):]
        self.text += delta
        return delta

    def add(self, token_id: int) -> str:
        self._ids.append(int(token_id))
        return self._delta(final=False)

    def flush(self) -> str:
        return self._delta(final=True) if self._read < len(self._ids) else ""


# ------------------------------------------------------------------------------------------ chat templates

@functools.lru_cache(maxsize=16)
def _compile_template(source: str):
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TokenizerError(f"chat template: {message}")

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # transformers' override: jinja's own tojson escapes HTML characters, which templates do not expect
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    return env.from_string(source)


# ------------------------------------------------------------------------------------------------------- GGUF

def _field(num: int, value) -> bytes:
    """One protobuf field: int/bool/enum as varint, float as fixed32, str/bytes length-delimited."""
    if isinstance(value, float):
        return _varint(num << 3 | 5) + struct.pack("<f", value)
    if isinstance(value, int):
        return _varint(num << 3) + _varint(int(value))
    if isinstance(value, str):
        value = value.encode()
    return _varint(num << 3 | 2) + _varint(len(value)) + value


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32 values are sign-extended to 64 bits on the wire
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _spm_proto(tokens, scores, types, unk_id) -> bytes:
    """A SentencePiece BPE ModelProto (pieces=1, trainer_spec=2, normalizer_spec=3) in llama.cpp's setup."""
    # GGUF token types (1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte) use SentencePiece's
    # own numbering; 0 ("undefined") is treated as normal.
    pieces = b"".join(_field(1, _field(1, t) + _field(2, float(s)) + _field(3, int(k) if 1 <= k <= 6 else 1))
                      for t, s, k in zip(tokens, scores, types))
    # model_type=BPE, vocab_size, byte_fallback, unk_id; no bos/eos/pad ids: this module adds BOS/EOS
    trainer = (_field(3, 2) + _field(4, len(tokens)) + _field(35, True) + _field(40, unk_id)
               + _field(41, -1) + _field(42, -1) + _field(43, -1))
    normalizer = _field(1, "identity") + _field(3, True) + _field(4, False) + _field(5, True)
    return pieces + _field(2, trainer) + _field(3, normalizer)


@functools.lru_cache(maxsize=1)
def _byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character table (transformers' bytes_to_unicode)."""
    shown = [*range(33, 127), *range(161, 173), *range(174, 256)]  # printable bytes stand for themselves
    hidden = [b for b in range(256) if b not in shown]  # the rest get the characters from U+0100 on
    return {**{b: chr(b) for b in shown}, **{b: chr(256 + n) for n, b in enumerate(hidden)}}


def tokenizer_from_gguf(metadata: dict, source: str = "<gguf>", extra_eos_ids=()) -> Tokenizer | None:
    """Build the tokenizer a GGUF file describes from its metadata (key -> field.contents())."""
    model = metadata.get("tokenizer.ggml.model")
    if model is None:
        return None
    if model not in _SUPPORTED_GGUF:
        raise TokenizerError(f"{source}: tokenizer.ggml.model = {model!r} is not supported "
                             f"(supported: {', '.join(_SUPPORTED_GGUF)})")

    def need(key):
        if metadata.get(key) is None:
            raise TokenizerError(f"{source}: GGUF metadata has no {key} (needed for a {model!r} tokenizer)")
        return list(metadata[key])
    tokens = need("tokenizer.ggml.tokens")
    types = list(metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    g = {k: metadata.get(f"tokenizer.ggml.{k}") for k in ("bos_token_id", "eos_token_id", "padding_token_id",
                                                          "unknown_token_id", "eot_token_id", "eom_token_id")}
    g = {k: (None if v is None or int(v) in (_GGUF_NONE, -1) or not 0 <= int(v) < len(tokens) else int(v))
         for k, v in g.items()}
    common = dict(add_eos=bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
                  chat_template=metadata.get("tokenizer.chat_template"),
                  eot=(g["eot_token_id"], g["eom_token_id"]), extra_eos_ids=extra_eos_ids, source=source)

    if model == "llama":
        scores = need("tokenizer.ggml.scores")
        unk = g["unknown_token_id"] if g["unknown_token_id"] is not None else next(
            (i for i, k in enumerate(types) if k == 2), 0)
        types = [2 if i == unk else (1 if k == 2 else k) for i, k in enumerate(types)]  # exactly one UNKNOWN
        named = {g[k] for k in ("bos_token_id", "eos_token_id", "padding_token_id")} | {unk}
        # transformers adds control tokens (and bos/eos/unk/pad) as special, user-defined ones as plain added
        specials = {i for i, k in enumerate(types) if k == 3} | (named - {None})
        added = {tokens[i]: i for i in sorted(specials | {i for i, k in enumerate(types) if k == 4})}
        return _SPTokenizer(_spm_proto(tokens, scores, types, unk),
                            add_prefix=bool(metadata.get("tokenizer.ggml.add_space_prefix", True)),
                            added=added, special_ids=specials, bos=g["bos_token_id"], eos=g["eos_token_id"],
                            pad=g["padding_token_id"], unk=unk,
                            # llama.cpp and transformers add BOS to a SentencePiece vocabulary unless told not
                            add_bos=bool(metadata.get("tokenizer.ggml.add_bos_token", True)), **common)

    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as Backend
    merges = need("tokenizer.ggml.merges")
    spell = _byte_chars()
    alphabet = set(spell.values())
    # As transformers: tokens already written in the byte alphabet stay; others are respelled byte by byte.
    vocab = {t if set(t) <= alphabet else "".join(spell[b] for b in t.encode()): i
             for i, t in enumerate(tokens)}
    try:
        backend = Backend(models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], dropout=None,
                                     continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    except Exception as e:
        raise TokenizerError(f"{source}: cannot build a BPE model from tokenizer.ggml.tokens/merges: {e}") \
            from e
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # Control tokens become special added tokens, unless spelled outside the byte alphabet (llama.cpp
    # mislabels); user-defined ones that exist in the vocabulary as spelled become plain added tokens.
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, k in zip(tokens, types) if k == 3 and set(t) <= alphabet])
    user = [AddedToken(t, special=False, normalized=False)
            for t, k in zip(tokens, types) if k == 4 and t in vocab]
    if user:
        backend.add_tokens(user)
    split = _PRE_SPLITS.get(metadata.get("tokenizer.ggml.pre"))
    if split is not None:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    named = {k: (None if g[key] is None else tokens[g[key]]) for k, key in
             (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unknown_token_id"),
              ("pad", "padding_token_id"))}
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", False))
    return _HFTokenizer(backend, named=named, add_bos=add_bos, add_eos=common.pop("add_eos"), **common)


# -------------------------------------------------------------------------------------------- HF directory

def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TokenizerError(f"{path}: cannot read tokenizer config: {e}") from e


def _token_str(value):
    """A special token in tokenizer_config.json is a string or an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


def load_tokenizer(path, extra_eos_ids=()) -> Tokenizer | None:
    """The tokenizer of an HF model directory; None when it has no tokenizer files."""
    path = Path(path)
    if not path.is_dir():
        raise TokenizerError(f"{path}: no such model directory")
    cfg = _read_json(path / "tokenizer_config.json") if (path / "tokenizer_config.json").is_file() else {}
    if (path / "special_tokens_map.json").is_file():  # legacy file; tokenizer_config.json wins
        cfg = {**_read_json(path / "special_tokens_map.json"), **cfg}
    template = cfg.get("chat_template")
    if isinstance(template, list):  # named templates: take "default"
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if (path / "chat_template.jinja").is_file():
        template = (path / "chat_template.jinja").read_text(encoding="utf-8")
    named = {k: _token_str(cfg.get(f"{k}_token")) for k in ("bos", "eos", "unk", "pad")}
    added = {int(i): t for i, t in (cfg.get("added_tokens_decoder") or {}).items()}
    common = dict(add_bos=cfg.get("add_bos_token"), add_eos=cfg.get("add_eos_token"), chat_template=template,
                  extra_eos_ids=extra_eos_ids, source=str(path))

    if (path / "tokenizer.json").is_file():
        from tokenizers import AddedToken
        from tokenizers import Tokenizer as Backend
        try:
            backend = Backend.from_file(str(path / "tokenizer.json"))
        except Exception as e:
            raise TokenizerError(f"{path / 'tokenizer.json'}: cannot load tokenizer: {e}") from e
        have = set(backend.get_vocab(with_added_tokens=True))
        flags = ("special", "normalized", "lstrip", "rstrip", "single_word")
        extra = [AddedToken(t["content"], **{k: t[k] for k in flags if k in t})
                 for _, t in sorted(added.items()) if t["content"] not in have]
        if extra:
            backend.add_tokens(extra)
        # transformers 5 drops the config's add_bos_token/add_eos_token when tokenizer.json exists: the
        # post-processor saved in tokenizer.json decides what encode(add_special_tokens=True) adds.
        common.update(add_bos=None, add_eos=None)
        return _HFTokenizer(backend, named=named, **common)

    if (path / "tokenizer.model").is_file():
        import sentencepiece as spm
        file = path / "tokenizer.model"
        try:
            proto = file.read_bytes()
            sp = spm.SentencePieceProcessor(model_proto=proto)
        except (OSError, RuntimeError) as e:
            raise TokenizerError(f"{file}: not a readable SentencePiece model: {e}") from e
        # LlamaTokenizer's defaults, then the config; named tokens and added_tokens_decoder are matched whole.
        named = {"bos": "<s>", "eos": "</s>", "unk": "<unk>"} | {k: v for k, v in named.items() if v}
        ids = {k: sp.piece_to_id(v) for k, v in named.items()}
        ids = {k: i for k, i in ids.items() if sp.id_to_piece(i) == named[k]}  # absent pieces map to unk
        words = {named[k]: i for k, i in ids.items()} | {t["content"]: i for i, t in added.items()}
        specials = set(ids.values()) | {i for i, t in added.items() if t.get("special", True)}
        common.update(add_bos=common["add_bos"] is not False, add_eos=bool(common["add_eos"]))  # BOS default
        return _SPTokenizer(proto, add_prefix=cfg.get("add_prefix_space", True) is not False,
                            prefix_every_segment=cfg.get("legacy", False) is True, added=words,
                            special_ids=specials, bos=ids.get("bos"), eos=ids.get("eos"), pad=ids.get("pad"),
                            unk=ids.get("unk"), **common)
    return None
