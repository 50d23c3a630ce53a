"""gpt-generate and gpt-eval from a trained checkpoint, as a user runs them."""

import json

import pytest
import torch
from helpers import run_module

from gpt.generation.sampling import penalize_repeats


@pytest.fixture(scope="module")
def trained(base_run):
    """The session's pretrained tiny model (tests/conftest.py): model.init_std=0.2 keeps its greedy
    continuations varied, so that a broken position or cache changes the text instead of hiding
    behind one repeated byte."""
    return base_run


def gen(run, *args):
    return run_module("gpt.generate", [f"checkpoint={run}", *args], check=True).stdout


@pytest.fixture(scope="module")
def greedy(trained):
    """Greedy text for ROMEO: that fills the window (the training seq_len, 32: prompt 6 + 26 new tokens)."""
    return gen(trained, "prompt=ROMEO:", "max_new_tokens=26", "temperature=0")


def test_cache_does_not_change_the_text(trained, greedy):
    """Inside the window the cached run decodes one token at a time against stored keys and values
    while the uncached one re-encodes the whole prefix every step: the two could differ there. (Past
    the window both re-encode the last 32 tokens.)"""
    assert 20 <= len(greedy.rstrip("\n")) <= 32 and len(set(greedy[6:])) >= 5, greedy  # varied: positions matter
    assert greedy == gen(trained, "prompt=ROMEO:", "max_new_tokens=26", "temperature=0", "use_cache=false")


def test_stop_string_cuts_the_continuation(trained, greedy):
    cont = greedy[len("ROMEO:"):].rstrip("\n")
    stop = cont[10:12]
    cut = gen(trained, "prompt=ROMEO:", "max_new_tokens=26", "temperature=0", f"stop=[{json.dumps(stop)}]")
    assert cut.rstrip("\n") == "ROMEO:" + cont[:cont.find(stop)]


def test_prompt_file_gives_one_json_line_per_prompt(trained, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "First Citizen:"}\n{"prompt": "KING"}\n')
    lines = gen(trained, f"prompt_file={prompts}", "max_new_tokens=20", "temperature=0").splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["prompt"] for r in rows] == ["First Citizen:", "KING"]
    single = gen(trained, "prompt=KING", "max_new_tokens=20", "temperature=0")
    assert single.rstrip("\n") == "KING" + rows[1]["completion"]


def test_repetition_penalty_changes_only_seen_tokens():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    out = penalize_repeats(logits, torch.tensor([[0, 1, 1]]), 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0]]


def test_eval_prints_one_json_line(trained, shards):
    out = run_module("gpt.evaluate", [f"checkpoint={trained}", f"data.path={shards}", "iters=2"], check=True).stdout
    (line,) = out.strip().splitlines()
    result = json.loads(line)
    assert result["split"] == "val" and result["tokens"] == 2 * 8 * 32 and result["ppl"] > 1.0


def test_eval_rejects_other_tokenizer(trained, tmp_path, corpus_file):
    other = tmp_path / "bpe"
    run_module("gpt.preprocess", [f"input={corpus_file}", f"output={other}", "tokenizer.kind=bpe",
                                  "tokenizer.vocab_size=300"], check=True)
    proc = run_module("gpt.evaluate", [f"checkpoint={trained}", f"data.path={other}", "split=all"])
    assert proc.returncode == 2 and "tokenised with" in proc.stderr and "Traceback" not in proc.stderr
