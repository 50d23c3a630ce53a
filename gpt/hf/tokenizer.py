"""Our tokenizers as `transformers` fast tokenizers (tokenizer.json + tokenizer_config.json), and the
tokenizer of a Hugging Face directory as ours.

The byte tokenizer (ids 0-255 = UTF-8 bytes, 256 = end of document) becomes a byte-level BPE with
no merges: GPT-2's byte-to-unicode alphabet, token id = byte value, so `AutoTokenizer` encodes any
text to exactly the ids ours does. BPE/HF kinds already are tokenizer.json files and are copied.
"""

import json
from pathlib import Path

from gpt.data.tokenizer import Tokenizer
from gpt.errors import CheckpointError, ConfigError

EOD = "<|endoftext|>"
TOKENIZER_FILE, TOKENIZER_CONFIG, SPECIAL_TOKENS = "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"
# Text the tokenizer check encodes with both tokenizers: ASCII, code, whitespace runs, digits,
# accents, CJK, emoji, control bytes.
PROBE = ("Hello, world! It's 2024: 3.14159 -- x = [i ** 2 for i in range(10)]\n\n\tdef f(a, b):\n"
         "        return a+b  # done\r\nnaïve café, Größe, ÆØÅ; 東京タワー 🤖🚀 \x00\x07\x7f ~`|\\{}<>\n")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from the 256 byte values to printable unicode characters (the ByteLevel alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def byte_fast_tokenizer():
    """A `tokenizers.Tokenizer` equivalent to our ByteTokenizer."""
    from tokenizers import AddedToken, Tokenizer as RustTokenizer, decoders, models, pre_tokenizers

    vocab = {ch: b for b, ch in bytes_to_unicode().items()}
    tok = RustTokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(EOD, special=True, normalized=False)])
    assert tok.token_to_id(EOD) == 256
    return tok


def export_tokenizer(tokenizer: Tokenizer, out: Path, *, model_max_length: int) -> tuple[str, int]:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json; returns (eod token, eod id)."""
    if tokenizer.kind == "byte":
        byte_fast_tokenizer().save(str(out / TOKENIZER_FILE))
        eod = EOD
    elif tokenizer.kind in ("bpe", "hf"):
        tokenizer.save_files(out)
        eod = tokenizer.eod_token
    else:
        raise CheckpointError(f"a {tokenizer.kind} tokenizer cannot be exported to Hugging Face yet; preprocess with "
                              f"tokenizer.kind=hf tokenizer.path=<a tokenizer.json> to get an exportable one")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eod, "bos_token": eod, "unk_token": None,
              "pad_token": None, "add_bos_token": False, "add_eos_token": False,
              "clean_up_tokenization_spaces": False, "model_max_length": model_max_length}
    (out / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    (out / SPECIAL_TOKENS).write_text(json.dumps({"eos_token": eod, "bos_token": eod}, indent=2) + "\n")
    return eod, tokenizer.eod_id


def load_hf_tokenizer(directory: Path) -> Tokenizer:
    """The tokenizer of an HF directory (its tokenizer.json; end of document = its eos_token)."""
    from gpt.data.hf_tokenizer import HFTokenizer

    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise ConfigError(f"{directory} has no {TOKENIZER_FILE}; model.init_from needs the model's fast tokenizer "
                          f"(save it with AutoTokenizer.from_pretrained(...).save_pretrained(dir))")
    eos = None
    cfg_path = Path(directory) / TOKENIZER_CONFIG
    if cfg_path.is_file():
        try:
            eos = json.loads(cfg_path.read_text()).get("eos_token")
        except (OSError, ValueError) as e:
            raise ConfigError(f"{cfg_path} is not valid JSON ({e})") from None
        if isinstance(eos, dict):  # an AddedToken serialised in full
            eos = eos.get("content")
    return HFTokenizer.from_file(path, kind="hf", eod_token=eos)


def difference(a: Tokenizer, b: Tokenizer) -> str | None:
    """None if a and b give the same ids (vocabulary size, end of document, a probe text), else what differs."""
    if a.vocab_size != b.vocab_size:
        return f"vocabulary sizes differ ({a.vocab_size} vs {b.vocab_size})"
    if a.eod_id != b.eod_id:
        return f"end-of-document ids differ ({a.eod_id} vs {b.eod_id})"
    ea, eb = a.encode(PROBE), b.encode(PROBE)
    if ea != eb:
        i = next((i for i, (x, y) in enumerate(zip(ea, eb)) if x != y), min(len(ea), len(eb)))
        return f"they encode the same text differently (first difference at token {i})"
    return None
