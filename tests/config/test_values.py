"""Every value is checked before anything starts (issue 12.4): one line naming the key, before torch."""

import re
import subprocess
import sys

import pytest
from helpers import REPO, env_for_subprocess, tiny_overrides

from gpt.config import compose, validate_training
from gpt.errors import CheckpointError

CASES = [
    (["eval.every=1", "eval.iters=0"], r"eval\.iters=0 with eval\.every=1: an evaluation needs at least one batch"),
    (["model.vocab_multiple=0"], r"model\.vocab_multiple=0 must be at least 1"),
    (["model.n_kv_head=-1"], r"model\.n_kv_head=-1 must be at least 1, or null"),
    (["model.ffn_hidden=-4"], r"model\.ffn_hidden=-4 must be at least 1, or null"),
    (["model.init_std=-1"], r"model\.init_std=-1\.0 must be a positive finite number"),
    (["optim.eps=-1"], r"optim\.eps=-1\.0 must be a positive finite number"),
    (["train.seed=1180591620717411303424"], r"train\.seed=1180591620717411303424 must be in \[0, 2\*\*32-1\]"),
    (["train.seed=2**70"], r"train\.seed=2\*\*70: expected integer"),
    (["data.blend=[[0.5]]"], r"data\.blend\[0\]=\[0\.5\] must be \[weight > 0, path\]"),
    (["data.blend=[[abc,/x]]"], r"data\.blend\[0\]=\['abc', '/x'\] must be \[weight > 0, path\]"),
    (["+deepspeed.steps_per_print=abc"], r"deepspeed\.steps_per_print='abc' must be an integer > 0"),
    (["+deepspeed.steps_per_print=0"], r"deepspeed\.steps_per_print=0 must be an integer > 0"),
    (["+deepspeed.wall_clock_breakdown=1"], r"deepspeed\.wall_clock_breakdown=1 must be true or false"),
    (["+deepspeed.train_batch_size=8"], r"deepspeed\.train_batch_size is derived from train\.global_batch_size"),
    (["optim.decay_steps=-5"], r"optim\.decay_steps=-5 must be at least 1, or null"),
    (["optim.weight_decay=nan"], r"optim\.weight_decay=nan must be a finite number >= 0"),
    (["model.rope_theta=0"], r"model\.rope_theta=0\.0 must be a positive finite number"),
    (["optim.lr=inf"], r"optim\.lr=inf must be a positive finite number"),
    (["optim.lr=nan"], r"optim\.lr=nan must be a positive finite number"),
    (["eval.early_stopping.patience=-1"], r"eval\.early_stopping\.patience=-1 must not be negative"),
    (["eval.early_stopping.min_delta=nan"], r"eval\.early_stopping\.min_delta=nan must be a finite number"),
    (["optim.grad_clip=inf"], r"optim\.grad_clip=inf must be a finite number"),
    (["train.peak_flops=inf"], r"train\.peak_flops=inf must be a positive FLOP/s"),
    (["model.norm_eps=0"], r"model\.norm_eps=0\.0 must be a positive finite number"),
    (["optim.lr=${oc.env:NOPE_NOT_SET}"], r"optim\.lr: the environment variable NOPE_NOT_SET is not set; export it, "
                                          r"or give a default: \$\{oc\.env:NOPE_NOT_SET,default\}"),
    (["logging.wandb.name=${oc.env:"], r"logging\.wandb\.name=\$\{oc\.env:: not a complete interpolation"),
]


