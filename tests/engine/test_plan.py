"""gpt-plan and the step-memory model behind it: counted on the meta-built model, checked against
DeepSpeed's own estimators, against autograd's saved tensors, and against the measured peak of real
runs (ZeRO 0 and 3, tensor 2, pipeline 2)."""


import pytest
import torch
from helpers import env_for_subprocess, run_module, tagged_records, torchrun

from gpt.config import compose
from gpt.config.validate import validate_training
from gpt.engine import memory
from gpt.engine.planning import meta_stage_counts
from gpt.model.build import build_model, model_shape
from gpt.model.loss import CHUNK_ELEMENTS

SMALL = ["model.n_layer=3", "model.n_embd=64", "model.n_head=4", "model.max_seq_len=64", "model.vocab_size=257",
         "train.seq_len=32", "train.global_batch_size=48", "train.micro_batch_size=1"]


@pytest.mark.parametrize("overrides, world", [
    ([], 1), (["parallel.tensor=2"], 2), (["parallel.tensor=4"], 4), (["parallel.pipeline=2"], 2),
    (["parallel.pipeline=3", "parallel.tensor=2"], 6), (["model=llama-tiny", "parallel.pipeline=2"], 2),
    (["model=llama-tiny", "parallel.tensor=2", "parallel.pipeline=2", "parallel.pipeline_layers=[1,2]"], 4),
])
def test_meta_model_counts_each_rank_as_the_formulas(overrides, world):
    """The parameters gpt-plan counts on the meta-built model are those of the layer formulas
    (tests/model/test_accounting.py checks the formulas against built layers), per stage and tensor rank."""
    cfg = compose("plan", [*overrides, *SMALL])
    layout = validate_training(cfg, world_size=world)
    shape = model_shape(cfg.model, 257)
    params, largest = meta_stage_counts(cfg, shape, layout)
    assert params == memory.stage_parameters(cfg, shape, layout)
    assert max(largest) == memory.largest_layer(cfg, shape, layout.tensor)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("nodes, gpus", [(1, 8), (4, 8), (16, 8)])
