"""Early stopping fires when validation stops improving, and `best` names the lowest-val-loss checkpoint."""

from helpers import read_metrics, run_module, tiny_overrides

from gpt.checkpoint import format as fmt


def test_early_stopping_keeps_best(shards, tmp_path):
    run = tmp_path / "run"
    # A high constant learning rate on a tiny model overfits/oscillates quickly: validation stops improving.
    args = tiny_overrides(shards, run, "train.steps=400", "eval.every=4", "eval.iters=1", "optim.lr=0.05",
                          "optim.min_lr=0.05", "optim.warmup_steps=0", "eval.early_stopping.patience=2",
                          "checkpoint.keep_last=1")
    run_module("gpt.pretrain", args, check=True)
    steps, evals = read_metrics(run)
    assert steps[-1]["step"] < 400, "early stopping did not fire"
    best = min(evals, key=lambda e: e["val_loss"])
    assert evals[-1]["step"] == steps[-1]["step"]
    assert [e["val_loss"] < best["val_loss"] for e in evals[-2:]] == [False, False]
    best_dir = fmt.resolve(run / "checkpoints" / "best")
    assert fmt.read_meta(best_dir)["step"] == best["step"]
    assert fmt.resolve(run).name == fmt.step_dir_name(steps[-1]["step"])  # latest is the stopping step
    # gpt-eval names `best` and reproduces its validation loss (same held-out documents).
    out = run_module("gpt.evaluate", [f"checkpoint={run}/checkpoints/best", "batch_size=8", "iters=1"], check=True)
    import json

    result = json.loads(out.stdout)
    assert result["step"] == best["step"] and abs(result["loss"] - best["val_loss"]) < 1e-4