@pytest.mark.parametrize("overrides, message", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_value_is_one_line_before_anything_starts(overrides, message, shards, tmp_path, capsys):
    """gpt-pretrain itself (in this process): exit 2, one line, nothing written to run.dir."""
    from gpt.pretrain import main

    run = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(tiny_overrides(shards, run, *overrides))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1, err
    assert re.search(message, err[0]) and err[0].startswith("gpt-pretrain: error: "), err[0]
    assert not run.exists()


def test_refusals_come_before_torch_is_imported(shards, tmp_path):
    """The checks above run before torch or DeepSpeed is imported (so in the first second)."""
    script = (
        "import sys\n"
        "from gpt.pretrain import main\n"
        "for bad in sys.argv[2:]:\n"
        "    try:\n"
        "        main(sys.argv[1].split('|') + [bad])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 2, e.code\n"
        "print(sorted(m for m in ('torch', 'deepspeed', 'megatron') if m in sys.modules))\n")
    base = "|".join(tiny_overrides(shards, tmp_path / "run"))
    # The checks that come last (blend, DeepSpeed keys, a resume's architecture) and a failing interpolation.
    bad = ["model.vocab_multiple=0", "data.blend=[[0.5]]", "+deepspeed.steps_per_print=abc", "optim.lr=${oc.env:NOPE}"]
    proc = subprocess.run([sys.executable, "-c", script, base, *bad], capture_output=True, text=True, timeout=300,
                          env=env_for_subprocess(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]", proc.stdout
    assert proc.stderr.count("gpt-pretrain: error: ") == len(bad)


def test_resume_with_another_max_seq_len_is_refused_first(base_run, shards, capsys):
    """Learned positions: model.max_seq_len sizes a weight, so a resume must keep it (checked before torch)."""
    from gpt.pretrain import main

    before = sorted(p.name for p in (base_run / "checkpoints").iterdir())
    with pytest.raises(SystemExit) as e:
        main(tiny_overrides(shards, base_run, "eval.every=0", "device=cpu", "model.init_std=0.2", "model.max_seq_len=32"))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert re.search(r"was trained with model\.max_seq_len=64, the config says model\.max_seq_len=32; use the same "
                     r"model or a new run\.dir", err[0]), err
    assert sorted(p.name for p in (base_run / "checkpoints").iterdir()) == before


def test_max_seq_len_is_free_with_rope():
    """With rope, max_seq_len is only a cache length: a resume may change it (docs/checkpoints.md)."""
    from gpt.checkpoint.compat import check_architecture

    saved = compose("pretrain", ["model=llama-tiny"]).model
    meta = {"config": {"model": vars(saved)}}
    check_architecture(meta, {**vars(saved), "max_seq_len": 2 * saved.max_seq_len}, "ckpt")
    learned = vars(compose("pretrain").model)
    with pytest.raises(CheckpointError, match="max_seq_len"):
        check_architecture({"config": {"model": learned}}, {**learned, "max_seq_len": 1}, "ckpt")


def test_a_batch_far_too_large_for_memory_is_refused_by_the_estimate(shards, tmp_path, capsys):
    from gpt.pretrain import main

    run = tmp_path / "run"
    big = ["train.global_batch_size=1048576", "train.micro_batch_size=1048576"]
    with pytest.raises(SystemExit) as e:
        main(tiny_overrides(shards, run, *big))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2, err
    assert re.search(r"train\.micro_batch_size=1048576, train\.seq_len=32: the busiest rank needs at least .* GiB "
                     r"\(weights .* activations .*\) but has .* \(.*\); lower train\.micro_batch_size", err[-1]), err
    assert "train.check_memory=false" in err[-1] and not (run / "metrics.jsonl").exists()


def test_activation_checkpointing_and_pipelines_lower_the_activation_floor(shards, tmp_path):
    from gpt.engine import memory
    from gpt.model.build import model_shape

    def floor(*extra, world=1):
        cfg = compose("pretrain", tiny_overrides(shards, tmp_path / "r", "model.n_layer=4", *extra))
        return memory.activation_bytes(cfg, model_shape(cfg.model, 257), validate_training(cfg, world_size=world))

    full = floor()
    assert floor("train.activation_checkpointing=true") < full
    assert floor("parallel.tensor=2", world=2) < full
    # Linear in the micro-batch above a fixed part (the fused head keeps the head weight's gradient,
    # whatever the batch): from 1 to 2 to 4 sequences the growth doubles.
    one, four = floor("train.micro_batch_size=1"), floor("train.micro_batch_size=4", "train.global_batch_size=8")
    assert four - full == pytest.approx(2 * (full - one)) and full - one > 0


def test_valid_deepspeed_keys_pass_through_unchanged():
    from gpt.engine.deepspeed_config import deepspeed_config

    cfg = compose("pretrain", ["+deepspeed.steps_per_print=100", "+deepspeed.zero_optimization.reduce_bucket_size=5e8",
                               "+deepspeed.wall_clock_breakdown=true", "+deepspeed.some_new_key=anything"])
    ds = deepspeed_config(cfg, validate_training(cfg, world_size=1))
    assert (ds["steps_per_print"], ds["wall_clock_breakdown"], ds["some_new_key"]) == (100, True, "anything")
    assert ds["zero_optimization"]["reduce_bucket_size"] == 5e8
