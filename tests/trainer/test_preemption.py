"""Preemption on a 2-process run: SIGTERM / SIGUSR1 finish the step, save, exit 0 on every rank, and
the same command continues the run.

SLURM delivers `--signal` (or `scancel --signal`) to the tasks themselves, so the tests signal the
worker processes, not torchrun: both ranks (as SLURM does), or one rank only (the flag is agreed
over all ranks after each step, so the other rank stops after the same step).
"""

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import env_for_subprocess, read_metrics, tiny_overrides, torchrun, REPO

from gpt.checkpoint import format as fmt

pytestmark = pytest.mark.distributed


def _workers(launcher: subprocess.Popen) -> dict[int, psutil.Process]:
    """rank -> worker process of a torchrun we started."""
    found = {}
    for p in psutil.Process(launcher.pid).children(recursive=True):
        try:
            env = p.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "RANK" in env and "gpt.pretrain" in " ".join(p.cmdline()):
            found[int(env["RANK"])] = p
    return found


def _start(shards: Path, run: Path) -> subprocess.Popen:
    torchrun_bin = Path(sys.executable).parent / "torchrun"
    args = tiny_overrides(shards, run, "train.steps=100000", "eval.every=0")
    return subprocess.Popen([str(torchrun_bin), "--standalone", "--nproc_per_node=2", "-m", "gpt.pretrain", *args],
                            cwd=REPO, env=env_for_subprocess(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for_steps(run: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    metrics = run / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count("\n") >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"the run did not reach step {n} (exit {proc.poll()})")


@pytest.mark.parametrize("sig, ranks, requeue", [(signal.SIGUSR1, (1,), True), (signal.SIGTERM, (0, 1), False)],
                         ids=["usr1-one-rank-requeued", "term-all-ranks"])
def test_signal_saves_on_every_rank_and_the_run_continues(shards, tmp_path, sig, ranks, requeue):
    run = tmp_path / "run"
    proc = _start(shards, run)
    try:
        _wait_for_steps(run, 3, proc)
        workers = _workers(proc)
        assert sorted(workers) == [0, 1]
        for r in ranks:
            workers[r].send_signal(sig)
        # Bounded: the step in flight (well under a second here), then one save.
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert signal.Signals(sig).name in err
    steps, _ = read_metrics(run)
    stopped = steps[-1]["step"]
    ckpt = fmt.resolve(run)
    assert fmt.read_meta(ckpt)["step"] == stopped >= 3 and len(fmt.read_meta(ckpt)["files"]) == 2
    if not requeue:
        return
    # Requeued, the same command continues right after the saved step (stop_at only ends the test).
    torchrun(2, "gpt.pretrain", tiny_overrides(shards, run, "train.steps=100000", "eval.every=0",
                                               f"train.stop_at={stopped + 2}"))
    steps, _ = read_metrics(run)
    assert [r["step"] for r in steps] == list(range(1, stopped + 3))
    assert steps[stopped]["consumed_samples"] == (stopped + 1) * 8
