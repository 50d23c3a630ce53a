"""gpt-finetune in one process: what trains and what stays, validation loss, the start-up report,
resuming, refusing a changed PEFT config, and early stopping with `best` (see finetuning.py for the
base model and the instruction data)."""

import json

import torch
from finetuning import finetune_overrides, state
from helpers import early_stop, read_metrics, run_module

from gpt.checkpoint import format as fmt
from gpt.peft import is_peft_name

LORA = ("peft=lora", "peft.targets=[attn,mlp]")  # column- and row-parallel layers; also the parity reference


def evaluate(checkpoint) -> float:
    out = run_module("gpt.evaluate", [f"checkpoint={checkpoint}", "batch_size=8", "iters=4", "device=cpu"], check=True)
    return json.loads(out.stdout)["loss"]


def test_lora_lowers_validation_loss_and_leaves_the_base_alone(finetune):
    run, proc = finetune(1, *LORA)
    # Step 0 (saved when the run starts) is the base model exactly: B = 0.
    before, after = evaluate(fmt.checkpoints_dir(run) / "step_00000000"), evaluate(run)
    print(f"val loss on the held-out sums: base {before:.3f}, after 10 LoRA steps {after:.3f}")
    assert after < before - 0.5  # 5.48 -> 3.97 measured: the model learns the shape of the answers
    s0, s10 = state(run, 0), state(run, 10)
    for name in s0:
        same = torch.equal(s0[name], s10[name])
        assert same != is_peft_name(name) or name.endswith("lora_A.weight") and not same, name
    assert any(is_peft_name(n) and not torch.equal(s0[n], s10[n]) for n in s0 if n.endswith("lora_B.weight"))
    # r=8 per block: qkv 8x64 + 192x8, proj 8x64 + 64x8, fc 8x64 + 256x8, mlp.proj 8x256 + 64x8 = 8,192; 2 blocks
    assert "trainable: 16,384 of 145,152 parameters (11.3%, peft lora)" in proc.stderr
    assert "of optimizer state and" in proc.stderr and "saved per rank against full fine-tuning" in proc.stderr
    meta = fmt.read_meta(fmt.resolve(run))
    assert meta["tensors"]["blocks.0.attn.qkv.lora_B.weight"]["peft"] is True
    assert not meta["tensors"]["blocks.0.attn.qkv.weight"]["trainable"] and not meta["tensors"]["blocks.0.attn.qkv.weight"]["moments"]


def test_bitfit_changes_only_biases(finetune):
    run, _ = finetune(1, "peft=bitfit")
    s0, s10 = state(run, 0), state(run, 10)
    changed = {n for n in s0 if not torch.equal(s0[n], s10[n])}
    biases = {n for n in s0 if n.endswith(".bias")}
    assert changed == biases  # every bias moved (column-parallel ones too), nothing else by a single bit


def test_adapters_train_and_base_weights_stay_bit_identical(finetune):
    run, _ = finetune(1, "peft=adapter", "peft.bottleneck=8")
    s0, s10 = state(run, 0), state(run, 10)
    changed = {n for n in s0 if not torch.equal(s0[n], s10[n])}
    adapters = {n for n in s0 if ".adapter." in n}
    assert changed == adapters and len(adapters) == 2 * 2 * 4  # blocks x (attn, mlp) x (down, up) x (weight, bias)


def test_resume_continues_and_a_changed_peft_is_refused(finetune, base_run, sft_shards, tmp_path):
    reference, _ = finetune(1, *LORA)
    run = tmp_path / "run"
    args = finetune_overrides(base_run, sft_shards, run, *LORA)
    run_module("gpt.finetune", [*args, "train.stop_at=6"], check=True)
    resumed = run_module("gpt.finetune", args, check=True)
    assert "resumed from" in resumed.stderr and "initialised from" not in resumed.stderr
    ours, theirs = read_metrics(run)[0], read_metrics(reference)[0]
    assert [r["loss"] for r in ours] == [r["loss"] for r in theirs]  # one process, fp32: bit-identical
    proc = run_module("gpt.finetune", [*args, "peft.rank=4", "train.steps=12"])
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("gpt-finetune: error: ") and "Traceback" not in proc.stderr
    assert "was trained with peft {'method': 'lora', 'rank': 8" in last and "use the same peft settings" in last


def test_early_stopping_keeps_best_and_every_command_names_it(finetune, tmp_path):
    """Full fine-tuning at a high constant learning rate overfits 360 sums fast: validation stops
    improving, the run stops, and `best` (lowest val loss) works for gpt-eval, -generate and -export."""
    run, _ = finetune(1, "peft=none", "train.steps=200", "eval.every=3", "optim.lr=0.03", "optim.min_lr=0.03",
                      "optim.warmup_steps=0", "eval.early_stopping.patience=2", "checkpoint.keep_last=1")
    steps, evals = read_metrics(run)
    best_step, stop_step = early_stop(evals, patience=2)  # where the documented rule stops on these losses
    assert steps[-1]["step"] == evals[-1]["step"] == stop_step < 200
    best = next(e for e in evals if e["step"] == best_step)
    pointer = fmt.checkpoints_dir(run) / "best"
    assert fmt.read_meta(fmt.resolve(pointer))["step"] == best["step"]
    out = run_module("gpt.evaluate", [f"checkpoint={pointer}", "batch_size=8", "iters=2", "device=cpu"], check=True)
    assert json.loads(out.stdout)["step"] == best["step"]
    exported = run_module("gpt.export", [f"checkpoint={pointer}", f"output={tmp_path / 'hf'}"], check=True)
    assert json.loads((tmp_path / "hf" / "gpt_source.json").read_text())["step"] == best["step"], exported.stderr
    text = run_module("gpt.generate", [f"checkpoint={pointer}", "prompt=12+30=", "chat=true", "max_new_tokens=8",
                                       "temperature=0", "device=cpu"], check=True).stdout
    assert text.startswith("### User:\n12+30=\n\n### Assistant:\n")  # the template recorded from the SFT data
