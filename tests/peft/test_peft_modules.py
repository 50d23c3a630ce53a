"""The PEFT wrappers on the one-process model (no training run): step 0 is the base model, names and
trainable flags, BitFit's column-parallel biases, LoRA merging, and the trainable fraction."""

import pytest
import torch

from gpt.config import compose
from gpt.config.validate import Layout
from gpt.model.build import build_model, model_shape
from gpt.model.slots import Slots
from gpt.parallel import context as parallel
from gpt.peft import apply_peft, is_peft_name, merge_lora_state, merge_peft_modules, trainable_counts

SMALL = ("model=tiny", "model.n_layer=2", "model.n_embd=64", "model.max_seq_len=64")
LLAMA = ("model=llama-tiny", "model.n_layer=2", "model.n_embd=64", "model.n_kv_head=2", "model.max_seq_len=64")


@pytest.fixture(scope="module")
def ctx():
    ctx = parallel.initialize(Layout(1, 1, 1, 1, 1), "cpu")
    yield ctx
    parallel.destroy()


def build(ctx, *overrides, peft=True):
    cfg = compose("finetune", ["checkpoint=unused", *overrides])
    shape = model_shape(cfg.model, 257)
    model = build_model(cfg.model, shape, seed=7, tp_size=1, tp_group=ctx.tp_group)
    if peft:
        apply_peft(model, cfg.peft, cfg.model, slots=Slots(1, ctx.tp_group), seed=7)
    return model, cfg


def tokens():
    return torch.randint(0, 257, (2, 24), generator=torch.Generator().manual_seed(0))


# Llama has no biases: BitFit on it is refused by config validation (tests/config/test_finetune_config.py).
@pytest.mark.parametrize("method,arch", [("lora", "gpt2"), ("lora", "llama"), ("adapter", "gpt2"), ("adapter", "llama"),
                                         ("bitfit", "gpt2")])
def test_step_zero_is_the_base_model(ctx, method, arch):
    """LoRA's B and the adapters' up-projection start at zero: the wrapped model computes exactly the base."""
    keys = SMALL if arch == "gpt2" else LLAMA
    base, _ = build(ctx, *keys, peft=False)
    model, _ = build(ctx, *keys, f"peft={method}", "peft.targets=[attn,mlp]")
    with torch.no_grad():
        assert torch.equal(base(tokens()), model(tokens()))


@pytest.mark.parametrize("method", ["lora", "adapter", "bitfit"])
def test_base_names_stay_and_only_peft_parameters_train(ctx, method):
    base, _ = build(ctx, *SMALL, peft=False)
    model, _ = build(ctx, *SMALL, f"peft={method}", "peft.targets=[attn,mlp]")
    base_names = {n for n, _ in base.named_parameters()}
    names = dict(model.named_parameters())
    assert base_names <= set(names), "a wrapper renamed a base parameter (checkpoints and HF export need the names)"
    added = set(names) - base_names
    assert all(is_peft_name(n) for n in added) and bool(added) == (method != "bitfit")
    for n, p in names.items():
        expected = is_peft_name(n) if method != "bitfit" else n.endswith(".bias")
        assert p.requires_grad == expected, n


def test_bitfit_trains_every_bias_and_no_weight(ctx):
    """megatron's ColumnParallelLinear drops the bias gradient when its weight is frozen
    (LinearWithFrozenWeight); BitFit's wrapper must get it back for qkv and fc."""
    model, _ = build(ctx, *SMALL, "peft=bitfit")
    model(tokens()).float().pow(2).mean().backward()
    for n, p in model.named_parameters():
        if n.endswith(".bias"):
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n


@pytest.mark.parametrize("keys", [SMALL, LLAMA], ids=["gpt2", "llama"])
def test_merged_lora_computes_the_unmerged_model(ctx, keys):
    """Folding s*B@A into W (in the modules, and on a state dict as export does) gives the same logits
    (fp32 round-off of one extra addition per weight: ~1e-6 on logits of size ~1) and the base names."""
    model, cfg = build(ctx, *keys, "peft=lora", "peft.targets=[attn,mlp]", "peft.rank=4", "peft.alpha=8")
    base, _ = build(ctx, *keys, peft=False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        unmerged = model(tokens())
        folded = merge_lora_state(model.state_dict(), {"method": "lora", "rank": 4, "alpha": 8})
        assert merge_peft_modules(model) == 2 * (5 if cfg.model.activation == "swiglu" else 4)  # blocks x linears
        merged = model(tokens())
        base.load_state_dict({k: v for k, v in folded.items() if not k.endswith("_extra_state")}, strict=False)
        from_state = base(tokens())
    assert {n for n, _ in model.named_parameters()} == {n for n, _ in base.named_parameters()}
    assert (merged - unmerged).abs().max() < 1e-5 and (from_state - unmerged).abs().max() < 1e-5
    assert (merged - from_state).abs().max() < 1e-5


def test_trainable_fraction_of_the_tiny_preset(ctx):
    """The issue's bound: LoRA (the preset: rank 8 on attn.qkv) trains under 2% of the tiny model."""
    model, _ = build(ctx, "model=tiny", "peft=lora")
    trainable, total = trainable_counts(model.parameters(), tp_rank=0)
    print(f"tiny + lora: {trainable:,} of {total:,} parameters train ({trainable / total:.2%})")
    assert trainable == 4 * (8 * 128 + 384 * 8)  # per block A (r x h) + B (3h x r)
    assert trainable / total < 0.02
