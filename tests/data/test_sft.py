"""gpt-preprocess format=sft: the template, the loss mask (only response tokens and the end of the
document train), bad records by on_error with file:line, and the mask reaching the loader's weights."""

import json
import re

import numpy as np
import pyarrow as pa
import pytest

from gpt.config.commands import PreprocessConfig, SftConfig, TokenizerConfig
from gpt.config.training import DataConfig
from gpt.data import build_loaders, load_tokenizer, read_metadata
from gpt.data.sft import prompt_text, render
from gpt.errors import DataError

from tests.data.helpers import read_rows


def sft(input, output, **kw) -> dict:
    from gpt.data.preprocess import preprocess

    return preprocess(PreprocessConfig(input=str(input), output=str(output), format="sft", **kw))


def masks(shard_dir) -> list:
    rows = []
    for f in sorted(shard_dir.glob("shard-*.arrow")):
        rows.extend(pa.ipc.open_file(pa.memory_map(str(f))).read_all().column("loss_mask").to_pylist())
    return rows


def jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_template_of_both_record_shapes():
    s = SftConfig()
    assert render({"prompt": "2+2=", "response": "4"}, s) == [("### User:\n2+2=\n\n### Assistant:\n", 0), ("4", 1)]
    assert prompt_text("2+2=", s) == render({"prompt": "2+2=", "response": "4"}, s)[0][0]
    chat = {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
                         {"role": "assistant", "content": "Bye."}]}
    assert render(chat, s) == [("### System:\nBe terse.\n\n### User:\nHi\n\n### Assistant:\n", 0),
                               ("Hello.\n\n", 1),  # the separator ends the assistant's turn: trained
                               ("### User:\nBye\n\n### Assistant:\n", 0), ("Bye.", 1)]
    custom = SftConfig(prompt_key="q", response_key="a", user_prefix="Q: ", assistant_prefix="A: ", separator="\n")
    assert render({"q": "x", "a": "y"}, custom) == [("Q: x\nA: ", 0), ("y", 1)]


def test_mask_covers_responses_and_reaches_the_loader(tmp_path):
    """Prompts are letters, responses digits: every trained label must be a digit or the end of a
    document, and every digit of a response must be trained."""
    rng = np.random.default_rng(0)
    records = [{"prompt": "".join(rng.choice(list("abcdef"), 5)), "response": str(int(rng.integers(10, 99)))}
               for _ in range(60)]
    records[::3] = [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]}
                    for r in records[::3]]
    out = tmp_path / "sft"
    meta = sft(jsonl(tmp_path / "in.jsonl", records), out)
    assert meta == read_metadata(out) and meta["num_documents"] == 60 and meta["source"]["format"] == "sft"
    for ids, mask, r in zip(read_rows(out), masks(out), records):
        text = bytes(ids).decode()
        response = r.get("response") or r["messages"][1]["content"]
        prompt = r.get("prompt") or r["messages"][0]["content"]
        assert text == prompt_text(prompt, SftConfig()) + response
        assert bytes(np.array(ids)[np.array(mask) == 1].tolist()).decode() == response
    assert meta["source"]["trained_tokens"] == sum(len(str(r.get("response") or r["messages"][1]["content"])) for r in records)

    train, _ = build_loaders(DataConfig(path=str(out), val_fraction=0.0), seq_len=32, global_batch_size=8,
                             micro_batch_size=4, dp_rank=0, dp_size=1, seed=3)
    eod = load_tokenizer(out).eod_id
    for step in range(4):
        micro = train.global_batch(step * 8)
        for b in micro:
            trained = b.weights > 0
            is_answer = ((b.labels >= ord("0")) & (b.labels <= ord("9"))) | (b.labels == eod)
            assert trained.any() and bool((trained == is_answer).all())
        # the loss is the mean over the trained tokens of the whole global batch (times grad_accum = 2)
        assert abs(sum(float(b.weights.sum()) for b in micro) - 2.0) < 1e-5


def test_bpe_prompt_tokens_are_those_of_the_rendered_prompt(tmp_path):
    """Segments are tokenised on their own, so a generation prompt (the rendered prefix) encodes to
    exactly the tokens the model was trained to continue."""
    records = [{"prompt": f"say {w} twice", "response": f"{w} {w}"} for w in ("alpha", "beta", "gamma", "delta") * 20]
    out = tmp_path / "bpe"
    sft(jsonl(tmp_path / "in.jsonl", records), out, tokenizer=TokenizerConfig(kind="bpe", vocab_size=300))
    tok = load_tokenizer(out)
    for ids, mask, r in zip(read_rows(out), masks(out), records):
        n = mask.index(1)
        assert ids[:n] == tok.encode(prompt_text(r["prompt"], SftConfig()))
        assert tok.decode(ids[n:]) == r["response"]


BAD = [
    ('{"prompt": 3, "response": "x"}', "'prompt' is not a string (int)"),
    ('{"prompt": "x"}', "no 'response' field"),
    ('{"prompt": "x", "response": ""}', "empty 'response'"),
    ('{"messages": [{"role": "robot", "content": "x"}]}', "bad message 0"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "no assistant message"),
    ('[1, 2]', "not a JSON object (list)"),
    ("{oops", "invalid JSON"),
]


@pytest.mark.parametrize("line, reason", BAD)
def test_bad_record_fails_with_file_and_line(tmp_path, line, reason):
    src = jsonl(tmp_path / "in.jsonl", [{"prompt": "a", "response": "b"}, line])
    with pytest.raises(DataError, match=rf"in\.jsonl:2: {re.escape(reason)}.*pass on_error=skip"):
        sft(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_records_skipped_and_counted(tmp_path):
    src = jsonl(tmp_path / "in.jsonl", [{"prompt": "a", "response": "b"}, BAD[0][0], BAD[6][0], BAD[0][0]])
    meta = sft(src, tmp_path / "out", on_error="skip")
    assert meta["num_documents"] == 1
    assert meta["source"]["skipped_records"] == {"'prompt' is not a string": 2, "invalid JSON": 1}
    with pytest.raises(DataError, match="holds no usable instruction records"):
        sft(jsonl(tmp_path / "bad.jsonl", [BAD[0][0]]), tmp_path / "none", on_error="skip")


def test_parquet_chat_records_and_text_refused(tmp_path):
    import pyarrow.parquet as pq

    table = pa.table({"messages": [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]]})
    pq.write_table(table, tmp_path / "chat.parquet")
    meta = sft(tmp_path / "chat.parquet", tmp_path / "out")
    assert meta["num_documents"] == 1 and masks(tmp_path / "out") == [[0] * len("### User:\nhi\n\n### Assistant:\n") + [1, 1]]
    (tmp_path / "plain.txt").write_text("text")
    with pytest.raises(DataError, match=r"plain\.txt: format=sft reads instruction records from \.jsonl"):
        sft(tmp_path / "plain.txt", tmp_path / "out2")
