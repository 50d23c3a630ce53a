"""The training loop: step, log, evaluate, checkpoint, stop. Setup lives in `session.py`.

Stopping on time: a stop signal (SIGTERM, SIGUSR1, a first Ctrl-C; see signals.py) is agreed by
every rank after each training step, before each evaluation batch and after each save, so the
run stops at the next of those boundaries, saves once (not again if it has just saved) and exits:
from signal to exit takes at most one training step (or one evaluation batch) plus one save.
"""

import math
import time
from dataclasses import dataclass, field

from safetensors import SafetensorError

from gpt import log
from gpt.checkpoint import format as ckpt_format
from gpt.checkpoint.save import Checkpointer, SaveFailed, why_failed
from gpt.config.training import TrainingConfig
from gpt.data import Batch
from gpt.engine.engine import StepResult, TrainEngine, compile_scope, compiles
from gpt.engine.optim import lr_at
from gpt.errors import CheckpointError, DataError, GptError, TrainingError
from gpt.trainer.metrics import MetricsLog, WandbSink
from gpt.trainer.prefetch import Prefetcher
from gpt.trainer.progress import Progress
from gpt.trainer.replicas import check_replicas
from gpt.trainer.signals import StopRequest, any_rank
from gpt.trainer.state import TrainerState
from gpt.trainer.tensorboard import TensorBoardSink

logger = log.get("train")


@dataclass
class Session:
    """The pieces one run's loop works with (built by session.open_session)."""

    cfg: TrainingConfig
    config_dict: dict
    engine: TrainEngine
    train_data: object
    val_data: object
    tokenizer: object
    state: TrainerState
    metrics: MetricsLog
    wandb: WandbSink
    checkpointer: Checkpointer | None = None  # writes checkpoints (asynchronously by default)
    flops_per_token: float = 0.0  # model training FLOPs per token (no recomputation counted)
    peak_flops: float | None = None  # summed over all ranks; None: MFU is not reported
    prefetch: Prefetcher | None = None  # the next step's batches, read while this one computes
    pending: list = field(default_factory=list)  # PendingStep: stepped, not yet read back from the device
    window_start: float | None = None  # when the first pending step started
    steps_run: int = 0  # optimizer steps this process has taken
    tensorboard: TensorBoardSink | None = None
    task_manager: object = None  # lm-eval's TaskManager for eval.tasks (built before the process groups)
    harness: object = None  # the lm-eval LM over the training model, made on first use

    @property
    def ctx(self):
        return self.engine.ctx

    def close(self) -> None:
        if self.prefetch is not None:
            self.prefetch.close()
        self.checkpointer.close()  # a save in flight is finished first
        self.metrics.close()
        self.wandb.finish()
        if self.tensorboard is not None:
            self.tensorboard.close()


@dataclass
class PendingStep:
    step: int
    lr: float
    result: StepResult  # device tensors
    data_time: float  # seconds this step waited for its batches


def evaluate(s: Session, stop: StopRequest | None = None) -> float | None:
    """Mean validation loss over eval.iters global batches (the same batches every time).

    None when a stop signal arrived: every rank checks it (agreed) before each batch, so a
    preempted job stops after the batch in flight instead of finishing the evaluation.
    """
    gbs = s.cfg.train.global_batch_size
    losses = []
    for k in range(s.cfg.eval.iters):
        try:  # read first, so that every rank knows whether all could read before the collectives
            batches, error = s.val_data.global_batch(k * gbs), None
        except DataError as e:
            batches, error = None, e
        # one all-reduce: a stop signal and a rank that could not read its batch
        stopping, failed = stop.agreed_with(s.ctx.device, error is not None) if stop is not None \
            else (False, any_rank(s.ctx.device, error is not None)[0])
        if stopping:
            return None
        if failed:
            data_failure(s, error, saved=False)  # evaluation follows a step that is not saved yet
        losses.append(s.engine.eval_loss(batches))
    return sum(losses) / len(losses)


def fetch(s: Session):
    """(this rank's micro-batches of the next step or None, the DataError that prevented it or None, seconds
    waited). They come from the prefetch thread, which then starts reading the step after."""
    if s.prefetch is None:
        s.prefetch = Prefetcher(s.train_data, s.cfg.train.global_batch_size, pin_memory=s.ctx.device.type == "cuda")
    t0 = time.perf_counter()
    try:
        return s.prefetch.get(s.state.consumed_samples), None, time.perf_counter() - t0
    except DataError as e:  # a shard damaged or truncated while training runs
        return None, e, time.perf_counter() - t0


