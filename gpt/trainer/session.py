"""Setting up a training run: validate, start process groups, data, engine, resume, then the loop."""

import dataclasses
import os
import signal
from pathlib import Path

from gpt import log
from gpt.checkpoint.base_weights import SHAPE_KEYS, same_peft, saved_peft
from gpt.checkpoint.load import load as load_checkpoint
from gpt.checkpoint.load import load_weights
from gpt.checkpoint.load import select as select_checkpoint
from gpt.checkpoint.compat import check_architecture
from gpt.checkpoint.reader import check_tokenizer
from gpt.checkpoint.save import Checkpointer
from gpt.config.secrets import redact
from gpt.config.training import TrainingConfig
from gpt.config.validate import validate_training
from gpt.data import build_loaders, load_tokenizer, read_metadata
from gpt.data.format import fingerprint
from gpt.engine import memory
from gpt.engine.deepspeed_config import bf16_autocast, deepspeed_zero_stage
from gpt.engine.engine import build_engine, compile_scope, compiles
from gpt.engine.pipeline import blocks_per_stage
from gpt.errors import CheckpointError, TrainingError
from gpt.model.build import model_shape
from gpt.model.gpt import count_parameters, flops_per_token
from gpt.parallel import context as parallel
from gpt.parallel.device import check_precision, cuda_settings
from gpt.parallel.peak import job_peak
from gpt.trainer import init_from, run_lock
from gpt.trainer.loop import Session, materialize_optimizer_state, save, train
from gpt.trainer.metrics import MetricsLog, WandbSink
from gpt.trainer.signals import StopRequest
from gpt.trainer.state import TrainerState
from gpt.trainer.tensorboard import TensorBoardSink

logger = log.get("train")


def data_dir(cfg: TrainingConfig) -> Path:
    """The shard directory whose tokenizer the run uses (the first blend component for blends)."""
    if cfg.data.blend:
        return Path(str(cfg.data.blend[0][1]))
    return Path(cfg.data.path)


def data_fingerprint(cfg: TrainingConfig) -> dict:
    """What the run trains on, by content: each shard directory's fingerprint (its metadata.json only)."""
    train = [str(p) for _, p in cfg.data.blend] if cfg.data.blend else [str(cfg.data.path)]
    found = {"train": [{"path": p, "sha256": fingerprint(read_metadata(p))} for p in train]}
    if cfg.data.val_path:
        found["val"] = {"path": str(cfg.data.val_path), "sha256": fingerprint(read_metadata(cfg.data.val_path))}
    return found


def check_data(saved: dict | None, now: dict, cfg: TrainingConfig, ckpt: Path, consumed: int) -> None:
    """A resume continues at sample `consumed` of the data it was trained on: refuse other shards in one
    line (same paths rewritten, or other paths), unless data.allow_changed."""
    if not saved:  # a checkpoint from before fingerprints
        return

    def digests(d):
        return [e.get("sha256") for e in d.get("train", [])], (d.get("val") or {}).get("sha256")

    if digests(saved) == digests(now):
        return
    old_train, new_train = digests(saved)[0], digests(now)[0]
    if old_train != new_train:
        changed = next((e["path"] for i, e in enumerate(now["train"])
                        if i >= len(old_train) or old_train[i] != e["sha256"]), now["train"][-1]["path"])
        what = f"the token shards in {changed} are not those it was trained on"
    else:
        what = f"the validation shards in {now.get('val', {}).get('path')} are not those it was evaluated on"
    if cfg.data.allow_changed:
        logger.warning("data.allow_changed=true: %s (%s); continuing at sample %d of the new data", what, ckpt, consumed)
        return
    raise CheckpointError(f"{ckpt}: {what} (their metadata.json checksums differ), so resuming would continue at "
                          f"sample {consumed} of different data; restore the data, set data.allow_changed=true to go "
                          f"on with the new data anyway, or start a new run.dir")


