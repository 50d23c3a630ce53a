"""`sbatch slurm/pretrain.sh <overrides>` on a real (local) SLURM: 2 nodes x 1 rank, 1 node x 2 ranks,
a refused layout, and the time-limit signal -> save -> requeue -> resume cycle.

Resources are given on the sbatch command line, as a user overrides the script's #SBATCH defaults.
"""

import time
from pathlib import Path

import pytest
from helpers import REPO, read_metrics, tiny_overrides

from gpt.checkpoint import format as fmt

SCRIPT = REPO / "slurm" / "pretrain.sh"
pytestmark = pytest.mark.slurm


def resources(nodes: int, gpus_per_node: int) -> list[str]:
    return [f"--nodes={nodes}", f"--gpus-per-node={gpus_per_node}", f"--cpus-per-task={gpus_per_node}",
            "--time=30", "--partition=debug", "--job-name=gpt-test"]


def job_log(run: Path, job: str) -> str:
    return (run / "logs" / f"slurm-{job}.out").read_text()


def assert_trained(run: Path, steps: int) -> None:
    records, evals = read_metrics(run)
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert fmt.read_meta(fmt.resolve(run))["step"] == steps
    assert (run / "config.yaml").is_file()


def test_two_nodes_one_rank_each(slurm, shards, tmp_path):
    run = tmp_path / "run"
    job = slurm.sbatch([*resources(2, 1), str(SCRIPT), *tiny_overrides(shards, run)], cwd=tmp_path)
    assert slurm.wait(job).endswith("COMPLETED ExitCode=0:0"), job_log(run, job)
    assert_trained(run, 10)
    _, evals = read_metrics(run)
    assert [e["step"] for e in evals] == [5, 10]
    log = job_log(run, job)
    for node in (0, 1):  # one launcher per node, each starting one rank with its node rank
        assert f"{node}: gpt-launch: SLURM job {job}, node {node} of 2, 1 process(es) per node " \
               f"[one per GPU: 1 (SLURM_GPUS_ON_NODE)] -> 2 rank(s)" in log
        assert f"--nnodes=2 --node_rank={node} --rdzv_backend=static" in log
    assert "world=2 = tensor 1 x data 2 x pipeline 1" in log
    assert (tmp_path / f"slurm-{job}.out").read_text() == f"job {job} (attempt 1): log in {run}/logs/slurm-{job}.out\n"


def test_one_node_two_ranks(slurm, shards, tmp_path):
    run = tmp_path / "run"
    job = slurm.sbatch([*resources(1, 2), str(SCRIPT), *tiny_overrides(shards, run)], cwd=tmp_path)
    assert slurm.wait(job).endswith("COMPLETED ExitCode=0:0"), job_log(run, job)
    assert_trained(run, 10)
    log = job_log(run, job)
    assert f"0: gpt-launch: SLURM job {job}, node 0 of 1, 2 process(es) per node" in log
    assert "--standalone --nnodes=1 --nproc_per_node=2" in log
    assert "world=2 = tensor 1 x data 2 x pipeline 1" in log


def test_impossible_layout_fails_in_the_batch_shell_before_any_rank_starts(slurm, shards, tmp_path):
    run = tmp_path / "run"
    job = slurm.sbatch([*resources(2, 1), str(SCRIPT), *tiny_overrides(shards, run, "parallel.tensor=3")],
                       cwd=tmp_path)
    assert slurm.wait(job).endswith("FAILED ExitCode=2:0")
    error = (tmp_path / f"slurm-{job}.out").read_text()
    assert error.startswith("gpt-launch: error: world size 2 is not divisible by parallel.tensor*parallel.pipeline*parallel.context=3*1*1")
    assert error.count("\n") == 1 and not run.exists()


def test_time_limit_signal_saves_requeues_and_resumes(slurm, shards, tmp_path):
    """`scancel --batch --signal=USR1` is what `--signal=B:USR1@300` does 300 s before the time limit."""
    run = tmp_path / "run"
    slow = ("model.n_layer=4", "model.n_embd=128", "train.seq_len=64", "train.global_batch_size=64",
            "train.micro_batch_size=8", "train.steps=60", "eval.every=0")  # ~0.2 s/step: the signal lands mid-run
    job = slurm.sbatch([*resources(2, 1), str(SCRIPT), *tiny_overrides(shards, run, *slow)], cwd=tmp_path)
    metrics, deadline = run / "metrics.jsonl", time.monotonic() + 600
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert time.monotonic() < deadline and slurm.show(job).get("JobState") in ("PENDING", "RUNNING", "CONFIGURING"), \
            slurm.show(job)
        time.sleep(0.2)
    slurm.scancel("--batch", "--signal=USR1", job)

    assert slurm.wait(job).endswith("COMPLETED ExitCode=0:0"), job_log(run, job)
    assert slurm.show(job)["Restarts"] == "1"
    log = job_log(run, job)
    assert log.count(f"==== job {job} attempt") == 2 and f"==== job {job} attempt 2 " in log
    stopped = int(log.split("stopped by signal after step ")[1].split(";")[0])
    assert 2 <= stopped < 60
    assert f"requeueing job {job}" in log
    assert f"resumed from {run}/checkpoints/step_{stopped:08d} at step {stopped} " in log
    assert_trained(run, 60)  # every step once: 1..stopped in attempt 1, the rest in attempt 2