def data_failure(s: Session, error, saved: bool) -> None:
    """Some rank could not read its data (all ranks agreed on it): save the last completed step (unless
    `saved`), then stop with the reader's one line. consumed_samples still points at the batch that
    failed, so a resume after the data is fixed reads it again."""
    note = "nothing to save before step 1"
    if s.state.step and not saved:
        save(s)
        note = f"checkpoint step {s.state.step} saved"
    elif s.state.step:
        note = f"checkpoint step {s.state.step} is saved already"
    why = str(error) if error is not None else "another rank could not read its training data (see its error)"
    raise DataError(f"{why} [{note}; fix the data and re-run to resume]")


# What a failed write raises: the OS (a full disk, a quota, a file size limit), or safetensors' own
# error wrapping the OS error of a tensor file.
WRITE_ERRORS = (OSError, SafetensorError)


def save(s: Session, *, best: bool = False) -> None:
    """Start saving this step (returns while the files are written; see Checkpointer); `best`: point
    `best` at it once it is complete. The previous save is finished first: a failed write (a full
    disk), this one's or the previous one's, is one line saying what is kept (the previous
    checkpoints are untouched: a save only becomes visible when complete)."""
    read_steps(s)  # the trainer state (skipped steps) must include every step taken
    kept = s.state.best_step
    try:
        s.checkpointer.save(step=s.state.step, trainer_state=s.state.to_dict(), config=s.config_dict,
                            tokenizer=s.tokenizer, run_dir=s.cfg.run.dir, keep_last=s.cfg.checkpoint.keep_last,
                            keep=(ckpt_format.step_dir_name(kept),) if kept else (),
                            sft_template=s.train_data.sft_template, best=best)
    except SaveFailed as e:
        raise CheckpointError(save_failed(s, e.step, e.reason)) from None
    except WRITE_ERRORS as e:
        raise CheckpointError(save_failed(s, s.state.step, why_failed(e))) from None


def wait_saved(s: Session) -> None:
    """Block until the save in flight is complete (the process exits or stops next); a failure is one line."""
    try:
        s.checkpointer.wait()
    except SaveFailed as e:
        raise CheckpointError(save_failed(s, e.step, e.reason)) from None


def _kept(s: Session) -> str:
    """What a re-run resumes from, and how far metrics.jsonl goes."""
    root = ckpt_format.checkpoints_dir(s.cfg.run.dir)
    try:
        latest = ckpt_format.read_pointer(root, ckpt_format.LATEST)
    except GptError:
        latest = None
    kept = f"kept: {root / latest} (a re-run resumes from it)" if latest else "no earlier checkpoint exists"
    if s.metrics is not None and s.metrics.enabled:
        kept += f", {s.metrics.path} up to step {s.metrics.last_step}"
    return kept


def save_failed(s: Session, step: int, reason: str) -> str:
    root = ckpt_format.checkpoints_dir(s.cfg.run.dir)
    also = f"; writing {s.metrics.path} had failed too ({why_failed(s.metrics.failed)})" \
        if s.metrics is not None and s.metrics.failed is not None else ""
    return (f"saving checkpoint {root / ckpt_format.step_dir_name(step)} failed ({reason}){also}; "
            f"{_kept(s)}; free space or fix {root}, then re-run the same command")


def materialize_optimizer_state(s: Session) -> None:
    """One step with zero loss weights at lr 0: creates Adam's state without changing any weight."""
    s.engine.set_lr(0.0)
    batches = s.train_data.global_batch(s.state.consumed_samples)
    s.engine.train_step([Batch(b.tokens, b.labels, b.weights * 0.0) for b in batches])


def _record(s: Session, record: dict) -> None:
    s.metrics.write(record)
    s.wandb.log(record)
    if s.tensorboard is not None:
        s.tensorboard.log(record)


def run_eval(s: Session, stop: StopRequest | None = None) -> float | None:
    """Evaluate, record, update the best/early-stopping state; None (nothing changed) if a stop signal cut it short."""
    t0 = time.perf_counter()
    val = evaluate(s, stop)
    if val is None:
        return None
    st = s.state
    if st.best_val_loss is None or val < st.best_val_loss - s.cfg.eval.early_stopping.min_delta:
        st.best_val_loss, st.best_step, st.evals_without_improvement = val, st.step, 0
    else:
        st.evals_without_improvement += 1
    _record(s, {"step": st.step, "val_loss": val, "val_ppl": math.exp(min(val, 50.0)),
                "eval_time_s": round(time.perf_counter() - t0, 3)})
    if s.ctx.is_logging_rank:
        logger.info("step %d | val loss %.4f | val ppl %.2f", st.step, val, math.exp(min(val, 50.0)))
    return val


