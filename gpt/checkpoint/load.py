"""Loading a checkpoint into any layout: each rank reads exactly what it holds.

Weights, Adam moments and the optimizer's step count are set through the same ZeRO-aware accessors
that saved them (gpt/checkpoint/zero_state.py): a ZeRO rank reads its partition's flat range of
every slice and nothing else; a rank that holds a whole replica (no ZeRO) reads the whole slice.
So a run saved at one (tensor, pipeline, data, ZeRO) layout resumes at another. `load_weights` is
the shared half for whole-tensor sources: `model.init_from` sets Hugging Face weights through it.
"""

import os
from pathlib import Path

import torch

from gpt import log
from gpt.checkpoint import format as fmt
from gpt.checkpoint import zero_state
from gpt.checkpoint.reader import TensorReader
from gpt.checkpoint.save import partition_dim
from gpt.errors import CheckpointError
from gpt.parallel import collectives
from gpt.parallel.rng import reseed_value

logger = log.get("checkpoint")


def _parameters(engine):
    """Every parameter this rank holds, pipeline replicas of tied weights included (they must match)."""
    return engine.named_parameters(replicas=True)


def _read_held(source, name: str, p, held: zero_state.Held, ctx, key: str | None = None) -> torch.Tensor:
    """The held flat range of this rank's slice of `name` (or of its moment `key`), 1-D."""
    where = dict(dim=partition_dim(p), tp_rank=ctx.tp_rank, tp_size=ctx.layout.tensor)
    if hasattr(source, "read_flat"):
        return source.read_flat(name, **where, start=held.start, stop=held.start + held.numel, key=key)
    return source.read(name, **where, key=key).reshape(-1)[held.start:held.start + held.numel]


def load_weights(engine, source, skip=lambda name: False) -> None:
    """Set every parameter of this rank to its slice from `source` (a TensorReader or FullTensors),
    except those `skip(name)` leaves at their init (PEFT parameters a base model does not have)."""
    for name, p in _parameters(engine):
        held = zero_state.held(p)
        if skip(name) or held is None:
            continue
        zero_state.set_weight(p, _read_held(source, name, p, held, engine.ctx))
    zero_state.sync_low_precision(engine.optimizer)


def load(engine, ckpt: Path, *, load_optimizer: bool = True, materialize=None, meta: dict | None = None) -> dict:
    """Set weights (and optimizer state) of `engine` from `ckpt`; returns its meta.json.

    `materialize()` must make the optimizer's state exist (one step with zero gradient and lr 0)
    before the moments can be set; the trainer provides it. The checkpoint must have been chosen
    (and its files verified) by `select` first.
    """
    ctx = engine.ctx
    meta = meta or fmt.read_meta(ckpt)
    reader = TensorReader(ckpt, meta)
    load_optimizer = load_optimizer and meta.get("optimizer_steps", 0) > 0
    if load_optimizer and materialize is not None:
        materialize()
        zero_state.link_optimizer_state(engine.optimizer)
    for name, p in _parameters(engine):
        held = zero_state.held(p)
        if held is None:
            continue
        zero_state.set_weight(p, _read_held(reader, name, p, held, ctx))
        if load_optimizer and p.requires_grad:
            for m in meta["tensors"][name].get("moments", []):
                value = _read_held(reader, name, p, held, ctx, key=fmt.moment_key(name, m))
                zero_state.set_moment(engine.optimizer, p, m, value)
    zero_state.sync_low_precision(engine.optimizer)
    if load_optimizer:
        zero_state.set_optimizer_steps(engine.optimizer, meta["optimizer_steps"])
    restore_loss_scaler(engine, meta)
    restore_rng(reader, meta, ctx, engine.rng)
    return meta


def restore_loss_scaler(engine, meta: dict) -> None:
    """fp16: the loss scale and its hysteresis counters continue where they were."""
    if zero_state.set_loss_scaler_state(engine.optimizer, meta.get("loss_scaler")):
        logger.info("loss scale restored: %s", meta["loss_scaler"])


def same_layout(meta: dict, layout) -> bool:
    saved = meta["layout"]
    return all(saved.get(k, 1 if k == "context" else None) == getattr(layout, k)
               for k in ("world", "tensor", "pipeline", "data", "context"))


