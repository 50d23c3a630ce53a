"""TensorBoard: every metrics record as scalars in run.dir/tensorboard, read back with TensorBoard's own
EventAccumulator; a resumed run continues the same curves with no duplicate steps."""

import shutil

import numpy as np
from helpers import read_metrics, run_module, tiny_overrides
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gpt.checkpoint import format as fmt
from gpt.trainer.tensorboard import TensorBoardSink


def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_resumed_run_continues_the_curves_without_duplicates(shards, tmp_path):
    """A run that got to step 6 but whose last complete checkpoint is step 4 (as after a crash) is resumed:
    TensorBoard shows steps 1..10 once each, with the values metrics.jsonl holds."""
    run = tmp_path / "run"
    args = tiny_overrides(shards, run, "logging.tensorboard=true", "logging.every=2", "checkpoint.every=4",
                          "checkpoint.keep_last=0")
    run_module("gpt.pretrain", [*args, "train.stop_at=6"], check=True)
    # The crash: step 6's checkpoint never completed, so the run resumes from step 4 and logs 5 and 6 again.
    shutil.rmtree(run / "checkpoints" / fmt.step_dir_name(6))
    fmt.write_pointer(run, fmt.LATEST, 4)
    run_module("gpt.pretrain", args, check=True)

    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one per attempt
    tb = scalars(run / "tensorboard")
    steps, evals = read_metrics(run)
    assert [r["step"] for r in steps] == list(range(1, 11))
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "step_time_s", "consumed_samples", "skipped_steps"):
        assert [s for s, _ in tb[f"train/{key}"]] == list(range(1, 11)), key  # each step once, in order
        # event files hold float32: the float32 rounding of what metrics.jsonl holds, of the surviving attempt
        assert [v for _, v in tb[f"train/{key}"]] == [float(np.float32(r[key])) for r in steps], key
    assert [s for s, _ in tb["val/loss"]] == [r["step"] for r in evals] == [5, 10]
    assert [s for s, _ in tb["val/ppl"]] == [5, 10]
    assert "train/mfu" in tb  # the CPU peak is measured, so MFU is reported


def test_flushed_every_logging_interval_and_on_close(tmp_path, monkeypatch):
    """flush() at every multiple of flush_every (logging.every) and after every evaluation, so a crash loses
    at most that many steps; close() writes the rest. (The writer's background thread may write sooner:
    what is promised is the flush, counted here, and what is read back at the end.)"""
    sink = TensorBoardSink(tmp_path, enabled=True, flush_every=2)
    flushed_at, current = [], [0]  # the steps at which flush() was called; the step being logged
    real_flush = sink.writer.flush
    monkeypatch.setattr(sink.writer, "flush", lambda: (flushed_at.append(current[0]), real_flush()))
    for step in (1, 2, 3, 4, 5):
        current[0] = step
        sink.log({"step": step, "loss": 1.0 / step, "lr": 1e-3, "skipped": False, "mfu": None})
    assert flushed_at == [2, 4]
    assert [s for s, _ in scalars(tmp_path / "tensorboard")["train/loss"]][:4] == [1, 2, 3, 4]  # flushed ones are on disk
    sink.log({"step": 5, "val_loss": 0.5, "val_ppl": 1.65, "eval_time_s": 0.1})  # evaluations flush at once
    assert flushed_at == [2, 4, 5]
    sink.close()
    board = scalars(tmp_path / "tensorboard")
    assert [s for s, _ in board["train/loss"]] == [1, 2, 3, 4, 5] and [s for s, _ in board["val/loss"]] == [5]
    assert "train/mfu" not in board  # null values are not scalars
    assert board["train/skipped"] == [(s, 0.0) for s in range(1, 6)]


def test_disabled_writes_nothing(tmp_path):
    sink = TensorBoardSink(tmp_path, enabled=False)
    sink.log({"step": 1, "loss": 1.0})
    sink.close()
    assert not (tmp_path / "tensorboard").exists()
