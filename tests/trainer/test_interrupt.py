"""Ctrl-C keeps work and a run.dir holds one job, end to end (real gpt-pretrain processes).

Before: Ctrl-C printed "interrupted", exited 130 and saved nothing; a second job on the same
run.dir "resumed" into the live one, replaced its metrics.jsonl and deleted its save in flight.
"""

import json
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO, env_for_subprocess, launch_env, read_metrics, run_module, tiny_overrides, torchrun

from gpt.checkpoint import format as fmt
from gpt.trainer.run_lock import LOCK

LONG = ("train.steps=100000", "eval.every=0")


def start(module_args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *module_args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def wait_for_steps(run, n: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    metrics = run / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-4000:]
        if metrics.exists() and metrics.read_text().count("\n") >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"no step {n} within {timeout} s")


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


def test_ctrl_c_saves_and_a_second_job_on_the_run_dir_is_refused(shards, tmp_path):
    run = tmp_path / "run"
    args = tiny_overrides(shards, run, *LONG)
    first = start(["-m", "gpt.pretrain", *args], env=env_for_subprocess())
    try:
        wait_for_steps(run, 3, first)
        owner = json.loads((run / LOCK).read_text())
        assert owner["pid"] == first.pid

        second = run_module("gpt.pretrain", args)  # the same command again: a double submission
        assert second.returncode == 2, second.stderr[-3000:]
        (line,) = errors(second.stderr)
        assert f"is in use by another job: {run / LOCK} is held by pid {first.pid}" in line
        assert "Traceback" not in second.stderr
        before = read_metrics(run)[0][-1]["step"]
        wait_for_steps(run, before + 3, first)  # the first job goes on, its metrics untouched

        first.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, err[-3000:]
    assert "received SIGINT: finishing this step, then saving and exiting" in err
    steps, _ = read_metrics(run)
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1))  # one continuous run, no second writer
    assert fmt.read_meta(fmt.resolve(run))["step"] == steps[-1]["step"]  # saved at the step it stopped after
    assert not (run / LOCK).exists() and not list(fmt.checkpoints_dir(run).glob(".tmp-*"))


@pytest.mark.distributed
def test_a_held_run_dir_stops_every_rank_with_one_line(shards, tmp_path):
    """Two ranks of a second job: rank 0 finds the lock, every rank stops, the line is printed once."""
    run = tmp_path / "run"
    run.mkdir()
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        from gpt.trainer.run_lock import _proc_stat, owner_record

        (run / LOCK).write_text(json.dumps({**owner_record(), "pid": owner.pid, "start_time": _proc_stat(owner.pid)[1]}))
        proc = torchrun(2, "gpt.pretrain", tiny_overrides(shards, run), check=False)
    finally:
        owner.kill()
        owner.wait()
    assert proc.returncode != 0
    (line,) = errors(proc.stderr)
    assert f"held by pid {owner.pid}" in line, proc.stderr[-3000:]
    assert sorted(p.name for p in run.iterdir()) == [LOCK]  # nothing of the live run was touched


@pytest.mark.distributed
def test_ctrl_c_to_the_launcher_saves_and_exits_130(shards, tmp_path):
    """Through `python -m launcher` (torchrun in its own process group: the terminal's Ctrl-C reaches
    the launcher only, which asks the ranks to save)."""
    run = tmp_path / "run"
    proc = start(["-m", "launcher", "pretrain", *tiny_overrides(shards, run, *LONG)],
                 env=launch_env(GPT_NPROC_PER_NODE="1"))
    try:
        wait_for_steps(run, 3, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "got SIGINT: asking the ranks to finish their step, save and exit" in err
    steps, _ = read_metrics(run)
    assert fmt.read_meta(fmt.resolve(run))["step"] == steps[-1]["step"] >= 3
    assert not (run / LOCK).exists()