def restore_rng(reader: TensorReader, meta: dict, ctx, rng=None) -> None:
    """Same layout: every rank continues its own random streams. Another layout: reseed them from
    (seed, step, pipeline stage), the same on every tensor rank of a stage (the tensor-parallel
    stream then differs by tensor rank, gpt/parallel/rng.py), so replicated dropout stays identical
    across the tensor group and the replicated weights stay bit-identical."""
    cpu = reader.rank_tensor(ctx.rank, fmt.RNG_CPU) if meta.get("rng") and same_layout(meta, ctx.layout) else None
    tp_state = reader.rank_tensor(ctx.rank, fmt.RNG_TENSOR_PARALLEL) if cpu is not None else None
    if cpu is not None and (rng is None or tp_state is not None):
        torch.set_rng_state(cpu)
        cuda = reader.rank_tensor(ctx.rank, fmt.RNG_CUDA)
        if ctx.device.type == "cuda" and cuda is not None:
            torch.cuda.set_rng_state(cuda, ctx.device)
        if rng is not None:
            rng.set_state(tp_state)
        return
    seed = reseed_value(int(meta["config"]["train"]["seed"]), int(meta["step"]), ctx.pp_rank)
    if rng is not None:
        rng.seed(seed, tp_rank=ctx.tp_rank)
    else:
        torch.manual_seed(seed)
    logger.info("layout changed (%s -> %s): random streams reseeded", meta["layout"], ctx.layout.describe())


def select(run_dir: Path, ctx, *, fallback: bool, verify: bool) -> tuple[Path, dict] | None:
    """The checkpoint to resume from, agreed by every rank (a collective); None for a fresh run.

    The files' checksums are checked in parallel (file i by rank i mod world). A damaged latest
    checkpoint is an error naming the file, or, with `fallback`, that one step directory is moved
    aside to `<name>.corrupt` (one log line) and the newest intact one before it is used. An
    unreadable `latest` pointer is an error, or, with `fallback`, ignored (one log line): the
    newest complete checkpoint is tried first. Nothing outside checkpoints/ is ever read or moved.
    """
    world = ctx.layout.world
    root = fmt.checkpoints_dir(run_dir)
    skipped = False
    try:
        found = fmt.candidates(run_dir)
    except CheckpointError as e:
        if not fallback:
            raise
        if ctx.rank == 0:
            logger.warning("checkpoint.fallback: %s; ignoring it and trying the complete checkpoints, newest first", e)
        found, skipped = fmt.candidates(run_dir, ignore_latest=True), True
    tried = bool(found) or os.path.lexists(root / fmt.LATEST)
    for ckpt in found:
        problem = None
        meta = None
        try:
            meta = fmt.read_meta(ckpt)
            mine = sorted(meta["files"])[ctx.rank::world]
            fmt.validate(ckpt, verify=verify, files=mine)
        except CheckpointError as e:
            problem = str(e)
        problems = collectives.all_gather_object(problem)
        bad = next((p for p in problems if p), None)
        if bad is None:
            if skipped and ctx.rank == 0:
                fmt.write_text_atomic(root / fmt.LATEST, ckpt.name + "\n")
            return ckpt, meta
        if not fallback:
            raise CheckpointError(bad)
        if ctx.rank == 0:
            moved = _move_aside(root, ckpt)
            logger.warning("checkpoint.fallback: %s; %s, trying the previous checkpoint", bad,
                           f"moved {ckpt.name} aside to {moved.name}" if moved else "nothing moved")
        skipped = True
        collectives.barrier()
    if tried:
        raise CheckpointError(f"no intact checkpoint left in {root}; start a new run.dir or restore the files")
    return None


def _move_aside(root: Path, ckpt: Path) -> Path | None:
    """Rename one step directory of `root` to `<name>.corrupt[N]` (never anything else); the new path."""
    if ckpt.parent != root or fmt.step_of(ckpt) is None or ckpt.is_symlink() or not ckpt.is_dir():
        return None
    target = ckpt.with_name(ckpt.name + ".corrupt")
    n = 1
    while os.path.lexists(target):
        n += 1
        target = ckpt.with_name(f"{ckpt.name}.corrupt{n}")
    os.rename(ckpt, target)
    return target
