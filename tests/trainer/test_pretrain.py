"""Single-process training end to end: metrics, evaluation, resume equality, SIGTERM, generation."""

import shutil
import signal
import subprocess
import sys
import time

from helpers import REPO, env_for_subprocess, read_metrics, run_module, tiny_overrides
from parity import run_overrides

from gpt.checkpoint import format as fmt


def test_trains_logs_evaluates_and_checkpoints(launch):
    """The one-process reference of the parity matrix (10 steps, evaluations at 5 and 10), shared."""
    run = launch(1, "gpt2").run_dir
    steps, evals = read_metrics(run)
    assert [r["step"] for r in steps] == list(range(1, 11))
    for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
        assert all(isinstance(r[key], float) for r in steps), key
    assert [e["step"] for e in evals] == [5, 10]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] < steps[0]["loss"]  # it learns
    assert (run / "config.yaml").is_file()
    assert fmt.resolve(run).name == "step_00000010"


def test_resume_is_identical_to_an_uninterrupted_run(shards, tmp_path):
    """6 steps, stop, resume to 12 == 12 straight, bit for bit (fp32, one process, dropout on)."""
    common = ("train.steps=12", "model.dropout=0.1", "eval.every=4")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_module("gpt.pretrain", tiny_overrides(shards, straight, *common), check=True)
    run_module("gpt.pretrain", tiny_overrides(shards, resumed, *common, "train.stop_at=6"), check=True)
    assert fmt.resolve(resumed).name == "step_00000006"
    run_module("gpt.pretrain", tiny_overrides(shards, resumed, *common), check=True)  # the same command again
    a, b = read_metrics(straight), read_metrics(resumed)
    assert [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in a[0]] == \
           [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in b[0]]
    assert [(r["step"], r["val_loss"]) for r in a[1]] == [(r["step"], r["val_loss"]) for r in b[1]]


def test_finished_run_rerun_is_a_no_op(launch, shards, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(launch(1, "gpt2").run_dir, run)  # a finished run (copied: the original is shared)
    before = (run / "metrics.jsonl").read_text()
    run_module("gpt.pretrain", run_overrides(shards, run, "gpt2"), check=True)
    assert (run / "metrics.jsonl").read_text() == before


def test_sigterm_saves_and_exits_zero(shards, tmp_path):
    run = tmp_path / "run"
    args = tiny_overrides(shards, run, "train.steps=100000", "eval.every=0")
    proc = subprocess.Popen([sys.executable, "-m", "gpt.pretrain", *args], cwd=REPO, env=env_for_subprocess(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or metrics.read_text().count("\n") < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    steps, _ = read_metrics(run)
    ckpt = fmt.resolve(run)
    assert ckpt is not None and fmt.read_meta(ckpt)["step"] == steps[-1]["step"] >= 3
    assert "SIGTERM" in err


def test_generate_prints_only_text(base_run):
    args = [f"checkpoint={base_run}", "prompt=To be", "max_new_tokens=40"]
    greedy = run_module("gpt.generate", args + ["temperature=0"], check=True).stdout
    assert greedy.startswith("To be") and len(greedy) > len("To be")
    sampled = [run_module("gpt.generate", args + ["temperature=1.0", "top_k=20", "top_p=0.9", f"seed={s}"],
                          check=True).stdout for s in (1, 1, 2)]
    assert sampled[0] == sampled[1] != sampled[2]
    assert all(s.startswith("To be") for s in sampled)