def test_model_states_agree_with_deepspeeds_estimators(precision, nodes, gpus):
    """16-bit models (DeepSpeed's estimators assume them), GPT-2 1.5B and Llama 8B shapes.

    ZeRO-2: exactly DeepSpeed's 2 Psi + 18 Psi / N. ZeRO-3: ours counts the 16-bit gradient partition
    (grad_partitions_flat_buffer, 2 Psi / N) that estimate_zero3 leaves out; with it the figures
    are equal, so within 2/18 = 11% without it. The largest layer (gathered whole with its gradient)
    is DeepSpeed's 4 x largest_layer_params in both."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    world = nodes * gpus
    for model, vocab in (("gpt2-1.5b", 50257), ("llama-8b", 128256)):
        for stage in (2, 3):
            cfg = compose("plan", [f"model={model}", f"parallel.zero_stage={stage}", f"train.precision={precision}",
                                   f"train.global_batch_size={world * 8}"])
            layout = validate_training(cfg, world_size=world)
            shape = model_shape(cfg.model, vocab)
            psi = memory.stage_parameters(cfg, shape, layout)[0]
            # DeepSpeed's estimators ignore sub_group_size (ZeRO-3's fp32 gradients, one sub-group at a time)
            ours = sum(memory.model_state_bytes(psi, precision, stage, layout.data, sub_group_size=float("inf")))
            if stage == 2:
                _, theirs = estimate_zero2_model_states_mem_needs(psi, gpus, nodes, cpu_offload=False)
                assert ours == pytest.approx(theirs, rel=1e-9)
            else:
                big = memory.largest_layer(cfg, shape, 1)
                _, theirs, largest = estimate_zero3_model_states_mem_needs(psi, big, gpus, nodes, cpu_offload=False,
                                                                           cpu_offload_params=False)
                gathered = 2 * 2 * big  # our gathered layer + its gradient, 16-bit
                assert gathered == largest
                assert ours + gathered - 2 * psi / world == pytest.approx(theirs, rel=1e-6)
                assert 1 < (ours + gathered) / theirs < 1.12


ARCH = {"gpt2": dict(n_layer=2, n_head=4, n_embd=64, max_seq_len=64),
        "llama": dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, max_seq_len=64, norm="rmsnorm", activation="swiglu",
                      position="rope", tie_embeddings=False, bias=False)}


@pytest.mark.parametrize("arch", ARCH)
def test_block_activations_are_what_autograd_saves(arch):
    """The per-block formula counts the bytes of the tensors autograd saves for backward in a real
    forward (distinct storages, parameters and buffers excluded): exactly, up to the per-token
    statistics (norm mean/rstd, attention log-sum-exp: under 2% here), which the formula leaves out."""
    cfg = compose("pretrain", ["model=llama-tiny" if arch == "llama" else "model=tiny",
                               *[f"model.{k}={v}" for k, v in ARCH[arch].items()], "train.seq_len=32"])
    shape = model_shape(cfg.model, 257)
    model = build_model(cfg.model, shape, seed=0)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()} | \
             {b.untyped_storage().data_ptr() for b in model.buffers()}
    x = model.embedding(torch.randint(0, 257, (2, 32)))
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.blocks[0](x.detach().requires_grad_())
    expected = memory.block_activation_elements(cfg, shape, 1, 2, 32) * 4
    assert expected <= sum(seen.values()) <= 1.02 * expected


def test_estimate_step_follows_the_micro_batch_not_the_global_batch():
    """What developer "cli" uses to refuse a batch before step 1: activations grow with the
    micro-batch; the global batch only adds accumulation steps."""
    def peak(*o):
        cfg = compose("plan", ["model=gpt2-124m", "model.vocab_size=50257", "train.seq_len=1024", *o])
        return memory.estimate_step(cfg, model_shape(cfg.model, 50257), validate_training(cfg, world_size=1))

    one, eight = peak("train.micro_batch_size=1", "train.global_batch_size=8"), peak("train.micro_batch_size=8",
                                                                                      "train.global_batch_size=8")
    assert peak("train.micro_batch_size=1", "train.global_batch_size=64") == one
    # ~linear in the micro-batch above the model states (16 B/param) and the fused loss's fixed part:
    # the head weight's fp32 gradient (50,304 x 768 x 4 B) and one full chunk of fp32 logits.
    fixed = 16 * 124e6 + 50304 * 768 * 4 + CHUNK_ELEMENTS * 4
    assert eight > one + 7 * 0.9 * (one - fixed)
    # Checkpointing keeps each block's input (768 x 8192 tokens x 4 B) instead of its saved tensors
    # (per token: norms 2x2x768 + qkv 2304 + attention out 768 + MLP 2x3072 = 12288 elements, 4 B),
    # plus one block recomputed: 11 x 402,653,184 - 12 x 25,165,824 bytes saved.
    ckpt = peak("train.micro_batch_size=8", "train.global_batch_size=8", "train.activation_checkpointing=true")
    assert eight - ckpt == 11 * 12288 * 8192 * 4 - 12 * 768 * 8192 * 4


def test_gpt_plan_prints_every_stage_and_the_layouts_that_fit():
    proc = run_module("gpt.plan_cli", ["model=llama-8b", "model.vocab_size=128256", "parallel.tensor=8",
                                   "parallel.pipeline=4", "nodes=8", "gpus_per_node=8", "gpu_memory=80GB",
                                   "train.seq_len=8192", "train.precision=bf16", "train.global_batch_size=512",
                                   "train.micro_batch_size=1"], check=True)
    out = proc.stdout
    assert "8,030,261,248 parameters" in out and "world=64 = tensor 8 x data 2 x pipeline 4" in out
    assert "tokens per step: 4,194,304" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit() and "fits" in line]
    assert [r[0] for r in rows] == ["0", "1", "2", "3"] and all(r[1] == "8" for r in rows)
    assert "fits: the busiest rank" in out


def plan(args, capsys) -> tuple[int, str, str]:
    """gpt-plan in this process (the same run_command as the console script)."""
    from gpt.cli import run_command
    from gpt.plan_cli import USAGE, run

    rc = run_command("gpt-plan", "plan", run, USAGE, args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_gpt_plan_lists_layouts_that_fit_when_the_asked_one_does_not(capsys):
    rc, out, _ = plan(["model=llama-70b", "model.vocab_size=128256", "nodes=4", "gpus_per_node=8",
                       "gpu_memory=80GB", "train.seq_len=4096", "train.precision=bf16",
                       "train.global_batch_size=256", "train.micro_batch_size=1", "parallel.tensor=8"], capsys)
    assert rc == 0 and "does not fit: the busiest rank (stage 0) needs" in out
    fitting = out.split("layouts that fit")[1].splitlines()[1:6]
    assert any("parallel.pipeline=4" in line for line in fitting)
    assert all(float(line.split(" GiB")[0].split()[-1]) <= 80 for line in fitting if " GiB" in line)


@pytest.mark.parametrize("args, message", [
    (["parallel.tensor=3"], "world size 8 is not divisible by parallel.tensor*parallel.pipeline*parallel.context=3*1*1"),
    (["gpu_memory=lots"], "gpu_memory=lots is not a memory size"),
    (["data.path=/nonexistent", "train.global_batch_size=64"], "model.vocab_size is null and data.path=/nonexistent"),
])
def test_gpt_plan_refuses_impossible_layouts_in_one_line(args, message, capsys):
    rc, out, err = plan(["model=llama-8b", *args], capsys)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1 and not out


# Real runs: a model whose step holds ~40-130 MiB per rank (model states, buffers and activations
# of comparable size), 2 steps (the second has the Adam state of the first), random tokens.
MEASURED = ["model=tiny", "model.n_layer=2", "model.n_embd=256", "model.n_head=4", "model.max_seq_len=128",
            "model.vocab_size=4096", "train.seq_len=128", "train.micro_batch_size=4", "train.global_batch_size=8"]
PROBED = {
    "zero0": (1, []),
    "zero3": (2, ["parallel.zero_stage=3", "+deepspeed.zero_optimization.stage3_param_persistence_threshold=0"]),
    "tp2": (2, ["parallel.tensor=2"]),
    "pp2": (2, ["parallel.pipeline=2"]),  # 2 micro-batches: stage 0 holds both in flight
}


@pytest.fixture(scope="module")
def probed():
    """Each layout's ranks: measured peak (tests/engine/step_memory_probe.py) and the plan's figure.

    MALLOC_MMAP_THRESHOLD_: glibc otherwise raises its mmap threshold as tensors are freed and keeps
    the freed memory in the heap, so RSS would climb by what was freed, not by what is live (a GPU
    run would read torch.cuda.max_memory_allocated instead)."""
    env = {**env_for_subprocess(), "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = {}
    for name, (nproc, extra) in PROBED.items():
        proc = torchrun(nproc, "tests.engine.step_memory_probe", ["2", *MEASURED, *extra], env=env)
        out[name] = tagged_records(proc.stdout, "PROBE")
        assert len(out[name]) == nproc
    return out


@pytest.mark.distributed
@pytest.mark.parametrize("name", PROBED)
def test_plan_is_within_15_percent_of_the_measured_peak(probed, name):
    """The issue's bound. Observed on this machine: 0.96 (ZeRO 0), 1.00 (ZeRO 3), 0.94 (tensor 2),
    1.01 / 0.91 (pipeline stages 0 / 1: DeepSpeed's pipe buffers on the last stage are the least
    exactly modelled)."""
    for rank in probed[name]:
        ratio = rank["plan"] / rank["measured"]
        print(f"{name} rank {rank['rank']} stage {rank['stage']}: measured {rank['measured'] / 2**20:.1f} MiB, "
              f"plan {rank['plan'] / 2**20:.1f} MiB, ratio {ratio:.3f}")
        assert 0.85 <= ratio <= 1.15, (name, rank)
