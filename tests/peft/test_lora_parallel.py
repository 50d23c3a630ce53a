"""PEFT under every kind of parallelism equals the one-process run, step by step (fp32, CPU, gloo).

LoRA's factors are sharded like the weights they adapt (gpt/peft/lora.py): at tensor parallel 2 the
column-parallel layers (qkv, fc) get a replicated A and a column-parallel B, the row-parallel ones
(attn.proj, mlp.proj) a row-parallel A and a replicated B. Compared with one process on the same
base checkpoint and data (finetuning.py) at all 10 steps (loss, gradient norm) and both evaluations:
- LoRA on every linear at TP=2, at PP=2 with activation checkpointing (DeepSpeed's reentrant
  checkpoint: the blocks' inputs must require gradients although the embedding is frozen), and
  stopped at step 6 at TP=2 then resumed at DP=2 with ZeRO-3 (every tensor partitioned, the frozen
  base weights too: stage3_param_persistence_threshold=0, asserted from the start-up report; saved
  and loaded; optimizer state only for the factors);
- adapters and BitFit at TP=2 (BitFit's column-parallel biases train outside megatron's frozen-weight
  linear; adapters are replicated after the row-parallel output projections).

Tolerances as in tests/engine/test_parity.py (1e-5 relative on losses, 1e-4 on the gradient norm):
the layouts compute the same sums in another order, ~1e-7 relative round-off per step; a wrong
slice of A or B, a missing all-reduce or a double-counted replicated gradient changes the loss by
more than 1e-3 within a step or two (B moves from zero at step 1, so the LoRA path is exercised from
step 2 on). Worst deviations observed: ~1e-7 (loss), ~2e-7 (gradient norm).
"""

import pytest
from finetuning import finetune_overrides
from helpers import read_metrics, run_module, torchrun
from parity import ZERO3_PARTITIONED, assert_zero3_partitioned, deviation

pytestmark = pytest.mark.distributed

LOSS_RTOL, NORM_RTOL = 1e-5, 1e-4
LORA = ("peft=lora", "peft.targets=[attn,mlp]")
MATRIX = {
    "lora-tp2": (LORA, ("parallel=tp2",)),
    "lora-pp2-ckpt": (LORA, ("parallel=pp2", "train.activation_checkpointing=true")),
    "adapter-tp2": (("peft=adapter", "peft.bottleneck=8"), ("parallel=tp2",)),
    "bitfit-tp2": (("peft=bitfit",), ("parallel=tp2",)),
}


def check(name, reference, run):
    dev = deviation(reference, run)
    print(f"{name}: {dev}")
    assert dev.loss < LOSS_RTOL and dev.val_loss < LOSS_RTOL and dev.grad_norm < NORM_RTOL, f"{name}: {dev}"


@pytest.mark.parametrize("name", MATRIX)
def test_peft_layout_matches_one_process(finetune, name):
    method, layout = MATRIX[name]
    reference, _ = finetune(1, *method)
    run, _ = finetune(2, *method, *layout)
    check(name, reference, run)


def test_lora_resumed_at_another_layout_matches_one_process(finetune, base_run, sft_shards, tmp_path):
    reference, _ = finetune(1, *LORA)
    run = tmp_path / "run"
    args = finetune_overrides(base_run, sft_shards, run, *LORA)
    torchrun(2, "gpt.finetune", [*args, "parallel=tp2", "train.stop_at=6"])
    resumed = torchrun(2, "gpt.finetune", [*args, "parallel=zero3", ZERO3_PARTITIONED])
    assert "resumed from" in resumed.stderr and "layout changed" in resumed.stderr
    # 2 blocks x (12 base tensors + 4 linears x 2 LoRA factors) + 2 embeddings + the final norm's 2
    assert assert_zero3_partitioned(resumed.stderr, data=2) == 2 * (12 + 8) + 4
    check("lora tp2 -> dp2 zero3", reference, run)
    assert read_metrics(run)[0][-1]["step"] == 10
    # Generation reads the ZeRO-3 checkpoint in one process (PEFT modules rebuilt from its config).
    run_module("gpt.generate", [f"checkpoint={run}", "prompt=ROMEO:", "max_new_tokens=4", "device=cpu"], check=True)