def config_dict(cfg: TrainingConfig) -> dict:
    """The config as saved in config.yaml, checkpoints and W&B: its values as they are (interpolations
    were resolved once, when it was composed; strings are never read as `${...}` again), secrets from
    the environment redacted."""
    return redact(dataclasses.asdict(cfg))


def _write_config(cdict: dict, run_dir: Path) -> None:
    from gpt.checkpoint.format import write_text_atomic
    from gpt.config.loader import to_yaml

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", to_yaml(cdict))
    except OSError as e:
        raise TrainingError(f"cannot write {run_dir / 'config.yaml'} ({e.strerror or e}) before the first step; "
                            f"nothing was lost: free space or fix run.dir, then re-run the same command") from None


def pretrain(cfg: TrainingConfig) -> int:
    """gpt-pretrain and gpt-finetune: one training run, from scratch, from model.init_from, or resumed."""
    if cfg.model.init_from:
        init_from.prepare(cfg, data_dir(cfg))
    layout = validate_training(cfg)  # before any process group: config errors fail in the first seconds
    cuda_settings(layout.tensor)  # before anything starts CUDA
    check_precision(cfg.device, cfg.train.precision)  # what this machine's kernels allow
    shape = model_shape(cfg.model, read_metadata(data_dir(cfg))["tokenizer"]["vocab_size"])
    check_memory(cfg, shape, layout)
    tasks = None
    if cfg.eval.tasks:  # unknown task names fail here, before any process group
        from gpt.generation.harness import task_manager

        tasks = task_manager(cfg.eval.tasks, cfg.eval.tasks_path)
    stop = StopRequest().install()
    ctx = parallel.initialize(layout, cfg.device)
    lock = None
    try:
        lock = run_lock.acquire(cfg.run.dir, ctx)  # one live job per run.dir, before anything is written there
        session = open_session(cfg, ctx, shape)
        session.task_manager = tasks
        try:
            train(session, stop)
        finally:
            session.close()
        if stop.interrupted:
            if ctx.is_logging_rank:
                logger.info("interrupted (Ctrl-C) at step %d, checkpoint saved: the same command resumes",
                            session.state.step)
            return 128 + signal.SIGINT
        return 0
    finally:
        if lock is not None:
            lock.release()
        stop.restore()
        parallel.destroy()


def check_memory(cfg: TrainingConfig, shape, layout) -> None:
    """Refuse a run whose busiest rank cannot fit on its device, by estimate, before anything starts."""
    from gpt.errors import ConfigError
    from gpt.parallel.device import choose_device

    if not cfg.train.check_memory:
        return
    found = memory.available_bytes(choose_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))[0])
    if found is None:
        return
    available, source = found
    rank = max(memory.plan_ranks(cfg, shape, layout), key=lambda r: r.total)  # the start-up report's model
    if rank.total > available:
        hb = memory.human_bytes
        raise ConfigError(
            f"train.micro_batch_size={cfg.train.micro_batch_size}, train.seq_len={cfg.train.seq_len}: the busiest rank "
            f"needs at least {hb(rank.total)} (weights {hb(rank.weights)} + gradients {hb(rank.gradients)} + "
            f"optimizer state {hb(rank.optimizer)} + buffers {hb(rank.buffers)} + activations {hb(rank.activations)}, "
            f"an estimate) but has {hb(available)} ({source}); lower train.micro_batch_size "
            f"(train.global_batch_size is reached by accumulation), set train.activation_checkpointing=true, shard "
            f"with parallel.zero_stage/parallel.tensor, or start anyway with train.check_memory=false")


finetune = pretrain  # a FinetuneConfig adds the `peft` section, which build_engine applies