def run_tasks(s: Session) -> dict:
    """eval.tasks through lm-evaluation-harness on the training model. Every rank runs the same requests
    (the forward's tensor-parallel / ZeRO-3 collectives need them all); the logging rank records."""
    # imports lm_eval (seconds): only runs with eval.tasks pay for it
    from gpt.generation import harness

    cfg, ctx = s.cfg, s.ctx
    if s.harness is None:
        backend = harness.Backend(forward=s.engine.logits, vocab_size=s.tokenizer.vocab_size, device=ctx.device,
                                  tp_rank=ctx.tp_rank, tp_group=ctx.tp_group)
        s.harness = harness.GptLM(backend, s.tokenizer, max_length=cfg.train.seq_len,
                                  batch_size=cfg.train.micro_batch_size)
    t0 = time.perf_counter()
    metrics = harness.evaluate_tasks(s.harness, cfg.eval.tasks, limit=cfg.eval.tasks_limit,
                                     num_fewshot=cfg.eval.tasks_num_fewshot, manager=s.task_manager)
    record = {"step": s.state.step, **metrics, "tasks_time_s": round(time.perf_counter() - t0, 3)}
    _record(s, record)
    if ctx.is_logging_rank:
        logger.info("step %d | %s", s.state.step, " | ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                                                            if not k.endswith("_stderr")))
    return record


def is_bad(loss: float, skipped: bool, precision: str) -> bool:
    """A step that failed: a non-finite loss, or an update DeepSpeed refused for non-finite gradients.

    With fp16 a skipped update with a finite loss is the loss scaler's normal search, not a failure.
    """
    return not math.isfinite(loss) or (skipped and precision != "fp16")


def train_step(s: Session, batches, data_s: float) -> None:
    """One optimizer step on this rank's micro-batches (fetched by `fetch`): set the LR, step. Nothing is
    read back from the device here (no host synchronisation): `read_steps` records a window of steps."""
    cfg, st, t = s.cfg, s.state, s.cfg.train
    step = st.step + 1
    lr = lr_at(step, cfg.optim, t.steps)
    s.engine.set_lr(lr)
    t0 = time.perf_counter()
    if s.window_start is None:
        s.window_start = t0 - data_s
    result = s.engine.train_step(batches)
    if s.steps_run == 0 and compiles(cfg, s.ctx.device) and s.ctx.is_logging_rank:  # CPU: the step; GPU: its host side
        logger.info("first step: %.1f s including torch.compile of %s", time.perf_counter() - t0,
                    compile_scope(cfg, s.ctx.layout))
    s.steps_run += 1
    # The data of a failed step is consumed too: a resume must not replay the batch that broke it.
    st.step, st.consumed_samples = step, st.consumed_samples + t.global_batch_size
    s.pending.append(PendingStep(step, lr, result, data_s))
    if t.check_replicas_every and step % t.check_replicas_every == 0:
        check_replicas(s.engine, step)


def reading_due(s: Session, step: int) -> bool:
    """Read the device every logging.every steps (every step with 0), and before evaluating (loss or
    tasks), saving or stopping, so that metrics.jsonl stays in step order."""
    cfg, every = s.cfg, s.cfg.logging.every
    return (not every or step % every == 0 or step >= min(cfg.train.steps, cfg.train.stop_at or cfg.train.steps)
            or bool(cfg.eval.every and step % cfg.eval.every == 0)
            or bool(cfg.checkpoint.every and step % cfg.checkpoint.every == 0)
            or bool(cfg.eval.tasks and step % cfg.eval.tasks_every == 0))


def read_steps(s: Session) -> list[dict]:
    """Read back the pending steps (one host synchronisation), update the bad-step counts and write
    their records; returns them. Every rank calls it at the same steps (a collective over data ranks)."""
    if not s.pending:
        return []
    st, t = s.state, s.cfg.train
    figures = s.engine.read([p.result for p in s.pending])
    now = time.perf_counter()
    dt = (now - s.window_start) / len(s.pending)  # mean step time of the window (the device ran them back to back)
    tokens_per_s = t.global_batch_size * t.seq_len / dt
    records = []
    for p, f in zip(s.pending, figures):
        # Every rank sees the same loss (reduced over data ranks, broadcast from the last stage) and the
        # same skip decision (the gradient norm is reduced over all ranks), so this is the same everywhere.
        bad = is_bad(f.loss, f.skipped, t.precision)
        skipped = f.skipped or bad
        st.skipped_steps += int(skipped)
        st.bad_steps_in_row = st.bad_steps_in_row + 1 if bad else 0
        record = {"step": p.step, "loss": f.loss, "lr": p.lr, "grad_norm": f.grad_norm, "tokens_per_s": tokens_per_s,
                  "step_time_s": dt, "data_time_s": p.data_time, "consumed_samples": st.consumed_samples
                  - (st.step - p.step) * t.global_batch_size, "skipped": skipped, "skipped_steps": st.skipped_steps,
                  "mfu": tokens_per_s * s.flops_per_token / s.peak_flops if s.peak_flops else None}
        _record(s, record)
        records.append(record)
        if bad and s.ctx.is_logging_rank:
            logger.warning("step %d: loss %s, grad norm %s: update skipped (%d in a row, train.max_bad_steps=%d)",
                           p.step, f.loss, f.grad_norm, st.bad_steps_in_row, t.max_bad_steps)
    s.pending.clear()
    s.window_start = None
    return records


def train(s: Session, stop: StopRequest) -> TrainerState:
    cfg, st = s.cfg, s.state
    t = cfg.train
    progress = Progress(t.steps, st.step, cfg.logging.every, s.ctx.is_logging_rank)
    saved_at = st.step if st.step else None
    last = min(t.steps, t.stop_at or t.steps)
    # The next step's batches are read before the ranks agree on stopping, so that a rank that cannot
    # read its data (a damaged shard) stops every rank at the same step, with a checkpoint.
    batches, error, data_s = fetch(s) if st.step < last else (None, None, 0.0)
    stopping, failed = stop.agreed_with(s.ctx.device, error is not None)
    if stopping:  # a signal during setup: nothing new to save
        logger.info("stopped by signal before step %d; nothing new to save", st.step + 1)
        return st
    while st.step < last:
        if failed:
            data_failure(s, error, saved=saved_at == st.step)
        train_step(s, batches, data_s)
        step = st.step
        if reading_due(s, step):  # the bad-step counts below are those of the last read
            record = read_steps(s)[-1]
            progress.update(step, record["loss"], record["lr"], record["grad_norm"], record["tokens_per_s"],
                            f" | MFU {record['mfu']:.1%}" if record["mfu"] is not None else "")
        diverged = bool(t.max_bad_steps) and st.bad_steps_in_row >= t.max_bad_steps
        batches, error, data_s = fetch(s) if st.step < last else (None, None, 0.0)
        # One all-reduce carries every decision all ranks must take together after a step.
        stopping, diverged, lost_metrics, failed = stop.agreed_with(s.ctx.device, diverged, s.metrics.failed is not None,
                                                                    error is not None)
        if stopping or diverged or lost_metrics:  # no evaluation first: a preempted job's seconds are counted
            save(s)  # skipped updates changed nothing: this holds the last good weights and moments
            wait_saved(s)  # the process exits next: the checkpoint must be complete first
            if diverged:
                raise TrainingError(
                    f"the loss was not finite for {st.bad_steps_in_row} steps in a row (steps "
                    f"{step - st.bad_steps_in_row + 1}-{step}, train.max_bad_steps={t.max_bad_steps}); their updates "
                    f"were skipped and checkpoint step {step} holds the weights of step {step - st.bad_steps_in_row}. "
                    f"Lower optim.lr or check the data, then re-run to resume")
            if lost_metrics:
                raise TrainingError(metrics_failed(s))
            logger.info("stopped by signal after step %d; checkpoint saved", step)
            return st
        improved = early_stop = False
        if cfg.eval.every and s.val_data is not None and (step % cfg.eval.every == 0 or step == t.steps):
            if run_eval(s, stop) is None:  # a stop signal during the evaluation: save this step, once
                save(s)
                wait_saved(s)
                logger.info("stopped by signal during the evaluation after step %d; checkpoint saved", step)
                return st
            patience = cfg.eval.early_stopping.patience
            improved = bool(patience) and st.best_step == step  # keep the best as `best` when early stopping
            early_stop = bool(patience) and st.evals_without_improvement >= patience
        if cfg.eval.tasks and (step % cfg.eval.tasks_every == 0 or step == t.steps):
            run_tasks(s)
        if early_stop or improved or step == last or (cfg.checkpoint.every and step % cfg.checkpoint.every == 0):
            save(s, best=improved)
            saved_at = step
            if step < last and not early_stop and stop.agreed(s.ctx.device):  # a signal during the save
                wait_saved(s)
                logger.info("stopped by signal after step %d; checkpoint saved", step)
                return st
        if early_stop:
            logger.info("early stopping after step %d: no improvement over val loss %.4f (step %d) for %d evaluations",
                        step, st.best_val_loss, st.best_step, st.evals_without_improvement)
            break
    if saved_at != st.step:  # e.g. resumed at the end
        save(s)
    wait_saved(s)  # the run ends with its last checkpoint complete
    if s.metrics.failed is not None:  # the last step's record (or an evaluation's) was lost
        raise TrainingError(metrics_failed(s))
    return st


def metrics_failed(s: Session) -> str:
    return (f"writing {s.metrics.path} failed at step {s.metrics.failed_step} ({why_failed(s.metrics.failed)}), so training "
            f"stopped after saving checkpoint {ckpt_format.checkpoints_dir(s.cfg.run.dir) / ckpt_format.step_dir_name(s.state.step)}; "
            f"{s.metrics.path} holds steps up to {s.metrics.last_step}; free space, then re-run the same command to resume")
