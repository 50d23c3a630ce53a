"""Asynchronous saves: the same checkpoint as a synchronous save, and a process killed while one is
being written leaves nothing that `latest` names or that loads."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from helpers import REPO, env_for_subprocess, read_metrics, run_module, tiny_overrides

from gpt.checkpoint import format as fmt
from gpt.checkpoint.reader import TensorReader, full_state_dict


def _moments(ckpt: Path) -> dict:
    meta = fmt.read_meta(ckpt)
    reader = TensorReader(ckpt, meta)
    return {(n, m): reader.read(n, dim=None, tp_rank=0, tp_size=1, key=fmt.moment_key(n, m))
            for n, e in meta["tensors"].items() for m in e["moments"]}


def test_async_and_sync_saves_write_the_same_checkpoint(saved_run, shards, tmp_path):
    """`saved_run` saved asynchronously (the default); the same run with checkpoint.async_save=false
    writes the same tensors, index and RNG streams, and trains the same."""
    sync = tmp_path / "sync"
    env = env_for_subprocess()
    env["WANDB_API_KEY"] = saved_run[2]
    run_module("gpt.pretrain", tiny_overrides(shards, sync, "train.steps=4", "eval.every=0", "checkpoint.every=2",
                                              "checkpoint.keep_last=0", "logging.wandb.entity=${oc.env:WANDB_API_KEY}",
                                              "checkpoint.async_save=false"), env=env, check=True)
    a, b = fmt.checkpoints_dir(saved_run[0]), fmt.checkpoints_dir(sync)
    for step in ("step_00000002", "step_00000004"):
        ma, mb = fmt.validate(a / step), fmt.validate(b / step)
        assert ma["tensors"] == mb["tensors"] and ma["version"] == fmt.VERSION
        sa, sb = full_state_dict(a / step), full_state_dict(b / step)
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        oa, ob = _moments(a / step), _moments(b / step)
        assert oa.keys() == ob.keys() and len(oa) == 2 * len(sa) and all(torch.equal(oa[k], ob[k]) for k in oa)
        ra, rb = TensorReader(a / step, ma), TensorReader(b / step, mb)
        for key in (fmt.RNG_CPU, fmt.RNG_TENSOR_PARALLEL):
            assert torch.equal(ra.rank_tensor(0, key), rb.rank_tensor(0, key)), key
    trained = [[(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(run)[0]] for run in (saved_run[0], sync)]
    assert trained[0] == trained[1] and len(trained[0]) == 4


def _kill_during_a_save(cmd: list[str], env: dict, root: Path, timeout: float = 300) -> Path:
    """Run `cmd` until a save is being written while an earlier checkpoint is complete, freeze the
    process there (SIGSTOP, so what we look at is what the kill leaves), then SIGKILL it.
    Returns the temporary directory of the interrupted save."""
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            tmps = [p for p in root.glob(f"{fmt.TMP_PREFIX}step_*") if any(p.glob("rank-*"))] if root.is_dir() else []
            if tmps and fmt.read_pointer(root, fmt.LATEST):
                os.kill(proc.pid, signal.SIGSTOP)
                if tmps[0].is_dir() and not (tmps[0] / fmt.META).exists():  # still being written: kill it here
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return tmps[0]
                os.kill(proc.pid, signal.SIGCONT)  # it finished in between: catch the next one
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    raise AssertionError(f"no save was caught in flight (exit {proc.returncode}): {proc.stderr.read()[-3000:]}")


def test_a_kill_during_an_async_save_leaves_nothing_that_loads(shards, tmp_path):
    """A wider model (about 3.4M parameters: 41 MB a checkpoint) gives each save a window of a few
    tenths of a second to be killed in; the next run resumes from the last complete checkpoint."""
    run = tmp_path / "run"
    args = tiny_overrides(shards, run, "model.n_embd=256", "model.n_layer=4", "train.steps=40", "eval.every=0",
                          "checkpoint.every=2", "checkpoint.keep_last=0")
    root = fmt.checkpoints_dir(run)
    partial = _kill_during_a_save([sys.executable, "-m", "gpt.pretrain", *args], env_for_subprocess(), root)
    latest = fmt.read_pointer(root, fmt.LATEST)
    assert partial.is_dir() and latest and fmt.step_of(partial.with_name(partial.name[len(fmt.TMP_PREFIX):])) > \
        fmt.step_of(root / latest)
    assert fmt.resolve(run) == root / latest  # validated: sizes and checksums of every file
    assert all(c.name != partial.name for c in fmt.candidates(run))
    resumed = run_module("gpt.pretrain", [*args, "train.steps=" + str(fmt.step_of(root / latest) + 2)], check=True)
    assert f"resumed from {root / latest}" in resumed.stderr
    assert not partial.exists() and fmt.read_pointer(root, fmt.LATEST) == fmt.step_dir_name(fmt.step_of(root / latest) + 2)


def test_a_save_that_fails_stops_the_run_with_one_line(shards, tmp_path):
    """The writer thread's error reaches the training thread at the next save: one line, exit 2."""
    run = tmp_path / "run"
    run.mkdir()
    fmt.checkpoints_dir(run).write_text("not a directory")  # nothing can be written below it
    proc = run_module("gpt.pretrain", tiny_overrides(shards, run, "train.steps=3", "eval.every=0", "checkpoint.every=1"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    root = fmt.checkpoints_dir(run)
    assert last.startswith(f"gpt-pretrain: error: saving checkpoint {root / 'step_00000001'} failed (File exists"), last
    assert last.endswith(f"free space or fix {root}, then re-run the same command"), last
    steps, _ = read_metrics(run)
    assert [r["step"] for r in steps] == [1, 2]  # training went on while step 1 was being written
