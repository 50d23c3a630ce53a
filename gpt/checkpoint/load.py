"""Loading a checkpoint into any layout: each rank rebuilds exactly the slices it needs.

Weights, Adam moments and the optimizer's step count are set through the same ZeRO-aware accessors
that saved them, so a run saved at one (tensor, pipeline, data, ZeRO) layout resumes at another.
"""

from pathlib import Path

import torch

from gpt import log
from gpt.checkpoint import format as fmt
from gpt.checkpoint import zero_state
from gpt.checkpoint.reader import TensorReader
from gpt.checkpoint.save import partition_dim

logger = log.get("checkpoint")

def load(engine, ckpt: Path, *, load_optimizer: bool = True, materialize=None) -> dict:
    """Set weights (and optimizer state) of `engine` from `ckpt`; returns its meta.json.

    `materialize()` must make the optimizer's state exist (one step with zero gradient and lr 0)
    before the moments can be set; the trainer provides it.
    """
    ctx = engine.ctx
    meta = fmt.read_meta(ckpt)
    fmt.verify_files(ckpt, meta)
    reader = TensorReader(ckpt, meta)
    if load_optimizer and materialize is not None:
        materialize()
        zero_state.link_optimizer_state(engine.optimizer)
    tp_rank, tp_size = ctx.tp_rank, ctx.layout.tensor
    for name, p in engine.named_parameters():
        dim = partition_dim(p)
        zero_state.set_param(p, reader.read(name, dim=dim, tp_rank=tp_rank, tp_size=tp_size))
        if load_optimizer and p.requires_grad:
            saved_moments = meta["tensors"][name].get("moments", [])
            for m in fmt.MOMENTS:
                if m in saved_moments:
                    value = reader.read(name, dim=dim, tp_rank=tp_rank, tp_size=tp_size, key=fmt.moment_key(name, m))
                    zero_state.set_moment(engine.optimizer, p, m, value)
    zero_state.sync_low_precision(engine.optimizer)
    if load_optimizer:
        zero_state.set_optimizer_steps(engine.optimizer, meta["optimizer_steps"])
    _restore_rng(reader, meta, ctx)
    return meta


def _restore_rng(reader: TensorReader, meta: dict, ctx) -> None:
    """Same layout: continue each rank's random stream; another layout: reseed from (seed, step, rank)."""
    saved = meta["layout"]
    same = all(saved[k] == getattr(ctx.layout, k) for k in ("world", "tensor", "pipeline", "data"))
    if same:
        f = reader._file(fmt.rank_file(ctx.rank))
        torch.set_rng_state(f.get_tensor("__rng__.cpu"))
        if ctx.device.type == "cuda" and "__rng__.cuda" in f.keys():
            torch.cuda.set_rng_state(f.get_tensor("__rng__.cuda"), ctx.device)
    else:
        seed = int(meta["config"]["train"]["seed"]) * 1_000_003 + int(meta["step"]) * 1009 + ctx.rank
        torch.manual_seed(seed)
        logger.info("layout changed (%s -> %s): random streams reseeded", saved, ctx.layout)
