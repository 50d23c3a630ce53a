"""`python -m launcher pretrain` on one box: ranks under torchrun, and a stop signal to the launcher alone.

Kubernetes stops a container with SIGTERM to PID 1 (the launcher) only; the ranks must still save,
nothing may be orphaned, the exit status must say "unfinished", and the same command must resume.
The signal is sent as soon as torchrun exists, before the ranks can catch it: the hardest moment
(a signal mid-run takes the same path without the wait; the SLURM tests send one mid-run).
"""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, launch_env, read_metrics, tiny_overrides

from gpt.checkpoint import format as fmt
from launcher.supervise import children

# ~0.2 s per step for 2 CPU ranks: 60 steps, so the stop lands well before the end.
SLOW = ("model.n_layer=4", "model.n_embd=128", "train.seq_len=64", "train.global_batch_size=64",
        "train.micro_batch_size=8", "train.steps=60", "eval.every=0")


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


def wait_for_torchrun(proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not children(proc.pid):
        assert proc.poll() is None, proc.communicate()[1][-4000:]
        assert time.time() < deadline, f"the launcher started no torchrun in {timeout} s"
        time.sleep(0.05)


def wait_for_a_step(proc: subprocess.Popen, run: Path, timeout: float = 240) -> None:
    """Until the run's metrics.jsonl holds a training step's record."""
    deadline = time.time() + timeout
    metrics = run / "metrics.jsonl"
    while not (metrics.exists() and '"step"' in metrics.read_text()):
        assert proc.poll() is None, proc.communicate()[1][-4000:]
        assert time.time() < deadline, f"no training step in {timeout} s"
        time.sleep(0.05)


@pytest.mark.distributed
def test_sigterm_to_the_launcher_saves_every_rank_and_the_same_command_resumes(shards, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "launcher", "pretrain", *tiny_overrides(shards, run, *SLOW)]
    env = launch_env(GPT_NPROC_PER_NODE="2")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_torchrun(proc)
    wait_for_a_step(proc, run)  # a signal before step 1 stops with nothing to save (tests/trainer/test_stopping.py)
    proc.send_signal(signal.SIGTERM)  # to the launcher only, as Kubernetes does
    _, err = proc.communicate(timeout=300)

    assert proc.returncode == 128 + signal.SIGTERM, err[-4000:]  # saved, but unfinished: a Job retries it
    assert "got SIGTERM: asking the ranks" in err and "stopped by signal after step" in err
    steps, _ = read_metrics(run)
    stopped_at = steps[-1]["step"]
    assert 1 <= stopped_at < 60 and fmt.read_meta(fmt.resolve(run))["step"] == stopped_at
    assert processes_mentioning(str(run)) == []  # torchrun and both ranks are gone

    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-4000:]
    assert f"at step {stopped_at} " in again.stderr  # "resumed from .../step_000000NN at step NN (...)"
    steps, _ = read_metrics(run)
    assert [r["step"] for r in steps] == list(range(1, 61))
    assert fmt.read_meta(fmt.resolve(run))["step"] == 60
