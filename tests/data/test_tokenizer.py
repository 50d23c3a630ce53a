"""Every tokenizer kind: round trip text -> ids -> text, specials, and rebuilding from metadata."""

import json

import numpy as np
import pytest
import torch

from gpt.data import ByteTokenizer, tokenizer_from_dict
from gpt.data.hf_tokenizer import HFTokenizer, train_bpe
from gpt.data.tiktoken_tokenizer import TiktokenTokenizer
from gpt.errors import DataError

from tests.data.helpers import fake_tiktoken_cache

TEXTS = ["Hello, world!", "  indented\n\tcode = 1\n", "naïve café — 東京 🙂", "<|endoftext|> is just text here", "x"]


def round_trip(tok, texts=TEXTS):
    ids = tok.encode_batch(texts)
    assert ids == [tok.encode(t) for t in texts]
    for text, i in zip(texts, ids):
        assert tok.eod_id not in i, "encode never emits the end-of-document token"
        assert all(0 <= x < tok.vocab_size for x in i)
        assert tok.decode(i) == text
        assert tok.decode(i + [tok.eod_id]) == text, "decode skips special tokens"
    flat, lengths = tok.encode_arrays(texts, np.uint32)
    assert lengths.tolist() == [len(i) for i in ids] and flat.tolist() == [x for i in ids for x in i]


def test_byte_tokenizer():
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.eod_id) == (257, 256)
    round_trip(tok)
    assert tok.encode("é") == [0xC3, 0xA9]
    assert tok.decode(torch.tensor([104, 105, 256, 0xC3])) == "hi\ufffd", "invalid UTF-8 decodes with replacement"
    assert tok.decode([104, 300, 105]) == "hi", "ids of the padded embedding rows are skipped"
    assert tokenizer_from_dict(tok.to_dict(), "/nonexistent").to_dict() == tok.to_dict()


@pytest.fixture(scope="module")
def bpe(shakespeare):
    return train_bpe([shakespeare.read_text()[:200_000]], 600)


def test_bpe_trained_on_the_input(bpe, tmp_path):
    assert bpe.vocab_size == 600 and bpe.eod_id == 0 and bpe.kind == "bpe"
    round_trip(bpe)
    assert len(bpe.encode("the king and the queen")) < len("the king and the queen"), "merges were learnt"
    bpe.save_files(tmp_path)
    again = tokenizer_from_dict(json.loads(json.dumps(bpe.to_dict())), tmp_path)
    assert again.encode_batch(TEXTS) == bpe.encode_batch(TEXTS)
    with pytest.raises(DataError, match="vocab_size=100 is too small"):
        train_bpe(["abc"], 100)


def test_rebuilding_checks_the_tokenizer_file(bpe, shakespeare, tmp_path):
    other = train_bpe([shakespeare.read_text()[200_000:400_000]], 600)
    other.save_files(tmp_path)
    with pytest.raises(DataError, match="sha256"):
        tokenizer_from_dict(bpe.to_dict(), tmp_path)
    with pytest.raises(DataError, match="no such tokenizer file"):
        tokenizer_from_dict(bpe.to_dict(), tmp_path / "elsewhere")
    with pytest.raises(DataError, match="kind 'sentencepiece'"):
        tokenizer_from_dict({"kind": "sentencepiece"}, tmp_path)


def test_hf_tokenizer_json(bpe, tmp_path):
    bpe.save_files(tmp_path)
    hf = HFTokenizer.from_file(tmp_path / "tokenizer.json")
    assert hf.kind == "hf" and hf.eod_token == "<|endoftext|>" and hf.eod_id == 0
    round_trip(hf)
    custom = HFTokenizer.from_file(tmp_path / "tokenizer.json", eod_token="<|doc|>")
    assert custom.eod_id == 600 and custom.vocab_size == 601, "a missing end-of-document token is added"
    round_trip(custom)

    from tokenizers import Tokenizer, models, pre_tokenizers

    plain = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    plain.pre_tokenizer = pre_tokenizers.Whitespace()
    plain.save(str(tmp_path / "plain.json"))
    with pytest.raises(DataError, match="tokenizer.eod_token"):
        HFTokenizer.from_file(tmp_path / "plain.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match="broken.json"):
        HFTokenizer.from_file(tmp_path / "broken.json")


def test_tiktoken_from_the_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    fake_tiktoken_cache(tmp_path)
    tok = TiktokenTokenizer("cl100k_base")
    assert tok.eod_id == 100257 and tok.vocab_size == 100277
    round_trip(tok)
    assert len(tok.encode("the thing")) < len("the thing")
    assert tok.decode(tok.encode("ab") + [100256, 100300, 100276]) == "ab", "holes, pad rows and specials are skipped"
    assert tokenizer_from_dict(tok.to_dict(), tmp_path).to_dict() == tok.to_dict()


def test_tiktoken_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty"))
    with pytest.raises(DataError) as e:
        TiktokenTokenizer("gpt2")
    assert "TIKTOKEN_CACHE_DIR" in str(e.value) and str(tmp_path / "empty") in str(e.value)
    with pytest.raises(DataError, match="not a tiktoken encoding"):
        TiktokenTokenizer("gpt5")
    broken = fake_tiktoken_cache(tmp_path / "broken")
    broken.write_bytes(b"this is not base64 ranks\n")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "broken"))
    with pytest.raises(DataError, match="not a valid encoding"):
        TiktokenTokenizer("cl100k_base")


def test_long_documents_are_encoded_in_segments_that_give_exactly_the_whole_encoding(shakespeare, tmp_path,
                                                                                    monkeypatch):
    """Tokenizer.segments cuts only where encoding both ways agrees: joined ids == ids of the whole text."""
    import sysconfig
    from pathlib import Path

    prose = shakespeare.read_text()[:120_000]
    code = (Path(sysconfig.get_paths()["stdlib"]) / "argparse.py").read_text()[:80_000]
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    fake_tiktoken_cache(tmp_path / "tiktoken")
    metaspace = train_bpe([prose[:30_000]], 300)
    from tokenizers import pre_tokenizers
    metaspace._tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")  # a prefix on every piece
    for tok in (ByteTokenizer(), train_bpe([prose[:50_000]], 400), TiktokenTokenizer("cl100k_base"), metaspace):
        for text in (prose, code, "x" * 20_000 + " y" * 5_000):
            pieces = tok.segments(text, size=3_000)
            assert "".join(pieces) == text
            joined = [i for p in pieces for i in tok.encode(p)]
            assert joined == tok.encode(text), (type(tok).__name__, tok.kind)
            if tok is not metaspace and text is prose:
                assert len(pieces) >= len(text) // 6_000, "cut near every 3000 characters"
