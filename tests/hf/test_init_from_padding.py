"""Starting from a real GPT-2 keeps its loss: the vocabulary's padding rows never take probability mass.

model.init_from pads the vocabulary (here 257 -> 384, model.vocab_multiple=128) with zero rows. Real
GPT-2 logits sit far below zero (around -100), so a padding column scoring 0 would take almost all
the probability mass. The Hugging Face model here has its real logits shifted to about -100 through
its weights, which changes nothing for `transformers` (softmax is shift-invariant, checked below):

    wte += u (every row), wpe -= u      the blocks' input wte[token] + wpe[pos] is unchanged
    u = c / ln_f.weight                 logit_j = ln_f(x) . (w_j + u) = logit_j + c * sum(ln_f.bias / ln_f.weight)

(LayerNorm's normalised output sums to 0 over the hidden size, so h . u is the same constant at
every position.) gpt-eval (one process) and the training and validation losses at tensor 2 must
then equal transformers' loss on the same tokens.

Tolerance 1e-4: fp32 round-off of logits of magnitude ~100 is ~1e-5 (the wte + u, wpe - u
cancellation adds ~1e-6 relative to the embeddings on both sides alike); a padding column at 0
would put the loss ~100 nats higher.
"""

import json
import os

import pytest
import torch
import torch.nn.functional as F
from helpers import read_metrics, run_module, tiny_overrides, torchrun

from gpt.checkpoint import format as fmt

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHIFT = -100.0
# A learning rate of 1e-12 moves no weight by more than ~1e-12: step 1's validation loss is the start's.
RUN = ("train.steps=1", "eval.every=1", "eval.iters=2", "optim.lr=1e-12", "optim.min_lr=0", "optim.warmup_steps=0")


def _gpt2(shift: float):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=257, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()  # tied head
    t = model.transformer
    with torch.no_grad():
        t.ln_f.weight.uniform_(0.5, 1.5)
        t.ln_f.bias.fill_(0.5)
        if shift:
            u = shift / (t.ln_f.bias / t.ln_f.weight).sum() / t.ln_f.weight  # (h,)
            t.wte.weight += u
            t.wpe.weight -= u
    return model


@pytest.fixture(scope="module")
def shifted_gpt2(tmp_path_factory):
    """A tied GPT-2 directory (byte tokenizer) whose real logits all sit near SHIFT."""
    from gpt.data.tokenizer import ByteTokenizer
    from gpt.hf.tokenizer import export_tokenizer

    out = tmp_path_factory.mktemp("gpt2-shifted")
    model = _gpt2(SHIFT)
    model.save_pretrained(out)
    export_tokenizer(ByteTokenizer(), out, model_max_length=64)
    return out, model


def _hf_loss(model, batches) -> float:
    """transformers' mean token loss over our loader's (tokens, labels) micro-batches."""
    with torch.no_grad():
        losses = [F.cross_entropy(model(b.tokens).logits.flatten(0, 1), b.labels.flatten(), reduction="sum")
                  for b in batches]
    return float(sum(losses)) / sum(b.labels.numel() for b in batches)


def _batches(args, *, train: bool, n: int, gbs: int = 8):
    from gpt.config.loader import compose
    from gpt.data import build_loaders

    cfg = compose("pretrain", list(args))
    loaders = build_loaders(cfg.data, seq_len=cfg.train.seq_len, global_batch_size=gbs, micro_batch_size=gbs,
                            dp_rank=0, dp_size=1, seed=cfg.train.seed)
    loader = loaders[0 if train else 1]
    return [b for k in range(n) for b in loader.global_batch(k * gbs)]


def test_the_shift_changes_nothing_for_transformers(shifted_gpt2):
    _, shifted = shifted_gpt2
    x = torch.randint(0, 257, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain, logits = _gpt2(0.0)(x).logits, shifted(x).logits
    assert logits.max() < SHIFT / 2  # every real logit far below zero, as in real GPT-2
    assert (logits.log_softmax(-1) - plain.log_softmax(-1)).abs().max() < 1e-4


@pytest.mark.distributed
def test_init_from_gpt2_keeps_its_loss(shifted_gpt2, shards, tmp_path):
    """Tensor 2: training loss (step 1) and validation loss; tensor 1: gpt-eval of the run's step-0
    checkpoint (init_from's weights, loaded into one process)."""
    hf, model = shifted_gpt2
    run = tmp_path / "run"
    args = tiny_overrides(shards, run, f"model.init_from={hf}", "parallel=tp2", *RUN)
    torchrun(2, "gpt.pretrain", args)
    step0 = fmt.checkpoints_dir(run) / "step_00000000"
    meta = fmt.read_meta(step0)
    assert meta["config"]["model"]["vocab_multiple"] == 128 and meta["layout"]["tensor"] == 2
    steps, evals = read_metrics(run)
    val = _hf_loss(model, _batches(args, train=False, n=2))
    assert abs(steps[0]["loss"] - _hf_loss(model, _batches(args, train=True, n=1))) < 1e-4
    assert abs(evals[0]["val_loss"] - val) < 1e-4
    out = run_module("gpt.evaluate", [f"checkpoint={step0}", "batch_size=8", "iters=2"], check=True).stdout
    result = json.loads(out)
    assert result["tokens"] == 2 * 8 * 32 and abs(result["loss"] - val) < 1e-4
