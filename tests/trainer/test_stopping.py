"""Stopping on time and keeping work: the training loop (gpt/trainer/loop.py) driven in this process
with a stand-in engine, so that a signal lands exactly inside a step, an evaluation or a save.

The loop, its stop agreement, the metrics file and the error messages are the real ones; only the
model (a few floats) and the checkpoint body (a recorder, or a write that fails) stand in, so each
case runs in milliseconds. tests/trainer/test_interrupt.py runs the same promises end to end.
"""

import errno
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import read_metrics, tiny_overrides

from gpt.config import compose
from gpt.engine.engine import StepFigures, StepResult
from gpt.errors import CheckpointError, TrainingError
from gpt.trainer import signals
from gpt.trainer.loop import Session, train
from gpt.trainer.metrics import MetricsLog, WandbSink
from gpt.trainer.signals import StopRequest
from gpt.trainer.state import TrainerState


class Engine:
    """A model of one float: a step costs nothing; `on_step`/`on_eval` run inside step/eval batch n."""

    def __init__(self, on_step=None, on_eval=None):
        self.ctx = SimpleNamespace(device=torch.device("cpu"), is_logging_rank=True, rank=0)
        self.steps = self.eval_batches = 0
        self.on_step, self.on_eval = on_step or {}, on_eval or {}

    def set_lr(self, lr):
        pass

    def train_step(self, batches):
        self.steps += 1
        self.on_step.get(self.steps, lambda: None)()
        return StepResult(loss=2.0, grad_norm=1.0)

    def read(self, results):  # the trainer reads its steps back in windows (TrainEngine.read)
        return [StepFigures(float(r.loss), float(r.grad_norm), bool(r.skipped)) for r in results]

    def eval_loss(self, batch):
        self.eval_batches += 1
        self.on_eval.get(self.eval_batches, lambda: None)()
        return 1.5


class Data:
    sft_template = None

    def global_batch(self, consumed):
        return [consumed]


class Checkpoints:
    """Stands in for the Checkpointer: records the saved steps; `save(step)` runs inside each save."""

    def __init__(self, save):
        self.on_save, self.saved = save, []

    def save(self, *, step, **_):
        if self.on_save is not None:
            self.on_save(step)
        self.saved.append(step)

    def wait(self):
        pass

    def close(self):
        pass


def sigterm():
    os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture
def stop():
    request = StopRequest().install()
    yield request
    request.restore()


@pytest.fixture
def make_session(shards, tmp_path, monkeypatch):
    """make_session(*overrides, on_step=, on_eval=, save=) -> (session, saved steps)."""

    def make(*extra, on_step=None, on_eval=None, save=None):
        run = tmp_path / "run"
        cfg = compose("pretrain", tiny_overrides(shards, run, "train.steps=20", *extra))
        checkpointer = Checkpoints(save)
        session = Session(cfg, {}, Engine(on_step, on_eval), Data(), Data(), None, TrainerState(),
                          MetricsLog(run, enabled=True), WandbSink(cfg.logging.wandb, enabled=False, run_dir=run,
                                                                  config={}, run_id=None), checkpointer=checkpointer)
        return session, checkpointer.saved

    return make


def test_a_signal_during_a_step_finishes_it_and_saves_once(make_session, stop):
    s, saved = make_session("eval.every=0", on_step={3: sigterm})
    train(s, stop)
    assert s.state.step == 3 and saved == [3] and s.engine.steps == 3


def test_a_signal_during_evaluation_stops_at_the_next_eval_batch(make_session, stop):
    """Before the fix the evaluation ran all its batches, then one more step, then the save."""
    s, saved = make_session("eval.every=2", "eval.iters=50", on_eval={2: sigterm})
    train(s, stop)
    assert s.engine.eval_batches == 2  # the batch in flight, not the other 48
    assert s.engine.steps == 2 and saved == [2]
    steps, evals = read_metrics(s.cfg.run.dir)
    assert [r["step"] for r in steps] == [1, 2] and evals == []  # a cut-short evaluation is not recorded
    assert s.state.best_val_loss is None


def test_a_signal_during_a_save_exits_after_it_without_another_step(make_session, stop):
    """Before the fix: save, one more step, save again."""
    s, saved = make_session("eval.every=0", "checkpoint.every=4", save=lambda step: step == 4 and sigterm())
    train(s, stop)
    assert saved == [4] and s.engine.steps == 4


def test_a_signal_during_setup_takes_no_step(make_session, stop):
    s, saved = make_session("eval.every=0")
    sigterm()
    train(s, stop)
    assert s.engine.steps == 0 and saved == []


def test_ctrl_c_once_saves_twice_aborts(monkeypatch, stop):
    """The first SIGINT is a stop request like SIGTERM; one within REPEAT_S is the same Ctrl-C (bare
    torchrun forwards the terminal's); a later one stops at once (KeyboardInterrupt, exit 130)."""
    monkeypatch.setattr(signals, "REPEAT_S", 0.2)
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.signum == signal.SIGINT and stop.interrupted
    os.kill(os.getpid(), signal.SIGINT)  # the same keypress, forwarded
    time.sleep(0.25)
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # the handler runs at the next bytecode


def test_sigterm_after_sigint_does_not_abort(stop):
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)  # torchrun's own stop signal after a Ctrl-C
    assert stop.signum == signal.SIGINT


def full_disk(monkeypatch):
    """From now on every write of the metrics file fails as on a full disk (ENOSPC at the os.write boundary)."""
    real = os.write

    def write(fd, data):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) == "metrics.jsonl":
            real(fd, data[: len(data) // 2])  # half a line lands, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


def test_a_failed_metrics_write_saves_then_stops_in_one_line(make_session, stop, monkeypatch):
    """Errno 28 on metrics.jsonl: before the fix a traceback that lost everything since the last checkpoint."""
    s, saved = make_session("eval.every=0", on_step={5: lambda: full_disk(monkeypatch)})
    with pytest.raises(TrainingError) as e:
        train(s, stop)
    assert saved == [5] and s.engine.steps == 5  # the step whose record failed is saved, nothing more trained
    message = str(e.value)
    assert "\n" not in message and "metrics.jsonl failed at step 5" in message
    assert "No space left on device" in message and "holds steps up to 4" in message and "step_00000005" in message
    monkeypatch.undo()
    assert [r["step"] for r in read_metrics(s.cfg.run.dir)[0]] == [1, 2, 3, 4]  # whole lines only: the half is cut off
    s.close()


def test_a_failed_save_is_one_line_naming_the_path_and_what_was_kept(make_session, stop, tmp_path):
    def fail(step):
        if step == 6:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "run" / "checkpoints"))

    s, saved = make_session("eval.every=0", "checkpoint.every=3", save=fail)
    root = Path(s.cfg.run.dir) / "checkpoints"
    root.mkdir(parents=True)
    (root / "latest").write_text("step_00000003\n")  # what the recorder's save of step 3 would have left
    with pytest.raises(CheckpointError) as e:
        train(s, stop)
    message = str(e.value)
    assert "\n" not in message and saved == [3]
    assert f"saving checkpoint {root / 'step_00000006'} failed (No space left on device" in message
    assert f"kept: {root / 'step_00000003'} (a re-run resumes from it)" in message
    assert "metrics.jsonl up to step 6" in message