def resume(session: Session, shape, selected: tuple[Path, dict] | None) -> None:
    """Load the run's `selected` checkpoint (any layout) into the session, or the init_from weights, or nothing."""
    cfg, ctx, engine = session.cfg, session.ctx, session.engine
    if selected is not None:
        ckpt, meta = selected
        check_architecture(meta, session.config_dict["model"], ckpt)
        check_tokenizer(meta, session.tokenizer, ckpt, data_dir(cfg))
        check_peft(meta, cfg, ckpt)
        check_data(meta["trainer"].get("data"), session.state.data, cfg, ckpt, meta["trainer"].get("consumed_samples", 0))
        session.state = TrainerState.from_dict({**meta["trainer"], "data": session.state.data})
        session.state.bad_steps_in_row = 0  # a resume after a divergence gets train.max_bad_steps fresh tries
        load_checkpoint(engine, ckpt, meta=meta, materialize=lambda: materialize_optimizer_state(session))
        if ctx.is_logging_rank:
            logger.info("resumed from %s at step %d (%d samples consumed)", ckpt, session.state.step,
                        session.state.consumed_samples)
    elif cfg.model.init_from:
        source, skip = init_from.weight_source(cfg, shape.padded_vocab)
        load_weights(engine, source, skip=skip)
        # Step 0 in our format: the run is self-contained from here on (resumes never read the source again).
        save(session)
        if ctx.is_logging_rank:
            logger.info("initialised from %s (saved as step 0)", cfg.model.init_from)


def check_peft(meta: dict, cfg: TrainingConfig, ckpt: Path) -> None:
    """A resume must build the same PEFT tensors the checkpoint holds (method, rank, targets, ...)."""
    saved, peft = saved_peft(meta), getattr(cfg, "peft", None)
    if not same_peft(saved, peft, cfg.model.activation):
        now = vars(peft) if peft is not None else {"method": "none"}

        def shape(d):
            return {k: d.get(k) for k in ("method", *SHAPE_KEYS[d["method"]])}

        raise CheckpointError(f"{ckpt} was trained with peft {shape(saved)}, the config says {shape(now)}; "
                              f"use the same peft settings or a new run.dir")


def open_session(cfg: TrainingConfig, ctx, shape, *, log_to_run_dir: bool = True) -> Session:
    """Data, engine, resume from run.dir's latest checkpoint, metrics: everything the loop needs."""
    log.setup(ctx.rank)
    run_dir = Path(cfg.run.dir)
    train_data, val_data = build_loaders(cfg.data, seq_len=cfg.train.seq_len,
                                         global_batch_size=cfg.train.global_batch_size,
                                         micro_batch_size=cfg.train.micro_batch_size, dp_rank=ctx.dp_rank,
                                         dp_size=ctx.layout.data, seed=cfg.train.seed)
    tokenizer = load_tokenizer(data_dir(cfg))
    selected = select_checkpoint(run_dir, ctx, fallback=cfg.checkpoint.fallback, verify=cfg.checkpoint.verify)
    # A resume or model.init_from sets every weight: drawing the random init first would be wasted.
    engine = build_engine(cfg, ctx, shape, init_weights=selected is None and not cfg.model.init_from)
    cdict = config_dict(cfg)
    session = Session(cfg, cdict, engine, train_data, val_data, tokenizer, TrainerState(data=data_fingerprint(cfg)),
                      None, None, checkpointer=Checkpointer(engine, asynchronous=cfg.checkpoint.async_save))

    resume(session, shape, selected)
    writes = ctx.is_logging_rank and log_to_run_dir
    if writes:
        _write_config(cdict, run_dir)
    # Model FLOPs: the real vocabulary (the fused loss never computes padding rows), no recomputation.
    session.flops_per_token = flops_per_token(cfg.model, shape.vocab_size, shape.ffn_hidden, cfg.train.seq_len)
    session.peak_flops, peak_source = job_peak(ctx.device, cfg.train.precision, cfg.train.peak_flops)  # collective
    if ctx.is_logging_rank:
        _report(cfg, ctx, shape, session.flops_per_token, session.peak_flops, peak_source, engine.counts,
                engine.zero3)
    session.metrics = MetricsLog(run_dir, enabled=writes, resume_step=session.state.step)
    session.wandb = WandbSink(cfg.logging.wandb, enabled=writes, run_dir=run_dir, config=cdict,
                              run_id=session.state.wandb_id)
    session.state.wandb_id = session.wandb.run_id or session.state.wandb_id
    session.tensorboard = TensorBoardSink(run_dir, enabled=writes and cfg.logging.tensorboard,
                                          resume_step=session.state.step, flush_every=cfg.logging.every)
    return session


