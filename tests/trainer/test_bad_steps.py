"""Non-finite losses: the update is skipped (weights, Adam moments and step count untouched) and
counted; after train.max_bad_steps in a row the run saves and stops with one line.

Two honest ways to make a loss non-finite, no test hook in the code:
- divergence: optim.lr=1e30 makes step 1's update enormous, so every later forward overflows to
  NaN, for good (the case max_bad_steps exists for);
- a transient fault: a model whose embedding row for one rare byte is inf (loaded through
  model.init_from, a real Hugging Face directory) on data where only some batches contain that byte.
  Exactly those steps must be skipped and training must go on between them.
"""

import pytest
import torch
from helpers import read_metrics, run_module, tiny_overrides, torchrun
from parity import ZERO3_PARTITIONED, assert_zero3_partitioned

from gpt.checkpoint import format as fmt
from gpt.checkpoint.reader import TensorReader

DIVERGE = ("train.steps=10", "eval.every=0", "optim.lr=1e30", "optim.warmup_steps=0", "train.max_bad_steps=3",
           "checkpoint.every=1", "checkpoint.keep_last=0")


def _all_tensors(ckpt) -> dict:
    meta = fmt.read_meta(ckpt)
    reader = TensorReader(ckpt, meta)
    return {(n, key): reader.read(n, dim=None, tp_rank=0, tp_size=1, key=key)
            for n, e in meta["tensors"].items() for key in [n] + [fmt.moment_key(n, m) for m in e["moments"]]}


def _assert_diverged_run(run, proc, first_bad: int, last_bad: int, good_step: int, rc: int = 2):
    assert proc.returncode == rc, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "gpt-pretrain: error:" in line]
    assert len(set(errors)) == 1 and f"not finite for 3 steps in a row (steps {first_bad}-{last_bad}" in errors[0]
    steps, _ = read_metrics(run)
    assert [r["skipped"] for r in steps][first_bad - 1:] == [True] * 3
    assert all(r["loss"] is None for r in steps[first_bad - 1:])  # NaN is written as null
    root = fmt.checkpoints_dir(run)
    good, stopped = root / fmt.step_dir_name(good_step), root / fmt.step_dir_name(last_bad)
    assert fmt.read_pointer(root, fmt.LATEST) == stopped.name
    a, b = _all_tensors(good), _all_tensors(stopped)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # nothing changed, moments included
    meta = fmt.read_meta(stopped)
    assert meta["optimizer_steps"] == fmt.read_meta(good)["optimizer_steps"]
    assert meta["trainer"]["consumed_samples"] == last_bad * 8  # the bad batches are not replayed


def test_divergence_stops_after_max_bad_steps_then_resumes(shards, tmp_path):
    """One process, ZeRO 2 (DeepSpeed's ZeRO-1/2 optimizer refuses the step; ZeRO 0, where our own
    optimizer does, is covered by the transient test below)."""
    run = tmp_path / "run"
    proc = run_module("gpt.pretrain", tiny_overrides(shards, run, *DIVERGE, "parallel.zero_stage=2"))
    _assert_diverged_run(run, proc, first_bad=2, last_bad=4, good_step=1)
    # The same command again: resumes (Adam state is created before the broken weights are loaded)
    # and, still broken, stops after 3 more tries.
    proc = run_module("gpt.pretrain", tiny_overrides(shards, run, *DIVERGE, "parallel.zero_stage=2"))
    _assert_diverged_run(run, proc, first_bad=5, last_bad=7, good_step=1)


@pytest.mark.distributed
@pytest.mark.parametrize("layout", [["parallel=zero3", ZERO3_PARTITIONED], ["parallel=pp2", "train.precision=bf16"]],
                         ids=["dp2-zero3", "pp2-bf16"])
def test_divergence_is_skipped_by_every_engine(shards, tmp_path, layout):
    """ZeRO-3 and the pipeline engine (with DeepSpeed's bf16 optimizer) refuse non-finite gradients
    on every rank alike."""
    run = tmp_path / "run"
    proc = torchrun(2, "gpt.pretrain", tiny_overrides(shards, run, *DIVERGE, *layout), check=False)
    # Every rank prints the one-line error and exits 2; torchrun itself reports a failed child with 1.
    _assert_diverged_run(run, proc, first_bad=2, last_bad=4, good_step=1, rc=1)
    if ZERO3_PARTITIONED in layout:
        assert_zero3_partitioned(proc.stderr, data=2)


POISON = 1  # a byte that never occurs in the corpus; some batches will contain it


@pytest.fixture(scope="module")
def poisoned(corpus_file, tmp_path_factory):
    """Shards where byte 0x01 appears every ~700 characters, and a GPT-2 (untied head) whose
    embedding row for that byte is inf, as a Hugging Face directory."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from gpt.data.tokenizer import ByteTokenizer
    from gpt.hf.tokenizer import export_tokenizer

    base = tmp_path_factory.mktemp("poisoned")
    text = corpus_file.read_text()
    corpus = base / "corpus.txt"
    corpus.write_text(chr(POISON).join(text[i:i + 700] for i in range(0, len(text), 700)))
    run_module("gpt.preprocess", [f"input={corpus}", f"output={base / 'shards'}", "tokenizer.kind=byte"], check=True)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=257, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                                       tie_word_embeddings=False, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    with torch.no_grad():
        model.transformer.wte.weight[POISON] = float("inf")
    model.save_pretrained(base / "hf")
    export_tokenizer(ByteTokenizer(), base / "hf", model_max_length=64)
    return base / "shards", base / "hf"


def test_transient_nan_steps_are_skipped_and_training_goes_on(poisoned, tmp_path):
    from gpt.config.loader import compose
    from gpt.data import build_loaders

    shards, hf = poisoned
    run = tmp_path / "run"
    args = tiny_overrides(shards, run, f"model.init_from={hf}", "train.steps=10", "eval.every=0",
                          "train.max_bad_steps=0")
    run_module("gpt.pretrain", args, check=True)
    # Which steps' inputs hold the poisoned byte, from the data loader itself.
    cfg = compose("pretrain", args)
    loader, _ = build_loaders(cfg.data, seq_len=32, global_batch_size=8, micro_batch_size=2, dp_rank=0, dp_size=1,
                              seed=cfg.train.seed)
    expected = [any(bool((b.tokens == POISON).any()) for b in loader.global_batch(k * 8)) for k in range(10)]
    assert 0 < sum(expected) < 10
    steps, _ = read_metrics(run)
    assert [r["skipped"] for r in steps] == expected
    assert all((r["loss"] is None) == bad for r, bad in zip(steps, expected))
    assert steps[-1]["skipped_steps"] == sum(expected)
    # The good steps trained (the loss moved) and nothing but the poisoned row is non-finite.
    from gpt.checkpoint.reader import full_state_dict

    state = full_state_dict(fmt.resolve(run))
    wte = state.pop("embedding.wte.weight")
    assert torch.isinf(wte[POISON]).all() and torch.isfinite(torch.cat([wte[:POISON], wte[POISON + 1:]])).all()
    assert all(torch.isfinite(v).all() for v in state.values())
    good = [r["loss"] for r, bad in zip(steps, expected) if not bad]
    assert good[-1] < good[0]
