"""Early stopping fires when validation stops improving, and `best` names the lowest-val-loss checkpoint."""

from helpers import early_stop, read_metrics, run_module, tiny_overrides

from gpt.checkpoint import format as fmt


def test_early_stopping_keeps_best(shards, tmp_path):
    run = tmp_path / "run"
    # A high constant learning rate on a tiny model overfits/oscillates quickly: validation stops improving.
    args = tiny_overrides(shards, run, "train.steps=400", "eval.every=4", "eval.iters=1", "optim.lr=0.05",
                          "optim.min_lr=0.05", "optim.warmup_steps=0", "eval.early_stopping.patience=2",
                          "checkpoint.keep_last=1")
    run_module("gpt.pretrain", args, check=True)
    steps, evals = read_metrics(run)
    # The recorded validation losses decide where the run had to stop and which step is best: not a
    # step earlier or later (a rule that fires late, early, or on the wrong comparison fails here).
    best_step, stop_step = early_stop(evals, patience=2)
    assert steps[-1]["step"] == stop_step < 400 and evals[-1]["step"] == stop_step
    best = next(e for e in evals if e["step"] == best_step)
    assert best["val_loss"] == min(e["val_loss"] for e in evals)
    best_dir = fmt.resolve(run / "checkpoints" / "best")
    assert fmt.read_meta(best_dir)["step"] == best_step
    assert fmt.resolve(run).name == fmt.step_dir_name(steps[-1]["step"])  # latest is the stopping step
    # gpt-eval names `best` and reproduces its validation loss (same held-out documents).
    out = run_module("gpt.evaluate", [f"checkpoint={run}/checkpoints/best", "batch_size=8", "iters=1"], check=True)
    import json

    result = json.loads(out.stdout)
    assert result["step"] == best["step"] and abs(result["loss"] - best["val_loss"]) < 1e-4
