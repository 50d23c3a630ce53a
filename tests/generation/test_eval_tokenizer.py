"""gpt-eval compares what defines the tokenizer (kind, ids, the sha256 of its tokenizer.json), not
where its file was. Before: every bpe/hf run was refused on its own training data, because the
checkpoint's copy of tokenizer.json has another path than the shards' one."""

import json

import pytest
from helpers import run_module, tiny_overrides

from gpt.checkpoint import format as fmt
from gpt.data import load_tokenizer, tokenizer_from_dict
from gpt.data.tokenizer import identity
from gpt.preprocess import main as preprocess


@pytest.fixture(scope="module")
def bpe_run(corpus_file, tmp_path_factory):
    shards = tmp_path_factory.mktemp("bpe") / "shards"
    assert preprocess([f"input={corpus_file}", f"output={shards}", "tokenizer.kind=bpe", "tokenizer.vocab_size=300"]) == 0
    run = tmp_path_factory.mktemp("bpe-run") / "run"
    run_module("gpt.pretrain", tiny_overrides(shards, run, "train.steps=2", "eval.every=0"), check=True)
    return shards, run


def test_the_same_tokenizer_in_two_places_is_the_same_tokenizer(bpe_run):
    shards, run = bpe_run
    ckpt = fmt.resolve(run)
    ours, saved = load_tokenizer(shards), tokenizer_from_dict(fmt.read_meta(ckpt)["tokenizer"], ckpt)
    assert ours.to_dict()["source"] != saved.to_dict()["source"]  # what the old comparison tripped on
    assert identity(ours.to_dict()) == identity(saved.to_dict()) and "sha256" in identity(ours.to_dict())


def test_eval_on_its_own_bpe_training_data(bpe_run, capsys):
    """gpt-eval's main in this process (its command line, its exit status, its one JSON line)."""
    from gpt.evaluate import main

    shards, run = bpe_run
    with pytest.raises(SystemExit) as e:
        main([f"checkpoint={run}", "iters=1", "batch_size=2", "device=cpu"])
    out, err = capsys.readouterr()
    assert e.value.code == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["step"] == 2 and result["ppl"] > 1.0
