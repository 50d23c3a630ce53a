"""Hyperparameter sweeps (`gpt-pretrain -m ...`): each point its own run, interrupted sweeps continue,
Optuna searches through the same launcher (issue 15.3)."""

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml
from helpers import REPO, env_for_subprocess, launch_env, read_metrics, run_module, tiny_overrides

from gpt.sweep import trial_name

LRS = {"optim.lr=0.001": 1e-3, "optim.lr=0.003": 3e-3, "optim.lr=0.01": 1e-2}


def _lines(path):
    return path.read_text().count("\n") if path.exists() else 0


def test_three_trial_sweep_stops_resumes_reuses_and_optuna_searches(shards, tmp_path):
    # Paths as typed (a comma, brackets, a space, `#`): they reach every trial unchanged.
    data = tmp_path / "shards, v2 (copy)"
    shutil.copytree(shards, data)
    root = tmp_path / "sweep [lr], #1"
    args = ["-m", *tiny_overrides(data, root, "train.steps=40", "eval.every=20", "eval.iters=1"), "optim.lr=1e-3,3e-3,1e-2"]
    first, second, third = (root / name for name in LRS)

    # 1. SIGTERM to the sweep while its second trial trains: that trial saves and the sweep stops.
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen([sys.executable, "-m", "gpt.pretrain", *args], stdout=o, stderr=e, cwd=REPO,
                                env=env_for_subprocess())
        deadline = time.time() + 600
        while time.time() < deadline and not ((first / "trial.json").exists() and _lines(second / "metrics.jsonl") >= 2):
            assert proc.poll() is None, err.read_text()[-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=300) == 0, err.read_text()[-3000:]
    assert "sweep stopped: trial optim.lr=0.003 stopped at step" in err.read_text()
    assert json.loads((second / "trial.json").read_text())["status"] == "stopped"
    assert not third.exists()
    first_metrics = (first / "metrics.jsonl").read_text()

    # 2. The same command again: the finished trial is not run again, the stopped one resumes, the last runs.
    proc = run_module("gpt.pretrain", args, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trial 0: optim.lr=0.001 finished earlier" in proc.stderr
    assert f"resumed from {second}/checkpoints/step_" in proc.stderr
    assert (first / "metrics.jsonl").read_text() == first_metrics
    for run in (first, second, third):
        steps, evals = read_metrics(run)
        assert [r["step"] for r in steps] == list(range(1, 41)) and [r["step"] for r in evals] == [20, 40]
    best_loss = {name: min(e["val_loss"] for e in read_metrics(root / name)[1]) for name in LRS}
    best = min(best_loss, key=best_loss.get)
    rows = proc.stdout.strip().splitlines()
    assert len(rows) == 5 and all(" finished" in r for r in rows[1:4]), proc.stdout
    assert [r for r in rows[1:4] if r.startswith("*")][0].split()[1] == best
    assert rows[4] == f"best: {best} (best_val_loss {best_loss[best]:.4f}) in {root / best}"
    summary = json.loads((root / "sweep.json").read_text())
    assert summary["best"] == best and len(summary["trials"]) == 3
    for run in (first, second, third):  # each trial trained on its own learning rate and the data given
        saved = yaml.safe_load((run / "config.yaml").read_text())
        assert saved["optim"]["lr"] == LRS[run.name]
        assert (saved["data"]["path"], saved["run"]["dir"]) == (str(data), str(run))

    # 3. Optuna (grid over the same points) through the same launcher: every trial is found finished.
    proc = run_module("gpt.pretrain", [*args[:-1], "hydra/sweeper=optuna", "hydra/sweeper/sampler=grid",
                                       "optim.lr=choice(1e-3,3e-3,1e-2)"], timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("finished earlier") == 3 and "resumed from" not in proc.stderr
    result = yaml.safe_load((root / "optimization_results.yaml").read_text())
    assert result["best_params"]["optim.lr"] == LRS[best] and result["best_value"] == best_loss[best]


def test_trial_names_are_the_swept_values_whichever_sweeper_wrote_them():
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    assert trial_name(["optim.lr=1e-3"]) == trial_name(["optim.lr=0.001"]) == "optim.lr=0.001"
    assert trial_name(["model=gpt2-124m", "+deepspeed.x=true"]) == "model=gpt2-124m,deepspeed.x=true"
    assert trial_name(["data=a/b c"]) == "data=a_b_c" and trial_name([]) == "default"
    assert len(trial_name([f"k{i}=v" for i in range(40)])) <= 120
    (jobs,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(
        ["train.seed=range(1,4)", "optim.lr=1e-3,1e-2"]), None)
    assert [trial_name(j) for j in jobs] == [f"train.seed={s},optim.lr={lr}" for s in (1, 2, 3) for lr in (0.001, 0.01)]


def test_sweeps_are_refused_where_they_make_no_sense(capsys):
    from gpt.preprocess import main

    assert main(["-m", "input=a,b", "output=o"]) == 2
    assert "-m runs a sweep of training runs; gpt-preprocess is not a training command" in capsys.readouterr().err
    from gpt.pretrain import main as pretrain

    try:
        pretrain(["-m", "hydra/launcher=basic", "optim.lr=1,2"])
    except SystemExit as e:
        assert e.code == 2
    assert "sweeps run their trials with gpt's own launcher" in capsys.readouterr().err


@pytest.mark.distributed
def test_trials_run_through_the_launcher_under_torchrun(shards, tmp_path):
    """hydra.launcher.via=launcher: each trial is `python -m launcher pretrain ...` (torchrun, 2 ranks here).
    One point: what is tested is how a trial starts, the sweeping is tested above."""
    root = tmp_path / "sweep"
    proc = run_module("gpt.pretrain", ["-m", *tiny_overrides(shards, root, "train.steps=4", "eval.every=2", "eval.iters=1"),
                                       "train.seed=range(1,2)", "hydra.launcher.via=launcher"],
                      env=launch_env(GPT_NPROC_PER_NODE="2"), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("-m gpt.pretrain") == 1 and "world=2 = tensor 1 x data 2" in proc.stderr
    assert json.loads((root / "train.seed=1" / "trial.json").read_text())["status"] == "finished"


def test_failed_trials_are_listed_and_the_sweep_fails(shards, tmp_path):
    root = tmp_path / "sweep"
    proc = run_module("gpt.pretrain", ["-m", *tiny_overrides(shards, root), "model.n_head=3,5"], timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    rows = proc.stdout.strip().splitlines()
    assert [r.split()[:2] for r in rows[1:]] == [["model.n_head=3", "failed"], ["model.n_head=5", "failed"]], proc.stdout
    assert ("gpt-pretrain: sweep failed: trial model.n_head=3: gpt-pretrain: error: model.n_head=3 does not divide"
            in proc.stderr)
    record = json.loads((root / "model.n_head=5" / "trial.json").read_text())
    assert record["status"] == "failed" and "model.n_head=5 does not divide model.n_embd=64" in record["error"]