def _report(cfg: TrainingConfig, ctx, shape, fpt: float, peak: float | None, peak_source: str, counts,
            zero3=None) -> None:
    """What a user checks before burning GPU hours: size, cost per token, layout, memory, peak."""
    layout = ctx.layout
    n = count_parameters(cfg.model, shape.padded_vocab, shape.ffn_hidden)
    logger.info("model %s: %s parameters (vocab %d padded to %d), %.4g model FLOPs/token at seq_len %d (MFU counts "
                "these: no recomputation)",
                cfg.model.name, f"{n:,}", shape.vocab_size, shape.padded_vocab, fpt, cfg.train.seq_len)
    stages = ""
    if layout.pipeline > 1:
        blocks = blocks_per_stage(cfg.model, layout.pipeline, cfg.parallel.pipeline_layers)
        stages = "; stages hold blocks " + "/".join(map(str, blocks))
    logger.info("layout: %s (ranks: tensor fastest, then data, then pipeline)%s", layout.describe(), stages)
    zero = deepspeed_zero_stage(cfg)
    note = " (run as stage 1: DeepSpeed's BF16 optimizer shards its fp32 state)" if zero != cfg.parallel.zero_stage else ""
    precision = cfg.train.precision + (" (torch.autocast over fp32 weights)" if bf16_autocast(cfg) else "")
    logger.info("precision %s; ZeRO stage %d%s; %s; %s; %s (%s)", precision, cfg.parallel.zero_stage, note,
                "activation checkpointing" if cfg.train.activation_checkpointing else "no activation checkpointing",
                f"torch.compile of {compile_scope(cfg, layout)}" if compiles(cfg, ctx.device) else "no torch.compile",
                ctx.device, ctx.backend)
    if zero3 is not None:
        if zero3.partitioned == 0 and layout.data > 1:
            logger.warning("%s: nothing is partitioned; for a model this small set "
                           "+deepspeed.zero_optimization.stage3_param_persistence_threshold=0", zero3.describe())
        else:
            logger.info("%s", zero3.describe())
    frozen = counts.trainable < counts.total
    mem = memory.estimate(cfg, shape, layout, counts.busiest_rank_trainable if frozen else None)
    hb = memory.human_bytes
    logger.info("memory per rank (estimate, busiest rank, %s parameters, activations not included): weights %s + "
                "gradients %s + optimizer state %s = %s", f"{mem.params:,}", hb(mem.weights), hb(mem.gradients),
                hb(mem.optimizer), hb(mem.total))
    if not frozen:
        logger.info("peak per rank for one step (gpt-plan's estimate: DeepSpeed's state as it allocates it, its "
                    "buffers, activations of micro-batch %d): %s", cfg.train.micro_batch_size,
                    hb(memory.estimate_step(cfg, shape, layout)))
    if frozen:
        full = memory.estimate(cfg, shape, layout)
        peft = getattr(cfg, "peft", None)
        logger.info("trainable: %s of %s parameters (%.3g%%, peft %s); frozen weights have no gradients and no "
                    "optimizer state: %s of optimizer state and %s of gradients saved per rank against full fine-tuning",
                    f"{counts.trainable:,}", f"{counts.total:,}", 100.0 * counts.trainable / counts.total,
                    peft.method if peft is not None else "-", hb(full.optimizer - mem.optimizer),
                    hb(full.gradients - mem.gradients))
    if peak is not None:
        logger.info("peak %.4g FLOP/s over %d rank(s) (%s): mfu in metrics.jsonl", peak, layout.world, peak_source)
    else:
        logger.warning("no peak FLOP/s for MFU: %s", peak_source)
    logger.info("run dir %s (pid %d)", os.path.abspath(cfg.run.dir), os.getpid())
